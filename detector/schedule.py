"""Detection on a schedule: the full detector every K-th frame, faces followed in between.

A full detection (BlazeFace's letterboxed pass plus tiles on wide frames: about three model
calls on a resized copy of the whole frame) is the detector stage's whole cost; it also takes
weak boxes as candidates, each kept only if a close window around it scores a face clearly
(`_candidates`, CANDIDATE_SCORE below). Between two of them a face moves little, so each box
is carried forward by its own velocity and then refined by a local search: the same detector
runs on a square window around the predicted box (2.5 times its size, resized to the model's
input: one small call per face; a closer window, 1.6 times, when that finds nothing), and the
box it finds there replaces the prediction. A weak box not found there is dropped (most are false
boxes); a clear face lost calls a full detection. Every frame still gets its own crops, cut where
the face now is. With `search_every` N > 1 the local search runs on every N-th frame only, and
the frames between get each box carried by its velocity alone (no model call).
A full detection runs anyway when:
  - K frames of the stream have passed since the last one (`every`);
  - the picture changed a lot outside the followed boxes (a scene cut, someone walking in): a
    64-pixel-wide grey thumbnail is compared with the last detection's;
  - the last frame had no face to follow: frames without faces are detected every time (with
    carried boxes alone, a face that one detection misses stayed unfound until the next
    scheduled one: 4 of 244 composed-clip segments were never found at K=5);
  - the stream is new to this worker, or jumped (a camera's frames spread over several
    workers: each worker schedules the frames it sees). File runs send FrameGroups of K
    frames instead: each group starts with a full detection (detector/stage.py).
With `every` = 1 every frame is detected. This is the scheme of NVIDIA DeepStream's `interval`
(detector every N frames, tracker between) and Frigate's motion gate. Measured in
docs/benchmarks.md (section 10): the default K=5 agrees with the face alone as often as K=1.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from core.boxes import iou_matrix
from detector.backends import FaceDetector, shrink, suppress_overlaps
from detector.search import CLOSE_SCALE, SAME_FACE_IOU, confirmed, search_around, search_window

THUMB_WIDTH = 64
# A thumbnail pixel "changed" when its grey level moved by more than this (0-255; the thumbnail
# averages 10-20 source pixels each, so sensor and compression noise stays far below it) ...
PIXEL_CHANGE = 25
# ... and a full detection is called when more than this fraction of the pixels outside the
# carried boxes changed since the last full detection: a scene cut changes most of them, a person
# walking in several percent. Real video moves outside the faces all the time (shoulders, hands,
# hair, the camera): measured over 200 frames, the changed fraction's median was 0.44 % on
# megamind.avi and 0.28 % on WolfgangLanger_Pexels.mp4, its 90th percentile 1.2 % and 2.0 %.
# At 0.5 % the gate called a full detection on 40-45 % of the frames that carried boxes, so a
# small face entering (about 1 % of a 1280x720 frame) is left to the schedule (within K frames).
CHANGE_THRESHOLD = 0.05
# The local search's window and match: detector/search.py (SEARCH_SCALE, SAME_FACE_IOU).
# A full detection's box scored under this is followed only if a local search finds it too.
# Measured on the full detections of four composed clips (every 5th frame): of the boxes scored
# 0.50-0.60, 36 were false (33 not found again) and 28 true (12 not found again); of those scored
# 0.60-0.75, 2 false (both found again) and 144 true (12 not found again), so the check stops at 0.6.
CONFIRM_BELOW = 0.6
# A full detection also takes the detector's boxes down to CANDIDATE_SCORE, and keeps one under
# the detector's own threshold only if a close window around it (detector/search.py,
# CLOSE_SCALE) scores a face there CONFIRM_SCORE or more; the close window's box and score then
# replace the candidate's. A face that fills little of a full detection's input (a tight crop:
# no hair, ears or chin) scores low there and high in a close window, while most false boxes
# (hands, hair, textures) do not rise. Measured on three composed clips (2,520 face frames;
# docs/benchmarks.md, section 12): faces found in 89.4 % of frames without candidates; with
# them 93.2 % at CONFIRM_SCORE 0.7 and 95.2 % at 0.6. At 0.6 a shoulder and two hands holding
# a glass in megamind.avi were confirmed as faces; at 0.7 none. CONFIRM_SCORE is also the bar
# of a weak followed box's close second look (`detect`).
CANDIDATE_SCORE = 0.3
CONFIRM_SCORE = 0.7
# A face the local search loses calls a full detection when its last score was at least this;
# weaker boxes are dropped. On megamind.avi the lost boxes under it were false ones (about 0.5,
# at the frame's edge); with SEARCH_SCALE 2.5, 3 of 301 clear boxes (score 0.75 or more) were
# lost by the search (2.0: 7, 1.5: 30) and none of 299 on WolfgangLanger_Pexels.mp4.
LOST_FACE_SCORE = 0.75
# A clear face (once scored LOST_FACE_SCORE or more) being followed is searched for with this
# score threshold, lower than a full detection's (0.5): the window is small and the face was in
# it a frame ago. Weaker boxes keep the detector's own threshold (in the close window:
# CONFIRM_SCORE): at 0.3 for every box, false
# ones (a hand, hair) lived on for a few frames on the 1280x720 clip. Measured on the
# frames of three composed clips where the pipeline had lost the pasted face, a window around
# the face scored it 0.3 or more in 47 % of them (0.5 or more: 20 %); on the frames where it was
# found, 96 % scored 0.3 or more (docs/benchmarks.md, section 10).
FOLLOW_MIN_SCORE = 0.3
# A followed face that full detections miss is kept by a local search through at most this many
# of them in a row (then a detection must find it again): a face leaving the picture must not
# leave a box behind on whatever the search keeps finding at the low threshold.
MAX_MISSED_DETECTIONS = 2


@dataclass
class StreamState:
    frame_index: int  # the last frame this worker detected or searched (carried frames leave the state alone)
    detected_at: int  # the frame index of the last full detection
    boxes: np.ndarray  # (n, 4) x, y, w, h in frame pixels, as of `frame_index`
    scores: np.ndarray
    velocity: np.ndarray  # (n, 4) per frame
    thumb: np.ndarray  # the grey thumbnail at the last full detection
    detected: np.ndarray  # the boxes the last full detection found (velocities are measured from them)
    peak: np.ndarray  # (n,) each followed face's best score so far: a clear face outlives a missed detection
    missed: np.ndarray  # (n,) full detections in a row that missed the face (it was kept by a search)


class ScheduledDetector:
    """Wraps a FaceDetector: `detect(stream, frame_index, image)` runs it on a schedule."""

    def __init__(self, detector: FaceDetector, every: int, max_streams: int = 256, search_every: int = 1,
                 candidate_score: float | None = CANDIDATE_SCORE) -> None:
        self.detector = detector
        self.candidate_score = candidate_score
        self.every = max(1, every)
        self.search_every = max(1, search_every)
        self.max_streams = max_streams
        self.streams: dict[str, StreamState] = {}

    def detect(self, stream: str, frame_index: int, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
        """(boxes, scores, full): `full` says whether the detector ran on this frame."""
        state = self.streams.get(stream)
        # Every frame a full detection, with its candidates and checks (before the candidates,
        # K=1 returned the detector's raw boxes): no state.
        if self.every == 1:
            return (*self._candidates(image), True)
        thumb = _thumbnail(image)
        if state is None:
            return (*self._full(stream, state, frame_index, image, thumb), True)
        steps = frame_index - state.frame_index
        predicted = _clip(state.boxes + state.velocity * steps, image.shape)
        if self._due(state, frame_index, thumb, image.shape, predicted):
            return (*self._full(stream, state, frame_index, image, thumb), True)
        if steps < self.search_every and (state.peak >= LOST_FACE_SCORE).all():
            # Carried by velocity alone; the state stays at the last search. Only clear faces: a
            # weak box must be found again by a search on every frame, or be dropped at once.
            return predicted, state.scores.copy(), False
        # A weak box gets its close second look at the bar a new candidate must pass.
        found = [search_around(self.detector, image, box, FOLLOW_MIN_SCORE, FOLLOW_MIN_SCORE)
                 if peak >= LOST_FACE_SCORE else search_around(self.detector, image, box, None, CONFIRM_SCORE)
                 for box, peak in zip(predicted, state.peak)]
        lost = [i for i, (box, _) in enumerate(found) if box is None]
        if lost and state.peak[lost].max() >= LOST_FACE_SCORE:  # a clear face lost: look at the whole frame
            return (*self._full(stream, state, frame_index, image, thumb, searched=lost), True)
        # A weak box the search does not find again is dropped (most are false boxes, which a
        # full detection would find again and again, each frame).
        kept = [i for i, (box, _) in enumerate(found) if box is not None]
        boxes = np.asarray([found[i][0] for i in kept], np.float32).reshape(-1, 4)
        scores = np.asarray([found[i][1] for i in kept], np.float32)
        state.velocity = 0.5 * state.velocity[kept] + 0.5 * (boxes - state.boxes[kept]) / steps
        state.peak = np.maximum(state.peak[kept], scores)
        state.missed = state.missed[kept]
        state.boxes, state.scores, state.frame_index = boxes, scores, frame_index
        return boxes.copy(), scores.copy(), False

    def _due(self, state: StreamState, frame_index: int, thumb: np.ndarray, shape: tuple[int, ...],
             predicted: np.ndarray) -> bool:
        """`predicted`: the faces' boxes now (the last searched ones can be frames old with search_every > 1)."""
        steps = frame_index - state.frame_index
        if steps <= 0 or frame_index - state.detected_at >= self.every:
            return True  # a new or repeated stream position, or the schedule
        if not len(state.boxes):
            return True  # nothing to follow: a face too faint for one detection may be found in the next
        return _change_outside(state.thumb, thumb, predicted, shape) > CHANGE_THRESHOLD

    def _full(self, stream: str, state: StreamState | None, frame_index: int, image: np.ndarray,
              thumb: np.ndarray, searched: list[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """A full detection; `searched`: followed faces a local search already failed to find on
        this frame (not searched for again)."""
        boxes, scores = self._candidates(image)
        velocity, peak, missed = np.zeros_like(boxes), scores.copy(), np.zeros(len(boxes), np.int32)
        if state is not None and len(boxes) and len(state.detected) and frame_index > state.detected_at:
            # Each new box takes its velocity from its best-overlapping box of the last detection
            # (detection to detection: K frames apart, so one frame's jitter hardly counts).
            overlap = iou_matrix(boxes, state.detected)
            best = overlap.argmax(axis=1)
            matched = overlap[np.arange(len(boxes)), best] > 0.3
            velocity[matched] = (boxes[matched] - state.detected[best[matched]]) / (frame_index - state.detected_at)
        if state is not None and len(state.boxes) and frame_index > state.frame_index:
            boxes, scores, velocity, peak, missed = self._carry_missed(state, frame_index, image, boxes, scores,
                                                                       velocity, peak, searched or [])
        if len(self.streams) >= self.max_streams and stream not in self.streams:
            self.streams.pop(next(iter(self.streams)))  # forget the oldest stream (live cameras come and go)
        self.streams[stream] = StreamState(frame_index, frame_index, boxes, scores, velocity, thumb, boxes, peak,
                                           missed)
        return boxes, scores

    def _candidates(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A full detection's boxes. The detector's pass, at `candidate_score` when that is under
        the detector's own threshold; then a box under the threshold is kept only if a close
        window around it scores a face there CONFIRM_SCORE or more (its box and score then
        replace the candidate's), and a box under CONFIRM_BELOW only if a local search finds it
        again (a false box that every full detection finds again would otherwise give one row
        every K frames, a "track" with holes)."""
        threshold = getattr(self.detector, "min_score", None)  # Haar has none: no candidates
        if self.candidate_score is not None and threshold is not None and self.candidate_score < threshold:
            boxes, scores = self.detector.detect(image, min_score=self.candidate_score)
        else:
            boxes, scores = self.detector.detect(image)
            threshold = 0.0
        if not (scores < CONFIRM_BELOW).any():
            return boxes, scores
        kept_boxes, kept_scores = [], []
        for box, score in zip(boxes, scores):
            if score < threshold:
                box, score = search_window(self.detector, image, box, CLOSE_SCALE, CONFIRM_SCORE)
                if box is None:
                    continue
            elif score < CONFIRM_BELOW and not confirmed(self.detector, image, box):
                continue
            kept_boxes.append(box)
            kept_scores.append(score)
        boxes, scores = np.asarray(kept_boxes, np.float32).reshape(-1, 4), np.asarray(kept_scores, np.float32)
        keep = suppress_overlaps(boxes, scores, 0.3)  # a replaced box can land on another face's
        return boxes[keep].reshape(-1, 4), scores[keep]

    def _carry_missed(self, state: StreamState, frame_index: int, image: np.ndarray, boxes: np.ndarray,
                      scores: np.ndarray, velocity: np.ndarray, peak: np.ndarray, searched: list[int]
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Faces followed until now that this full detection missed, found again by a local
        search where they should be, are kept (a detector misses a face now and then; without
        this, the face was gone until the next full detection found it: K frames). Only faces
        that once scored LOST_FACE_SCORE or more (a weak box must be found by the detection),
        through MAX_MISSED_DETECTIONS detections in a row, and never a second box on a face the
        detection found. Returns boxes, scores, velocities, peaks and missed counts."""
        predicted = _clip(state.boxes + state.velocity * (frame_index - state.frame_index), image.shape)
        overlap = iou_matrix(boxes, predicted) if len(boxes) else np.zeros((0, len(predicted)), np.float32)
        again = overlap.max(axis=1) >= SAME_FACE_IOU if len(predicted) else np.zeros(len(boxes), bool)
        if again.any():  # a face found again keeps its best score
            best = overlap.argmax(axis=1)
            peak[again] = np.maximum(peak[again], state.peak[best[again]])
        missed = np.zeros(len(boxes), np.int32)
        matched = overlap.max(axis=0) >= SAME_FACE_IOU if len(boxes) else np.zeros(len(predicted), bool)
        matched[searched] = True  # already searched for on this frame, in vain
        carried = []
        for i in np.flatnonzero(~matched & (state.peak >= LOST_FACE_SCORE) & (state.missed < MAX_MISSED_DETECTIONS)):
            box, score = search_around(self.detector, image, predicted[i], FOLLOW_MIN_SCORE, FOLLOW_MIN_SCORE)
            if box is not None and not (len(boxes) and iou_matrix(box[None], boxes).max() >= SAME_FACE_IOU):
                carried.append((box, score, state.velocity[i], state.peak[i], state.missed[i] + 1))
        if not carried:
            return boxes, scores, velocity, peak, missed
        columns = list(zip(*carried))
        return (np.concatenate([boxes, np.asarray(columns[0], np.float32).reshape(-1, 4)]),
                np.concatenate([scores, np.asarray(columns[1], np.float32)]),
                np.concatenate([velocity, np.asarray(columns[2], np.float32).reshape(-1, 4)]),
                np.concatenate([peak, np.asarray(columns[3], np.float32)]),
                np.concatenate([missed, np.asarray(columns[4], np.int32)]))

    def forget(self, stream: str) -> None:
        self.streams.pop(stream, None)


def _thumbnail(image: np.ndarray) -> np.ndarray:
    height, width = image.shape[:2]
    size = (THUMB_WIDTH, max(1, round(height * THUMB_WIDTH / width)))
    small = shrink(image, size)  # shrink first: grey of 64 px, not of the frame
    return (cv2.cvtColor(small, cv2.COLOR_BGR2GRAY) if small.ndim == 3 else small).astype(np.int16)


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
