"""Detection on a schedule: the full detector every K-th frame, boxes carried in between.

A full detection (BlazeFace's letterboxed pass plus tiles on wide frames: about three model
calls) is the detector stage's whole cost. Between two of them a face moves little, so each
box is carried forward by its own velocity (measured between the last two detections that
saw it) and the frame still gets its own crops, cut where the face now is. A full detection
runs anyway when:
  - K frames of the stream have passed since the last one (`every`);
  - the picture changed outside the carried boxes (something appeared where no track is, or
    a scene cut): a 64-pixel-wide grey thumbnail is compared with the last detection's;
  - the stream is new to this worker, or jumped (frames of one stream spread over several
    workers: each worker schedules the frames it sees, by frame index).
With `every` = 1 every frame is detected, as before. This is the scheme of NVIDIA DeepStream's
`interval` (detector every N frames, tracker between) and Frigate's motion gate.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from core.boxes import iou_matrix
from detector.backends import FaceDetector

THUMB_WIDTH = 64
# A thumbnail pixel "changed" when its grey level moved by more than this (0-255; the thumbnail
# averages 10-20 source pixels each, so sensor and compression noise stays far below it) ...
PIXEL_CHANGE = 25
# ... and a full detection is called when more than this fraction of the pixels outside the
# carried boxes changed: a 100 px face entering a 1280x720 frame is about 1 %, a scene cut most.
CHANGE_THRESHOLD = 0.005


@dataclass
class StreamState:
    frame_index: int  # the last frame this worker handled
    detected_at: int  # the frame index of the last full detection
    boxes: np.ndarray  # (n, 4) x, y, w, h in frame pixels, as of `frame_index`
    scores: np.ndarray
    velocity: np.ndarray  # (n, 4) per frame
    thumb: np.ndarray  # the grey thumbnail at the last full detection
    detected: np.ndarray  # the boxes the last full detection found (velocities are measured from them)


class ScheduledDetector:
    """Wraps a FaceDetector: `detect(stream, frame_index, image)` runs it on a schedule."""

    def __init__(self, detector: FaceDetector, every: int, max_streams: int = 256) -> None:
        self.detector = detector
        self.every = max(1, every)
        self.max_streams = max_streams
        self.streams: dict[str, StreamState] = {}

    def detect(self, stream: str, frame_index: int, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """(boxes, scores, full): `full` says whether the detector ran on this frame."""
        state = self.streams.get(stream)
        thumb = _thumbnail(image)
        if self.every == 1 or state is None or self._due(state, frame_index, thumb, image.shape):
            return (*self._full(stream, state, frame_index, image, thumb), True)
        steps = frame_index - state.frame_index
        boxes = _clip(state.boxes + state.velocity * steps, image.shape)
        state.boxes, state.frame_index = boxes, frame_index
        return boxes.copy(), state.scores.copy(), False

    def _due(self, state: StreamState, frame_index: int, thumb: np.ndarray, shape: tuple[int, ...]) -> bool:
        steps = frame_index - state.frame_index
        if steps <= 0 or frame_index - state.detected_at >= self.every:
            return True  # a new or repeated stream position, or the schedule
        return _change_outside(state.thumb, thumb, state.boxes, shape) > CHANGE_THRESHOLD

    def _full(self, stream: str, state: StreamState | None, frame_index: int, image: np.ndarray,
              thumb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        boxes, scores = self.detector.detect(image)
        velocity = np.zeros_like(boxes)
        if state is not None and len(boxes) and len(state.detected) and frame_index > state.detected_at:
            # Each new box takes its velocity from its best-overlapping box of the last detection
            # (detection to detection: K frames apart, so one frame's jitter hardly counts).
            overlap = iou_matrix(boxes, state.detected)
            best = overlap.argmax(axis=1)
            matched = overlap[np.arange(len(boxes)), best] > 0.3
            velocity[matched] = (boxes[matched] - state.detected[best[matched]]) / (frame_index - state.detected_at)
        if len(self.streams) >= self.max_streams and stream not in self.streams:
            self.streams.pop(next(iter(self.streams)))  # forget the oldest stream (live cameras come and go)
        self.streams[stream] = StreamState(frame_index, frame_index, boxes, scores, velocity, thumb, boxes)
        return boxes, scores

    def forget(self, stream: str) -> None:
        self.streams.pop(stream, None)


def _thumbnail(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    size = (THUMB_WIDTH, max(1, round(height * THUMB_WIDTH / width)))
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA).astype(np.int16)


def _change_outside(before: np.ndarray, after: np.ndarray, boxes: np.ndarray, shape: tuple[int, ...]) -> float:
    """The fraction of thumbnail pixels outside the boxes that changed (faces move inside them)."""
    if before.shape != after.shape:
        return float("inf")
    mask = np.ones(after.shape, bool)
    scale = after.shape[1] / shape[1]
    for x, y, w, h in boxes * scale:
        mask[max(0, int(y)):int(np.ceil(y + h)) + 1, max(0, int(x)):int(np.ceil(x + w)) + 1] = False
    if not mask.any():
        return 0.0
    return float((np.abs(after[mask] - before[mask]) > PIXEL_CHANGE).mean())


def _clip(boxes: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Keep carried boxes inside the frame with a positive size."""
    height, width = shape[:2]
    out = boxes.astype(np.float32).copy()
    out[:, 2:] = np.maximum(out[:, 2:], 4.0)
    out[:, 0] = np.clip(out[:, 0], -out[:, 2] / 2, width - out[:, 2] / 2)
    out[:, 1] = np.clip(out[:, 1], -out[:, 3] / 2, height - out[:, 3] / 2)
    return out
