"""Aggregator stage entry: Classified in (any order, any worker), store rows out.

Each stream is re-ordered by sequence number, so tracks see frames in source order no
matter how many detector and classifier workers raced. Rows are written in small
transactions (the dashboard sees a source grow); a stream's End finalises its tracks and
marks the source done, or deletes its partial rows if ingest reported an error.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from aggregator.timeline import TrackTimeline
from aggregator.tracker import FaceTracker
from emojimation.config import AggregatorConfig, default_store_url
from emojimation.messages import Classified, End, Message, Start
from emojimation.runtime import StageIO
from emojimation.store import FaceRow, Store, TrackRow

logger = logging.getLogger(__name__)

FLUSH_EVERY_S = 0.25
TRACKS_EVERY_S = 1.0  # live track summaries (segments are recomputed from the whole track)
MAX_REORDER = 20_000  # messages held waiting for a gap; beyond it the gap is given up as lost


@dataclass
class StreamState:
    start: Start
    source_id: int
    tracker: FaceTracker
    next_seq: int = 1
    end: End | None = None
    waiting: dict[int, Message] = field(default_factory=dict)
    timelines: dict[int, TrackTimeline] = field(default_factory=dict)
    rows: list[FaceRow] = field(default_factory=list)
    frames_analysed: int = 0
    frames_with_faces: int = 0
    faces: int = 0
    last_time_s: float = 0.0
    flushed_frames: int = 0
    tracks_written_at: float = 0.0


class Aggregator:
    """The stage's logic, separate from its sockets so tests can drive it directly."""

    def __init__(self, config: AggregatorConfig, store: Store, io: StageIO | None = None) -> None:
        self.config = config
        self.store = store
        self.io = io
        self.streams: dict[str, StreamState] = {}
        self.early: dict[str, dict[int, Message]] = {}  # messages that beat their stream's Start
        self.last_flush = time.monotonic()

    # --- ordering -----------------------------------------------------------------------
    def accept(self, message: Message) -> None:
        if isinstance(message, Start):
            self._open(message)
            for seq, waiting in sorted(self.early.pop(message.stream, {}).items()):
                self.accept(waiting)
            return
        state = self.streams.get(message.stream)
        if state is None:
            self.early.setdefault(message.stream, {})[message.seq] = message
            return
        if message.seq < state.next_seq or message.seq in state.waiting:
            self._drop("duplicate", message)
            return
        state.waiting[message.seq] = message
        if len(state.waiting) > MAX_REORDER:
            lost = min(state.waiting) - state.next_seq
            logger.error("%s: %d messages never arrived; continuing after the gap", message.stream, lost)
            state.next_seq = min(state.waiting)
        while state.next_seq in state.waiting:
            self._process(state, state.waiting.pop(state.next_seq))
            state.next_seq += 1
            if message.stream not in self.streams:
                break

    def _drop(self, reason: str, message: Message) -> None:
        if self.io:
            self.io.counters.drop(reason)
        logger.warning("dropped %s message %s/%d (%s)", type(message).__name__, message.stream, message.seq, reason)

    # --- per message --------------------------------------------------------------------
    def _open(self, start: Start) -> None:
        kind = "image" if start.kind == "image" else start.kind
        source_id = self.store.create_source(
            kind, start.uri, start.name or start.uri, "live" if kind == "camera" else "analysing",
            source_fps=start.source_fps, width=start.width, height=start.height,
            expected_frames=start.expected_frames, model=self.config.model_name, options=start.options,
        )
        tracker = FaceTracker(self.config.track_max_gap_s, self.config.track_min_iou)
        self.streams[start.stream] = StreamState(start, source_id, tracker)
        self._report("source-opened", start.stream, source_id=source_id)

    def _process(self, state: StreamState, message: Message) -> None:
        if isinstance(message, Classified):
            self._add_frame(state, message)
        elif isinstance(message, End):
            self._close(state, message)
        else:
            self._drop("unexpected", message)

    def _add_frame(self, state: StreamState, frame: Classified) -> None:
        state.frames_analysed += 1
        state.last_time_s = max(state.last_time_s, frame.source_time)
        n = len(frame.boxes)
        if n == 0:
            return
        state.frames_with_faces += 1
        state.faces += n
        if state.start.kind == "image":  # each face in an image is its own track
            ids = list(range(state.tracker.next_id, state.tracker.next_id + n))
            state.tracker.next_id += n
        else:
            ids = state.tracker.update(frame.source_time, frame.boxes)
        for i, track_id in enumerate(ids):
            timeline = state.timelines.get(track_id)
            if timeline is None:
                timeline = state.timelines[track_id] = TrackTimeline(track_id, self.config.smoothing_s)
            smoothed = timeline.add(frame.source_time, frame.probs[i])
            if self.config.thumbnails:
                timeline.keep_thumbnail(float(frame.scores[i]), frame.crops[i])
            state.rows.append(FaceRow(
                frame=frame.frame_index, time_s=frame.source_time, captured_at=frame.capture_time,
                track_id=track_id, box=tuple(float(v) for v in frame.boxes[i]), score=float(frame.scores[i]),
                probs=frame.probs[i].tolist(), smoothed=smoothed.tolist(),
            ))

    def _progress(self, state: StreamState) -> dict[str, int | float]:
        duration = state.last_time_s + (1.0 / state.start.source_fps if state.start.source_fps else 0.0)
        return {"frames_analysed": state.frames_analysed, "frames_with_faces": state.frames_with_faces,
                "faces": state.faces, "duration_s": duration}

    def _flush(self, state: StreamState) -> None:
        self.store.add_faces(state.source_id, state.rows, self._progress(state))
        state.rows = []
        state.flushed_frames = state.frames_analysed
        self._report("progress", state.start.stream, source_id=state.source_id,
                     frames_analysed=state.frames_analysed)

    def track_rows(self, state: StreamState) -> list[TrackRow]:
        step = 1.0 / state.start.source_fps if state.start.source_fps else 1.0
        if state.start.options.get("fps"):
            step = max(step, 1.0 / float(state.start.options["fps"]))
        rows = []
        for timeline in state.timelines.values():
            thumbnail = None
            if self.config.thumbnails and timeline.best_crop is not None:
                ok, png = cv2.imencode(".png", timeline.best_crop)
                thumbnail = png.tobytes() if ok else None
            rows.append(TrackRow(
                track_id=timeline.track_id, start_s=timeline.times[0], end_s=timeline.times[-1],
                frames=timeline.frames, mean_probs=timeline.mean_probs().tolist(),
                segments=timeline.segments(self.config.min_segment_s, step), thumbnail=thumbnail,
            ))
        return rows

    def _close(self, state: StreamState, end: End) -> None:
        stream = state.start.stream
        del self.streams[stream]
        if end.error:
            self.store.fail_source(state.source_id, end.error)
            self._report("failed", stream, source_id=state.source_id, error=end.error)
            return
        self._flush(state)
        self.store.write_tracks(state.source_id, self.track_rows(state))
        self.store.finish_source(state.source_id, **self._progress(state))
        logger.info("%s done: %d frames, %d with faces, %d tracks", state.start.uri, state.frames_analysed,
                    state.frames_with_faces, len(state.timelines))
        self._report("done", stream, source_id=state.source_id, frames_analysed=state.frames_analysed)

    def tick(self) -> None:
        """Periodic work: flush new rows so readers see progress; refresh track summaries less often."""
        now = time.monotonic()
        if now - self.last_flush < FLUSH_EVERY_S:
            return
        for state in self.streams.values():
            if state.frames_analysed != state.flushed_frames:
                self._flush(state)
                if state.timelines and now - state.tracks_written_at >= TRACKS_EVERY_S:
                    self.store.write_tracks(state.source_id, self.track_rows(state))
                    state.tracks_written_at = now
        self.last_flush = now

    def stop(self) -> None:
        """Flush what has arrived; unfinished file sources are marked failed (never shown as done)."""
        for stream, state in list(self.streams.items()):
            if state.start.kind == "camera":
                self._flush(state)
                self.store.write_tracks(state.source_id, self.track_rows(state))
                self.store.update_source(state.source_id, status="stopped")
            else:
                self.store.fail_source(state.source_id, "stopped before the end of the input")
            del self.streams[stream]

    def _report(self, event: str, stream: str, **detail) -> None:
        if self.io:
            self.io.report(event, stream, **detail)


def run(config: AggregatorConfig, stop: threading.Event | None = None) -> int:
    stop = stop or threading.Event()
    store = Store(config.store or default_store_url())
    io = StageIO("aggregator", config.connect, "", config.status)
    aggregator = Aggregator(config, store, io)
    try:
        io.report("ready", store=store.url)
        while not stop.is_set():
            message = io.receive(100)
            if message is not None:
                aggregator.accept(message)
            aggregator.tick()
        return 0
    finally:
        aggregator.stop()
        io.report("stopped", **io.counters.as_dict())
        io.close()
        store.close()
