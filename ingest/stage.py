"""Ingest stage entry: stream each input as Start, Frame..., End on the output socket.

File inputs block when downstream is full, and in a file run every message is kept until the
aggregator acknowledges it stored, and sent again if it is not (window.py): nothing is lost
when a worker dies. A failed input ends its stream with an End carrying the error, so
downstream discards its partial results.
"""

from __future__ import annotations

import logging
import subprocess
from collections.abc import Callable
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.config import IngestConfig
from core.errors import DataError, redact_url
from core.messages import End, Frame, FrameGroup, Message, Start, StatusEvent
from core.runtime import StageIO, running
from ingest.media import (
    MediaInfo, expected_frames, ffmpeg_video_args, frame_pixels, frame_shape, is_selected, output_size, probe, read_image,
    sampling_ratio,
)
from ingest.window import Window

logger = logging.getLogger(__name__)


def stream_id(prefix: str, index: int) -> str:
    return f"{prefix}/{index}"


def _scaled(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    height, width = image.shape[:2]
    size = output_size(width, height, max_side)
    if size == (width, height):
        return image, 1.0
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA), width / size[0]


@dataclass
class Sent:
    """Frames sent so far on a stream: an End must carry seq = frames + 1 whatever went wrong."""

    frames: int = 0


def _stream_images(send: Callable[[Message], bool], stream: str, info: MediaInfo, config: IngestConfig, stop: threading.Event,
                   counter: Sent) -> End:
    started = time.time()
    sent = 0
    for index, path in enumerate(info.images):
        if stop.is_set():
            return End(stream=stream, seq=sent + 1, frames_sent=sent, error="stopped")
        try:
            image = read_image(path)
        except DataError as error:
            return End(stream=stream, seq=sent + 1, frames_sent=sent, error=str(error))
        image, scale = _scaled(image, config.max_side)
        frame = Frame(stream=stream, seq=sent + 1, source_time=float(index), capture_time=started,
                      frame_index=index, scale=scale, image=image, still=True)
        if config.group_frames:  # a group of one: photos are unrelated, each gets a full detection
            frame = FrameGroup(stream=stream, seq=sent + 1, source_time=float(index), capture_time=started,
                               scale=scale, images=image[None], frame_indices=np.array([index]),
                               source_times=np.array([float(index)]), still=True)
        if not send(frame):
            return End(stream=stream, seq=sent + 1, frames_sent=sent, error="stopped")
        sent += 1
        counter.frames = sent
    return End(stream=stream, seq=sent + 1, frames_sent=sent)


def _read_into(pipe, buffer: memoryview) -> int:
    """Fill `buffer` from a pipe; fewer bytes only at its end."""
    filled = 0
    while filled < len(buffer):
        got = pipe.readinto(buffer[filled:])
        if not got:
            break
        filled += got
    return filled


def _stream_video(send: Callable[[Message], bool], stream: str, info: MediaInfo, config: IngestConfig, stop: threading.Event,
                  counter: Sent) -> End:
    ratio = None if config.every_frame else sampling_ratio(info.fps, config.fps)
    width, height = output_size(info.width, info.height, config.max_side)
    pixels = frame_pixels((width, height))
    args = ffmpeg_video_args(info.path, ratio, (width, height), (info.width, info.height), pixels=pixels)
    shape = frame_shape((width, height), pixels)
    frame_bytes = shape[0] * shape[1] * shape[2]
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    errors: list[bytes] = []
    reader = threading.Thread(target=lambda: errors.append(process.stderr.read()), daemon=True)
    reader.start()
    started = time.time()
    sent, index = 0, 0
    scale = info.width / width
    # ffmpeg's frames are read straight into this buffer (sending copies them into the message).
    group = max(1, config.group_frames)
    images = np.empty((group, *shape), np.uint8)
    indices: list[int] = []

    def send_frames() -> bool:
        times = [i / info.fps for i in indices]
        if config.group_frames:
            message: Message = FrameGroup(
                stream=stream, seq=sent + 1, source_time=times[0], capture_time=started + times[0], scale=scale,
                images=images[:len(indices)], frame_indices=np.asarray(indices, np.int64),
                source_times=np.asarray(times, np.float64), pixels=pixels)
        else:
            message = Frame(stream=stream, seq=sent + 1, source_time=times[0], capture_time=started + times[0],
                            frame_index=indices[0], scale=scale, image=images[0], pixels=pixels)
        return send(message)

    try:
        while not stop.is_set():
            if _read_into(process.stdout, memoryview(images[len(indices)]).cast("B")) < frame_bytes:
                break
            while not is_selected(index, ratio):
                index += 1
            indices.append(index)
            index += 1
            if len(indices) == group:
                if not send_frames():
                    break
                sent += len(indices)
                counter.frames = sent
                indices = []
        if indices and not stop.is_set() and send_frames():  # the last, shorter group
            sent += len(indices)
            counter.frames = sent
    finally:
        if stop.is_set():
            process.kill()
        code = process.wait()
        reader.join(timeout=5)
    if stop.is_set():
        return End(stream=stream, seq=sent + 1, frames_sent=sent, error="stopped")
    message = b"".join(errors).decode(errors="replace").strip().splitlines()
    if code != 0 or sent == 0:
        detail = message[-1] if message else (f"ffmpeg exited with code {code}" if code else "no frames decoded")
        return End(stream=stream, seq=sent + 1, frames_sent=sent, error=f"{info.path}: decoding failed ({detail})")
    return End(stream=stream, seq=sent + 1, frames_sent=sent)


