"""One stream's faces followed over time: track IDs, smoothed timelines, and the store rows they make.

Pure logic: frames in source order go in (the re-ordering comes first), FaceRows (one per face,
with its track ID and smoothed probabilities) and TrackRows (one summary per track) come out.

Short tracks: a face followed for fewer than `min_track_frames` analysed frames (default 3) is
usually a false box or a face glimpsed in passing, not someone to follow. Its face rows are
kept, with the tracker's ID (so a replay gives the same IDs, and a live track that reaches the
minimum keeps its first rows), but it has no track summary: no row in the tracks table, so none
in tracks.csv or summary.json, and no panel or card in the dashboard. A live track is short
until it reaches the minimum, and from then on is summarised like any other. In an image every
face is its own one-frame track, so the minimum does not apply there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import cv2
import numpy as np

from aggregator.timeline import TrackTimeline
from aggregator.tracker import FaceTracker
from core.config import AggregatorConfig
from core.messages import CROP_SIZE, Classified, Start
from core.store import PROB_COLUMNS, FaceRow, TrackRow

if TYPE_CHECKING:  # (replay gets a table; the aggregator starts without importing pandas)
    import pandas as pd


def frame_step_s(start: Start) -> float:
    """Seconds between analysed frames (the source's frame interval, or the sampling's if longer):
    how long the last frame of a segment lasts."""
    step = 1.0 / start.source_fps if start.source_fps else 1.0
    if start.options.get("fps"):
        step = max(step, 1.0 / float(start.options["fps"]))
    return step


def min_track_frames(config: AggregatorConfig, start: Start) -> int:
    """The fewest frames a track of this stream needs for a summary: the configured minimum, 1 in
    an image (each face there is a whole track of one frame)."""
    return 1 if start.kind == "image" else max(1, int(config.min_track_frames))


class StreamTracks:
    """A stream's tracker and per-track timelines. In an image every face is its own track
    (an image set's pictures are unrelated); `next_track_id` lets a camera's IDs continue
    after its earlier runs, so they stay unique per source. Only tracks of at least
    `min_frames` frames are summarised (see the module docstring)."""

    def __init__(self, config: AggregatorConfig, start: Start, next_track_id: int = 1) -> None:
        self.config = config
        self.frame_step_s = frame_step_s(start)
        self.each_face_own_track = start.kind == "image"
        self.min_frames = min_track_frames(config, start)
        self.tracker = FaceTracker(config.track_max_gap_s, config.track_min_iou)
        self.tracker.next_id = next_track_id
        self.timelines: dict[int, TrackTimeline] = {}

    def add(self, time_s: float, frame: Classified, replaying: bool = False) -> list[FaceRow]:
        """The frame's faces as rows, in the frame's order (none for a frame without faces).
        `replaying` stored rows keeps no thumbnail (their crops are not stored)."""
        n = len(frame.boxes)
        if n == 0:
            return []
        if self.each_face_own_track:
            ids = list(range(self.tracker.next_id, self.tracker.next_id + n))
            self.tracker.next_id += n
        else:
            ids = self.tracker.update(time_s, frame.boxes)
        rows = []
        for i, track_id in enumerate(ids):
            timeline = self.timelines.get(track_id)
            if timeline is None:
                timeline = self.timelines[track_id] = TrackTimeline(track_id, self.config.smoothing_s)
            smoothed = timeline.add(time_s, frame.probs[i])
            if self.config.thumbnails and not replaying:
                timeline.keep_thumbnail(float(frame.scores[i]), frame.crops[i])
            rows.append(FaceRow(
                frame=frame.frame_index, time_s=time_s, captured_at=frame.capture_time,
                track_id=track_id, box=tuple(float(v) for v in frame.boxes[i]), score=float(frame.scores[i]),
                probs=frame.probs[i].tolist(), smoothed=smoothed.tolist(),
            ))
        return rows

    def replay(self, faces: pd.DataFrame, beat: Callable[[], None] = lambda: None) -> int:
        """Rebuild the tracker and the timelines from a stream's stored rows (in frame order), as
        a restarted aggregator or `--resume` must: the stored numbers are the float32 values the
        messages carried, so the same tracker gives the same IDs and smoothing bit for bit.
        Returns how many rows got another track ID than the stored one (0 unless the code changed);
        `beat` is called as it goes (a long replay is not a hang)."""
        mismatched = 0
        if faces.empty:
            return mismatched
        frames = faces["frame"].to_numpy()
        starts = np.flatnonzero(np.r_[True, frames[1:] != frames[:-1]])
        for first, end in zip(starts, np.r_[starts[1:], len(frames)]):
            rows = faces.iloc[first:end]
            n = len(rows)
            message = Classified(stream="", seq=0, source_time=float(rows["time_s"].iloc[0]),
                                 frame_index=int(frames[first]),
                                 boxes=rows[["x", "y", "w", "h"]].to_numpy(np.float32),
                                 scores=rows["score"].to_numpy(np.float32),
                                 crops=np.zeros((n, CROP_SIZE, CROP_SIZE), np.uint8),
                                 probs=rows[PROB_COLUMNS].to_numpy(np.float32))
            replayed = self.add(message.source_time, message, replaying=True)
            beat()
            mismatched += sum(row.track_id != int(stored) for row, stored in zip(replayed, rows["track_id"]))
        return mismatched

    def established(self) -> list[TrackTimeline]:
        """The tracks long enough to be summarised (at least `min_frames` frames so far)."""
        return [timeline for timeline in self.timelines.values() if timeline.frames >= self.min_frames]

    def track_rows(self) -> list[TrackRow]:
        """The summary so far of every track that is not short (segments are recomputed from the
        whole track); a short track has none until it reaches the minimum."""
        return [TrackRow(
            track_id=timeline.track_id, start_s=timeline.times[0], end_s=timeline.times[-1],
            frames=timeline.frames, mean_probs=timeline.mean_probs().tolist(),
            segments=timeline.segments(self.config.min_segment_s, self.frame_step_s),
            thumbnail=self._thumbnail(timeline),
        ) for timeline in self.established()]

    def _thumbnail(self, timeline: TrackTimeline) -> bytes | None:
        """The track's best-scored 48x48 crop as PNG, only when thumbnails were asked for."""
        if not self.config.thumbnails or timeline.best_crop is None:
            return None
        ok, png = cv2.imencode(".png", timeline.best_crop)
        return png.tobytes() if ok else None
