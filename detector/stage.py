"""Detector stage entry: Frame in, Faces out (one Faces per Frame, even with no face)."""

from __future__ import annotations

import logging
import threading
import time

import cv2
import numpy as np

from core.config import DetectorConfig
from core.messages import End, Faces, Frame, Message, header
from core.preprocess import DETECTOR_CROPS, INPUT_SIZE, CropGeometry, face_input
from core.runtime import StageIO, running
from detector.backends import make_detector
from detector.schedule import ScheduledDetector

logger = logging.getLogger(__name__)


def detect_faces(detector: ScheduledDetector, frame: Frame, geometry: CropGeometry) -> Faces:
    """Boxes in source pixels and crops from the frame, through the shared preprocessing."""
    boxes, scores, _full = detector.detect(frame.stream, frame.frame_index, frame.image)
    crops = np.stack([face_input(frame.image, tuple(box), geometry.margin, geometry.shift_y) for box in boxes]) \
        if len(boxes) else np.zeros((0, INPUT_SIZE, INPUT_SIZE), np.uint8)
    return Faces(**header(frame), frame_index=frame.frame_index, boxes=(boxes * frame.scale).astype(np.float32),
                 scores=scores, crops=crops)


def handle(message: Message, detector: ScheduledDetector, geometry: CropGeometry, io: StageIO) -> Message:
    if isinstance(message, End):
        detector.forget(message.stream)
    if not isinstance(message, Frame):
        return message  # stream control (Start, End) passes through
    try:
        return detect_faces(detector, message, geometry)
    except (cv2.error, ValueError) as error:
        io.counters.errors += 1
        logger.warning("%s frame %d: detection failed (%s)", message.stream, message.frame_index, error)
        return Faces(**header(message), frame_index=message.frame_index, error=str(error))


def run(config: DetectorConfig, stop: threading.Event | None = None) -> int:
    stop = stop or threading.Event()
    cv2.setNumThreads(config.threads)
    detector = ScheduledDetector(make_detector(config.detector, config.min_score, config.min_face, config.threads),
                                 config.detect_every)
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
            if not io.send(handle(message, detector, geometry, io), stop):
                break
    return 0
