"""Detector stage entry: Frame in, Faces out (one Faces per Frame, even with no face)."""

from __future__ import annotations

import logging
import threading
import time

import cv2
import numpy as np

from core.config import DetectorConfig
from core.messages import End, Faces, Frame, FrameGroup, Message, header
from core.preprocess import DETECTOR_CROPS, INPUT_SIZE, CropGeometry, face_input
from core.runtime import StageIO, running
from detector.backends import make_detector
from detector.schedule import CANDIDATE_SCORE, ScheduledDetector
from detector.search import StillSearch

logger = logging.getLogger(__name__)


def detect_faces(detector: ScheduledDetector, frame: Frame, geometry: CropGeometry, schedule_key: str = "",
                 schedule_index: int | None = None, still_search: StillSearch | None = None) -> Faces:
    """Boxes in source pixels and crops from the frame, through the shared preprocessing.
    `schedule_key`/`schedule_index`: whose detection schedule the frame follows and where
    (default: its stream's, at its frame index). A photo (`frame.still`) is searched by
    `still_search` instead, when given."""
    image = frame.bgr()
    if frame.still and still_search is not None:
        boxes, scores = still_search(image)
    else:
        boxes, scores, _full = detector.detect(schedule_key or frame.stream,
                                               frame.frame_index if schedule_index is None else schedule_index, image)
    crops = np.stack([face_input(image, tuple(box), geometry.margin, geometry.shift_y) for box in boxes]) \
        if len(boxes) else np.zeros((0, INPUT_SIZE, INPUT_SIZE), np.uint8)
    return Faces(**header(frame), frame_index=frame.frame_index, boxes=(boxes * frame.scale).astype(np.float32),
                 scores=scores, crops=crops)


def handle(message: Message, detector: ScheduledDetector, geometry: CropGeometry, io: StageIO,
           still_search: StillSearch | None = None) -> list[Message]:
    """The messages that answer one input: Faces per frame (several for a FrameGroup)."""
    if isinstance(message, End):
        detector.forget(message.stream)
    if isinstance(message, FrameGroup):
        # The group is the schedule's unit: a full detection on its first frame, whatever this
        # worker saw before (so the boxes do not depend on which worker got which group).
        group = f"{message.stream}#group"
        detector.forget(group)
        try:
            # Positions in the group, not frame indices, are the schedule's clock: sampled frames
            # (--fps) are several source frames apart, yet one step each.
            return [_detect_one(detector, frame, geometry, io, group, j, still_search)
                    for j, frame in enumerate(message.frames())]
        finally:
            detector.forget(group)
    if not isinstance(message, Frame):
        return [message]  # stream control (Start, End) passes through
    return [_detect_one(detector, message, geometry, io, message.stream, message.frame_index, still_search)]


def _detect_one(detector: ScheduledDetector, frame: Frame, geometry: CropGeometry, io: StageIO,
                schedule_key: str, schedule_index: int, still_search: StillSearch | None) -> Faces:
    try:
        return detect_faces(detector, frame, geometry, schedule_key, schedule_index, still_search)
    except (cv2.error, ValueError) as error:
        io.counters.errors += 1
        logger.warning("%s frame %d: detection failed (%s)", frame.stream, frame.frame_index, error)
        return Faces(**header(frame), frame_index=frame.frame_index, error=str(error))


def candidate_score(config: DetectorConfig) -> float | None:
    """The schedule's candidate threshold (detector/schedule.py): only for BlazeFace short range,
    the one detector it was measured with, and only at its default threshold (a threshold the
    user set is the only one)."""
    return CANDIDATE_SCORE if config.detector == "blazeface" and config.min_score is None else None


def run(config: DetectorConfig, stop: threading.Event | None = None) -> int:
    stop = stop or threading.Event()
    cv2.setNumThreads(config.threads)
    backend = make_detector(config.detector, config.min_score, config.min_face, config.threads)
    detector = ScheduledDetector(backend, config.detect_every, search_every=config.search_every,
                                 candidate_score=candidate_score(config))
    still_search = StillSearch.for_detector(config.detector, backend, config.threads)
    geometry = DETECTOR_CROPS[config.detector]
    if config.margin is not None:
        geometry = CropGeometry(config.margin, geometry.shift_y)
    with running(StageIO.from_config("detector", config), ready={"detector": config.detector}) as io:
        while not stop.is_set():
            message = io.receive()
            if message is None:
                continue
            if config.max_age_s and isinstance(message, Frame) and time.time() - message.capture_time > config.max_age_s:
                io.counters.drop("stale")  # live: the newest frame wins; the aggregator counts the gap
                continue
            if not all(io.send(answer, stop) for answer in handle(message, detector, geometry, io, still_search)):
                break
    return 0
