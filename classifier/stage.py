"""Classifier stage entry: Faces in, Classified out.

Crops from several frames (and streams) are gathered into one batch until `max_batch`
faces are waiting or the oldest has waited `max_wait_ms`: one model call per batch
instead of one per face is what makes the CNN cheap on a CPU.

Live runs set `max_age_s` (the monitor's): faces of a frame captured longer ago are dropped
as stale when they arrive, so whatever queued up before this stage (socket buffers hold dozens
of small Faces messages) is never worked through late.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from core.config import ClassifierConfig
from core.emotions import NUM_EMOTIONS
from core.messages import Classified, Faces, Message, header
from core.model_io import EmotionModel, EnsembleModel, configure_tensorflow_threads, load_model, model_members
from core.preprocess import INPUT_SIZE
from core.runtime import StageIO, running

logger = logging.getLogger(__name__)


NO_CROPS = np.zeros((0, INPUT_SIZE, INPUT_SIZE), np.uint8)


def classify_batch(model: EmotionModel | EnsembleModel, pending: list[Faces], forward_crops: bool = True) -> list[Classified]:
    """One model call for every face of `pending`; each message answered with its faces'
    probabilities (and crops, with `forward_crops`)."""
    crops = [m.crops for m in pending if len(m.crops)]
    probs = model.probabilities(np.concatenate(crops)) if crops else np.zeros((0, NUM_EMOTIONS), np.float32)
    results, offset = [], 0
    for message in pending:
        n = len(message.crops)
        results.append(Classified(
            **header(message), frame_index=message.frame_index, error=message.error,
            boxes=message.boxes, scores=message.scores, crops=message.crops if forward_crops else NO_CROPS,
            probs=probs[offset:offset + n].astype(np.float32),
        ))
        offset += n
    return results


def run(config: ClassifierConfig, stop: threading.Event | None = None) -> int:
    stop = stop or threading.Event()
    flip = {"auto": None, "on": True, "off": False}[config.flip_tta]
    if any(path.suffix != ".tflite" for path in model_members(config.model)):  # LiteRT never loads TensorFlow
        configure_tensorflow_threads(config.threads, 1)
    model = load_model(config.model, flip_tta=flip, precision=config.precision, threads=config.threads)
    model.probabilities(np.zeros((1, INPUT_SIZE, INPUT_SIZE), np.uint8))  # trace once before reporting ready
    pending: list[Faces] = []
    waiting_since = 0.0
    batches = faces_classified = 0
    with running(StageIO.from_config("classifier", config), ready={"model": model.name},
                 final=lambda: {"batches": batches, "faces": faces_classified}) as io:
        while not stop.is_set():
            timeout = 200 if not pending else max(0, int(config.max_wait_ms - (time.monotonic() - waiting_since) * 1000))
            message: Message | None = io.receive(timeout)
            if config.max_age_s and isinstance(message, Faces) and not isinstance(message, Classified) \
                    and time.time() - message.capture_time > config.max_age_s:
                io.counters.drop("stale")  # live, as the detector does; the aggregator counts the gap per camera
                message = None
            if isinstance(message, Faces) and not isinstance(message, Classified):
                if not pending:
                    waiting_since = time.monotonic()
                pending.append(message)
            elif message is not None:
                io.send(message, stop)  # stream control passes through
            queued = sum(len(m.crops) for m in pending)
            io.metrics.queue_depth.set(len(pending))
            due = pending and (queued >= config.max_batch or
                               (time.monotonic() - waiting_since) * 1000 >= config.max_wait_ms)
            if due:
                started = time.perf_counter()
                results = classify_batch(model, pending, config.forward_crops)
                if queued:  # frames without faces make no model call
                    io.metrics.inference_seconds.observe(time.perf_counter() - started)
                    io.metrics.batch_size.observe(queued)
                for result in results:
                    if not io.send(result, stop):
                        break
                batches += 1
                faces_classified += queued
                pending = []
                io.metrics.queue_depth.set(0)
    return 0
