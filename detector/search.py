"""Searching a picture more closely than one detector pass does.

Two users:
  - the detection schedule (detector/schedule.py) follows a face from frame to frame by
    searching a window around where it was (`search_window`, and a closer one when that
    finds nothing: `search_around`);
  - still pictures (photos, image folders) get a thorough search (`detect_still`): every face,
    small ones and ones cut by the picture's edge included, and no false box. Time matters
    little there (one picture, not 30 a second), so the detector runs on tiles at several scales,
    and every box it finds must be found again, by a second model, in a window around it
    (`confirmed`).

Measured on group photos composed from the project's real faces (bench/group_photos.py,
docs/benchmarks.md section 12).
"""

from __future__ import annotations

import logging
from typing import Callable

import cv2
import numpy as np

from core.boxes import iou_matrix
from core.errors import ConfigError
from detector.backends import CONFIRMERS, FaceDetector, make_detector, shrink, suppress_overlaps

logger = logging.getLogger(__name__)

# The local search's window: this many times the box's longer side, centred on it (room for a
# face that moved or grew a little, still large in the detector's input) ...
SEARCH_SCALE = 2.5
# ... and the box found there must overlap the searched one this much to be the same face.
SAME_FACE_IOU = 0.3
# A face the wide window misses is looked for once more in this closer one (times the box's
# longer side): BlazeFace short range was trained on faces that fill much of its input, and a
# tight face crop (FER2013's) scores far higher when it does. Median score of 126 FER2013 faces
# pasted at 170 pixels, over their frames: 0.5 or more in 109 of them in a 2.5x window, 123 at
# 1.8x, 124 at 1.4x. Through the schedule's first version (the same clips, 2,520 face frames)
# a close window of 1.4x found the face in 93.3 % of frames, 1.6x in 93.9 %, 1.8x in 93.7 %
# (docs/benchmarks.md, section 12; the shipped schedule at 1.6x: 93.2 %).
CLOSE_SCALE = 1.6
# Still pictures: tiles at each scale overlap by half their side, so every face smaller than
# half a tile is whole in one of them; a box cut by a tile's inner edge is a part of a face and
# is ignored (the neighbouring tile holds the whole face).
TILE_OVERLAP = 0.5
# Tiles are halved while they stay at least this many times the detector's input side, so the
# smallest is 0.5 to 1 times it (120 pixels at 1280x960; BlazeFace enlarges a tile smaller than its
# input; Haar has no input side and takes BlazeFace's 128). Measured on 20 composed group photos
# at 1280x960 (bench/group_photos.py): faces under 24 pixels were found only with this floor at
# 0.5 (0 of 7 at 1.0: smallest tile 240), at about 3.5 times the time. The false boxes the
# enlarged tiles bring are what the confirming model removes.
MIN_TILE = 0.5
# A larger picture is searched at this size (its boxes scaled back): the tiles' cost grows with the
# pixels (0.7-0.8 s measured at 1280x960; a 12-megapixel photo has ten times those pixels).
STILL_MAX_SIDE = 1280


def window(image: np.ndarray, x0: int, y0: int, size: int) -> np.ndarray | None:
    """The square (x0, y0, size) of `image`, padded with black where it leaves the picture
    (None if less than 8 pixels of it are inside)."""
    height, width = image.shape[:2]
    left, top, right, bottom = max(0, x0), max(0, y0), min(width, x0 + size), min(height, y0 + size)
    if right - left < 8 or bottom - top < 8:
        return None
    inside = image[top:bottom, left:right]  # a view: the detector resizes it to its input
    if (left, top, right, bottom) == (x0, y0, x0 + size, y0 + size):
        return inside
    return cv2.copyMakeBorder(inside, top - y0, y0 + size - bottom, left - x0, x0 + size - right,
                              cv2.BORDER_CONSTANT, value=0)


def search_window(detector: FaceDetector, image: np.ndarray, box: np.ndarray, scale: float = SEARCH_SCALE,
                  min_score: float | None = None) -> tuple[np.ndarray | None, float]:
    """The detector on a square window `scale` times `box`'s longer side around it: the face's
    box there (frame pixels) and score, or (None, 0) if no box there overlaps `box` enough.
    `min_score` overrides the detector's score threshold (None: its own)."""
    side = scale * float(max(box[2], box[3]))
    x0, y0 = int(round(box[0] + box[2] / 2 - side / 2)), int(round(box[1] + box[3] / 2 - side / 2))
    patch = window(image, x0, y0, max(1, int(round(side))))
    if patch is None:
        return None, 0.0
    boxes, scores = detector.detect(patch, min_score=min_score)
    if not len(boxes):
        return None, 0.0
    boxes = boxes + np.asarray([x0, y0, 0, 0], np.float32)
    overlap = iou_matrix(box[None], boxes)[0]
    best = int(overlap.argmax())
    if overlap[best] < SAME_FACE_IOU:
        return None, 0.0
    return boxes[best], float(scores[best])