def stream_input(io: StageIO, stream: str, path: str, config: IngestConfig, stop: threading.Event,
                 send: Callable[[Message], bool] | None = None) -> bool:
    """Send one input's stream through `send` (default: straight out); False if it failed (the
    End message says why)."""
    send = send or (lambda message: io.send(message, stop))
    try:
        info = probe(path)
    except DataError as error:
        logger.error("%s", error)
        io.report(StatusEvent.INPUT_FAILED, stream, input=path, error=str(error))
        return False
    ratio = None if (config.every_frame or info.kind == "image") else sampling_ratio(info.fps, config.fps)
    # The URI identifies the file across runs (re-analysis replaces by URI): the absolute path.
    uri = str(Path(path).resolve())
    start = Start(stream=stream, seq=0, capture_time=time.time(), kind=info.kind, uri=uri, name=path,
                  source_fps=info.fps, width=info.width, height=info.height,
                  expected_frames=expected_frames(info.frames, ratio) if info.kind == "video" else info.frames,
                  options=start_options(config))
    io.report(StatusEvent.INPUT_STARTED, stream, input=path, expected_frames=start.expected_frames, kind=info.kind)
    if not send(start):
        return False
    logger.info("streaming %s as %s (%s, %d frames to analyse)", redact_url(path), stream, info.kind,
                start.expected_frames)
    counter = Sent()
    try:
        end = (_stream_images if info.kind == "image" else _stream_video)(send, stream, info, config, stop, counter)
    except (OSError, ValueError) as error:  # e.g. a file that vanished or a pipe that broke
        end = End(stream=stream, seq=counter.frames + 1, frames_sent=counter.frames, error=f"{path}: {error}")
    send(end)
    if end.error:
        logger.error("%s", end.error)
    return not end.error


def start_options(config: IngestConfig) -> dict[str, object]:
    """How the stream is analysed, stored with its source: the sampling, and in a file run the
    run's id and the command that resumes it."""
    options: dict[str, object] = {"fps": None if config.every_frame else config.fps}
    if config.run:
        options["run"] = config.run
    if config.resume_command:
        options["resume"] = config.resume_command
    return options


def run(config: IngestConfig, stop: threading.Event | None = None) -> int:
    """Stream every input in order (or one camera until stopped); exit code 0 if all succeeded, 1 otherwise."""
    stop = stop or threading.Event()
    io = StageIO.from_config("ingest", config, inputs=False, acks_role="" if config.camera else "bind")
    if config.camera:
        from ingest.camera import run_camera

        try:
            return run_camera(config, io, stop)
        finally:
            io.close()
    results: list[bool] = []
    window = Window(io, config.window, config.resend_after_s, stop, int(config.window_mb * 2**20))
    with running(io, deliver=lambda: not stop.is_set()):
        results = [stream_input(io, stream_id(config.stream_prefix, i), path, config, stop, window.send)
                   for i, path in enumerate(config.inputs)]
        window.drain()  # every stream stored (ingest stays to send again what a dead stage lost)
        io.report(StatusEvent.FINISHED, inputs=len(results), failed=results.count(False))
    return 0 if all(results) else 1
