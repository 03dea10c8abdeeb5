"""A small IoU tracker with constant-velocity prediction, for faces.

Faces move slowly and rarely overlap, so matching predicted boxes to detections by IoU
(optimal assignment, scipy's Hungarian solver) keeps identities through crossings and
short occlusions without a Kalman filter's tuning. A track unseen for `max_gap_s` ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import itertools

import numpy as np

from core.boxes import iou_matrix


def best_assignment(score: np.ndarray) -> tuple[list[int], list[int]]:
    """Rows and columns of the assignment with the largest total score (each row and column at
    most once). Small problems (at most three faces on one side and six on the other: nearly
    every frame, at most 120 candidates) are solved exactly here; larger ones by scipy's Hungarian solver, imported only then (it costs
    a third of a second of the aggregator's start)."""
    rows, cols = score.shape
    if min(rows, cols) <= 3 and max(rows, cols) <= 6:
        transposed = rows > cols
        matrix = score.T if transposed else score  # rows <= cols
        best = max(itertools.permutations(range(matrix.shape[1]), matrix.shape[0]),
                   key=lambda chosen: matrix[np.arange(matrix.shape[0]), list(chosen)].sum())
        pairs = list(zip(range(matrix.shape[0]), best))
        if transposed:
            pairs = [(c, r) for r, c in pairs]
        pairs.sort()
        return [r for r, _ in pairs], [c for _, c in pairs]
    from scipy.optimize import linear_sum_assignment

    found_rows, found_cols = linear_sum_assignment(-score)
    return list(found_rows), list(found_cols)


@dataclass
class _Track:
    track_id: int
    box: np.ndarray  # last seen x, y, w, h
    last_time: float
    velocity: np.ndarray = field(default_factory=lambda: np.zeros(2, np.float32))  # px/s of the box origin

    def predict(self, time_s: float) -> np.ndarray:
        box = self.box.copy()
        box[:2] += self.velocity * (time_s - self.last_time)
        return box


class FaceTracker:
    """`update(time_s, boxes) -> track ids` for one stream; call a new tracker per source."""

    def __init__(self, max_gap_s: float = 1.0, min_iou: float = 0.2, velocity_smoothing: float = 0.5) -> None:
        self.max_gap_s = max_gap_s
        self.min_iou = min_iou
        self.velocity_smoothing = velocity_smoothing
        self.tracks: list[_Track] = []
        self.next_id = 1

    def update(self, time_s: float, boxes: np.ndarray) -> list[int]:
        self.tracks = [t for t in self.tracks if time_s - t.last_time <= self.max_gap_s]
        boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
        ids = [0] * len(boxes)
        unmatched = set(range(len(boxes)))
        if self.tracks and len(boxes):
            predicted = np.stack([t.predict(time_s) for t in self.tracks])
            iou = iou_matrix(predicted, boxes)
            rows, cols = best_assignment(iou)
            for r, c in zip(rows, cols):
                if iou[r, c] >= self.min_iou:
                    self._advance(self.tracks[r], time_s, boxes[c])
                    ids[c] = self.tracks[r].track_id
                    unmatched.discard(c)
        for c in sorted(unmatched):
            self.tracks.append(_Track(self.next_id, boxes[c].copy(), time_s))
            ids[c] = self.next_id
            self.next_id += 1
        return ids

    def _advance(self, track: _Track, time_s: float, box: np.ndarray) -> None:
        dt = time_s - track.last_time
        if dt > 0:
            measured = (box[:2] - track.box[:2]) / dt
            k = self.velocity_smoothing
            track.velocity = (k * measured + (1 - k) * track.velocity).astype(np.float32)
        track.box = box.copy()
        track.last_time = time_s