def search_around(detector: FaceDetector, image: np.ndarray, box: np.ndarray, min_score: float | None = None,
                  close_min_score: float | None = None) -> tuple[np.ndarray | None, float]:
    """`search_window` at SEARCH_SCALE with `min_score`, then, if that found nothing, at
    CLOSE_SCALE with `close_min_score` (None: the detector's own threshold): a second model call
    only for a face the first window missed."""
    found, score = search_window(detector, image, box, SEARCH_SCALE, min_score)
    if found is None:
        found, score = search_window(detector, image, box, CLOSE_SCALE, close_min_score)
    return found, score


def confirmed(confirmer: FaceDetector, image: np.ndarray, box: np.ndarray) -> bool:
    """Whether `confirmer` finds a face in a search around `box` (a yes or no: the box itself
    stays the one the detector drew, which its crop geometry was measured for).

    The confirmer should be another model than the one that found the box: a model's false
    boxes come from textures it likes, and it likes them again in the window. Measured on 20
    composed group photos (bench/group_photos.py) with BlazeFace short range finding the boxes:
    confirmed by itself 127 of 141 faces kept and 11 false boxes; by the full-range model 128
    and 1."""
    return search_window(confirmer, image, box)[0] is not None


def tile_origins(length: int, side: int) -> list[int]:
    """Tile starts along one axis: `side`-long tiles overlapping by TILE_OVERLAP, the last one
    flush with the end."""
    if length <= side:
        return [0]
    step = max(1, int(side * (1.0 - TILE_OVERLAP)))
    starts = list(range(0, length - side, step))
    return starts + [length - side]


def _cut_by_tile(boxes: np.ndarray, x0: int, y0: int, side: int, width: int, height: int) -> np.ndarray:
    """Which boxes (tile pixels) reach past one of the tile's inner edges (not the picture's)."""
    margin = 0.02 * side
    cut = np.zeros(len(boxes), bool)
    if x0 > 0:
        cut |= boxes[:, 0] < margin
    if y0 > 0:
        cut |= boxes[:, 1] < margin
    if x0 + side < width:
        cut |= boxes[:, 0] + boxes[:, 2] > side - margin
    if y0 + side < height:
        cut |= boxes[:, 1] + boxes[:, 3] > side - margin
    return cut


def detect_still(detector: FaceDetector, confirmer: FaceDetector | None, image: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Every face of a still picture: the detector's own pass, then square tiles of half, a
    quarter ... of the picture's short side (halved while a tile stays at least MIN_TILE times
    the detector's input side), then the boxes in score order, each kept if `confirmer` finds a
    face around it (None: kept) and no kept box overlaps it. Confirming before suppressing: a
    false box must not remove a true face it overlaps and then be rejected itself."""
    scale = min(1.0, STILL_MAX_SIDE / max(image.shape[:2]))
    if scale < 1.0:  # the search's cost grows with the pixels: a large photo is searched at 1280
        small = shrink(image, (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))))
        boxes, scores = detect_still(detector, confirmer, small)
        return (boxes / np.float32(scale)).astype(np.float32), scores
    height, width = image.shape[:2]
    # BlazeFace's input side; Haar has none (it scans every scale of a picture it first shrinks
    # to 640 pixels), and BlazeFace's short-range input serves as its tile floor.
    input_side = getattr(detector, "size", 128)
    passes = [detector.detect(image)]
    side = min(width, height) // 2
    while side >= MIN_TILE * input_side:
        for y0 in tile_origins(height, side):
            for x0 in tile_origins(width, side):
                boxes, scores = detector.detect(image[y0:y0 + side, x0:x0 + side])
                whole = ~_cut_by_tile(boxes, x0, y0, side, width, height)
                passes.append((boxes[whole] + np.asarray([x0, y0, 0, 0], np.float32), scores[whole]))
        side //= 2
    boxes = np.concatenate([b for b, _ in passes]).astype(np.float32).reshape(-1, 4)
    scores = np.concatenate([s for _, s in passes]).astype(np.float32)
    keep = suppress_overlaps(boxes, scores, 0.3,
                             accept=lambda i: confirmer is None or confirmed(confirmer, image, boxes[i]))
    return boxes[keep].reshape(-1, 4), scores[keep]


class StillSearch:
    """`detect_still` with its confirming model loaded on first use: a video run never needs it.
    Without it (BlazeFace's package missing beside a Haar detector) photos are searched on
    tiles with no confirmation, and a warning says so once."""

    @classmethod
    def for_detector(cls, name: str, backend: FaceDetector, threads: int = 1) -> StillSearch:
        """The search for `backend` (made as detector `name`), confirmed by CONFIRMERS[name]."""
        return cls(backend, lambda: make_detector(CONFIRMERS[name], threads=threads))

    def __init__(self, detector: FaceDetector, make_confirmer: Callable[[], FaceDetector]) -> None:
        self.detector = detector
        self.make_confirmer = make_confirmer
        self.confirmer: FaceDetector | None = None
        self.tried = False

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if not self.tried:
            self.tried = True
            try:
                self.confirmer = self.make_confirmer()
            except ConfigError as error:
                logger.warning("photos are searched without a confirming model (%s)", error)
        return detect_still(self.detector, self.confirmer, image)
