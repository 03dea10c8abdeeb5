"""Aggregator stage entry: Classified in (any order, any worker), store rows out.

Each stream is re-ordered by sequence number, so tracks see frames in source order no
matter how many detector and classifier workers raced. Rows are written in small
transactions (the dashboard sees a source grow); a stream's End finalises its tracks and
marks the source done, or deletes its partial rows if ingest reported an error.

Camera streams are live: a missing sequence number (a frame dropped as stale anywhere
upstream) is waited for only `reorder_window_s`, then counted as dropped and skipped; rows
are written as they come; the camera's status changes (sent in the stream by ingest) become
store events; alert rules are checked on every smoothed track; retention prunes old rows.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np
import zmq

from aggregator.alerts import AlertEvaluator, WebhookSender, rules_from_json
from aggregator.timeline import TrackTimeline
from aggregator.tracker import FaceTracker
from core.config import AggregatorConfig, default_store_url
from core.messages import Classified, End, Message, Start, Status, StatusEvent, Tracked, encode
from core.runtime import StageIO
from core.store import FaceRow, Store, TrackRow

logger = logging.getLogger(__name__)

FLUSH_EVERY_S = 0.25
TRACKS_EVERY_S = 1.0  # live track summaries (segments are recomputed from the whole track)
MAX_REORDER = 20_000  # messages held waiting for a gap; beyond it the gap is given up as lost
MAX_EARLY = 2_000  # messages held per stream waiting for its Start
RETENTION_EVERY_S = 60.0
LATENCY_SAMPLES = 5_000  # capture -> stored latencies kept per camera for percentiles


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
    live: bool = False
    origin: float = 0.0  # camera rows: time_s = capture time - origin (continuous across runs)
    gap_since: float = 0.0  # live: when the oldest missing seq began to be waited for
    frames_dropped: int = 0
    latencies: deque = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))

    @property
    def name(self) -> str:
        return self.start.name or self.start.uri


class Aggregator:
    """The stage's logic, separate from its sockets so tests can drive it directly."""

    def __init__(self, config: AggregatorConfig, store: Store, io: StageIO | None = None) -> None:
        self.config = config
        self.store = store
        self.io = io
        self.streams: dict[str, StreamState] = {}
        self.early: dict[str, dict[int, Message]] = {}  # messages that beat their stream's Start
        self.early_status: dict[str, list[Status]] = {}
        self.last_flush = time.monotonic()
        self.alerts = AlertEvaluator(rules_from_json(config.alert_rules))
        self.webhooks = WebhookSender() if any(r.webhook for r in self.alerts.rules) else None
        self.alerts_fired = 0
        self.retention_at = 0.0
        self.results: zmq.Socket | None = None
        if config.results_bind and io is not None:
            self.results = io.context.socket(zmq.PUB)
            self.results.setsockopt(zmq.SNDHWM, 10)
            self.results.setsockopt(zmq.LINGER, 0)
            self.results.bind(config.results_bind)

    # --- ordering -----------------------------------------------------------------------
    def accept(self, message: Message) -> None:
        if isinstance(message, Status):
            self._camera_status(message)
            return
        if isinstance(message, Start):
            self._open(message)
            for seq, waiting in sorted(self.early.pop(message.stream, {}).items()):
                self.accept(waiting)
            return
        state = self.streams.get(message.stream)
        if state is None:
            early = self.early.setdefault(message.stream, {})
            early[message.seq] = message
            if len(early) > MAX_EARLY:  # a Start that never comes (e.g. sent to a dead aggregator)
                self._drop("no-start", early.pop(min(early)))
            return
        if message.seq < state.next_seq or message.seq in state.waiting:
            self._drop("late" if state.live else "duplicate", message)
            return
        state.waiting[message.seq] = message
        if state.live and state.next_seq not in state.waiting and not state.gap_since:
            state.gap_since = time.monotonic()
        if len(state.waiting) > MAX_REORDER:
            lost = min(state.waiting) - state.next_seq
            logger.error("%s: %d messages never arrived; continuing after the gap", message.stream, lost)
            state.next_seq = min(state.waiting)
        self._release(state)

    def _release(self, state: StreamState) -> None:
        while state.next_seq in state.waiting:
            self._process(state, state.waiting.pop(state.next_seq))
            state.next_seq += 1
            state.gap_since = 0.0
            if state.start.stream not in self.streams:
                return
        if state.live and state.waiting and not state.gap_since:
            state.gap_since = time.monotonic()

    def _skip_gaps(self, now: float) -> None:
        """Live streams: give up on frames missing for longer than the reorder window."""
        for state in list(self.streams.values()):
            if state.live and state.waiting and state.gap_since and \
                    now - state.gap_since >= self.config.reorder_window_s:
                first = min(state.waiting)
                state.frames_dropped += first - state.next_seq
                state.next_seq = first
                state.gap_since = 0.0
                self._release(state)

    def _drop(self, reason: str, message: Message) -> None:
        if self.io:
            self.io.counters.drop(reason)
        logger.warning("dropped %s message %s/%d (%s)", type(message).__name__, message.stream, message.seq, reason)

    # --- per message --------------------------------------------------------------------
    def _open(self, start: Start) -> None:
        tracker = FaceTracker(self.config.track_max_gap_s, self.config.track_min_iou)
        if start.kind == "camera":
            for stream, earlier in list(self.streams.items()):  # the same camera's previous ingest run
                if earlier.live and earlier.start.uri == start.uri:
                    self._flush(earlier)
                    self.store.write_tracks(earlier.source_id, self.track_rows(earlier))
                    del self.streams[stream]
            source_id = self.store.open_camera(start.uri, start.name or start.uri, source_fps=start.source_fps,
                                               model=self.config.model_name, options=start.options)
            row = self.store.source(source_id) or {}
            state = StreamState(start, source_id, tracker, live=True, origin=float(row.get("created_at") or 0.0),
                                frames_analysed=int(row.get("frames_analysed") or 0),
                                frames_with_faces=int(row.get("frames_with_faces") or 0),
                                faces=int(row.get("faces") or 0), frames_dropped=int(row.get("frames_dropped") or 0))
            state.flushed_frames = state.frames_analysed
            # Track IDs continue after the camera's earlier runs, so they stay unique per source.
            tracks = self.store.tracks(source_id)
            tracker.next_id = int(tracks["track_id"].max()) + 1 if len(tracks) else tracker.next_id
        else:
            source_id = self.store.create_source(
                start.kind, start.uri, start.name or start.uri, "analysing",
                source_fps=start.source_fps, width=start.width, height=start.height,
                expected_frames=start.expected_frames, model=self.config.model_name, options=start.options,
            )
            state = StreamState(start, source_id, tracker)
        self.streams[start.stream] = state
        self._report(StatusEvent.SOURCE_OPENED, start.stream, source_id=source_id)
        for status in self.early_status.pop(start.stream, []):
            self._camera_status(status)

    def _camera_status(self, status: Status) -> None:
        state = self.streams.get(status.stream)
        if state is None:
            self.early_status.setdefault(status.stream, []).append(status)
            return
        detail = dict(status.detail)
        new_status = str(detail.pop("status", ""))
        if new_status not in ("live", "disconnected", "connecting"):
            self._drop("unexpected", status)
            return
        fields = {k: detail[k] for k in ("width", "height") if isinstance(detail.get(k), int)}
        if fields:
            self.store.update_source(state.source_id, **fields)
        self.store.set_camera_status(state.source_id, new_status, str(detail.pop("message", new_status)),
                                     detail, at=status.capture_time)

    def _process(self, state: StreamState, message: Message) -> None:
        if isinstance(message, Classified):
            self._add_frame(state, message)
        elif isinstance(message, End):
            self._close(state, message)
        else:
            self._drop("unexpected", message)

    def _add_frame(self, state: StreamState, frame: Classified) -> None:
        state.frames_analysed += 1
        time_s = frame.capture_time - state.origin if state.live else frame.source_time
        state.last_time_s = max(state.last_time_s, time_s)
        n = len(frame.boxes)
        if n == 0:
            self._publish(frame, [])
            return
        state.frames_with_faces += 1
        state.faces += n
        if state.start.kind == "image":  # each face in an image is its own track
            ids = list(range(state.tracker.next_id, state.tracker.next_id + n))
            state.tracker.next_id += n
        else:
            ids = state.tracker.update(time_s, frame.boxes)
        for i, track_id in enumerate(ids):
            timeline = state.timelines.get(track_id)
            if timeline is None:
                timeline = state.timelines[track_id] = TrackTimeline(track_id, self.config.smoothing_s)
            smoothed = timeline.add(time_s, frame.probs[i])
            if self.config.thumbnails:
                timeline.keep_thumbnail(float(frame.scores[i]), frame.crops[i])
            if state.live and self.alerts.rules:
                for firing in self.alerts.update(state.source_id, state.name, track_id, time_s, smoothed,
                                                 frame.capture_time):
                    self._fire(firing)
            state.rows.append(FaceRow(
                frame=frame.frame_index, time_s=time_s, captured_at=frame.capture_time,
                track_id=track_id, box=tuple(float(v) for v in frame.boxes[i]), score=float(frame.scores[i]),
                probs=frame.probs[i].tolist(), smoothed=smoothed.tolist(),
            ))

        self._publish(frame, ids)

    def _publish(self, frame: Classified, track_ids: list[int]) -> None:
        """Live results for `monitor --preview` (PUB: nobody listening costs nothing)."""
        if self.results is None:
            return
        tracked = Tracked(stream=frame.stream, seq=frame.seq, source_time=frame.source_time,
                          capture_time=frame.capture_time, frame_index=frame.frame_index, boxes=frame.boxes,
                          scores=frame.scores, crops=frame.crops, probs=frame.probs,
                          track_ids=np.asarray(track_ids, np.int64))
        try:
            self.results.send_multipart(encode(tracked), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass

    def _fire(self, firing) -> None:
        self.alerts_fired += 1
        rule = firing.rule
        message = (f"{firing.camera}: track {firing.track_id} {rule.emotion} >= {rule.min_prob:g} "
                   f"for {rule.min_duration_s:g} s ({rule.name})")
        self.store.add_event(firing.source_id, "alert", message, firing.payload(), at=firing.at)
        logger.warning("alert %s", message)
        if rule.webhook and self.webhooks is not None:
            self.webhooks.send(rule.webhook, firing.payload())

    def _progress(self, state: StreamState) -> dict[str, int | float]:
        duration = state.last_time_s + (1.0 / state.start.source_fps if state.start.source_fps else 0.0)
        progress = {"frames_analysed": state.frames_analysed, "frames_with_faces": state.frames_with_faces,
                    "faces": state.faces, "duration_s": duration}
        if state.live:
            progress["frames_dropped"] = state.frames_dropped
        return progress

    def latency_stats(self, state: StreamState) -> dict[str, float]:
        if not state.latencies:
            return {}
        values = np.asarray(state.latencies)
        return {"latency_p50_ms": round(float(np.percentile(values, 50)) * 1000, 1),
                "latency_p95_ms": round(float(np.percentile(values, 95)) * 1000, 1)}

    def _flush(self, state: StreamState) -> None:
        self.store.add_faces(state.source_id, state.rows, self._progress(state))
        if self.io:
            self.io.metrics.observe_stored((row.captured_at for row in state.rows), time.time())
        if state.live:
            stored = time.time()
            state.latencies.extend(stored - row.captured_at for row in state.rows)
        state.rows = []
        state.flushed_frames = state.frames_analysed
        self._report(StatusEvent.PROGRESS, state.start.stream, source_id=state.source_id,
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
        if state.live:  # a camera's End: the monitor stopped it; its status event came before
            self._flush(state)
            self.store.write_tracks(state.source_id, self.track_rows(state))
            self._report(StatusEvent.CAMERA_STOPPED, stream, source_id=state.source_id, camera=state.name,
                         frames_analysed=state.frames_analysed, frames_dropped=state.frames_dropped,
                         **self.latency_stats(state))
            return
        if end.error:
            self.store.fail_source(state.source_id, end.error)
            self._report(StatusEvent.FAILED, stream, source_id=state.source_id, error=end.error)
            return
        self._flush(state)
        self.store.write_tracks(state.source_id, self.track_rows(state))
        self.store.finish_source(state.source_id, **self._progress(state))
        logger.info("%s done: %d frames, %d with faces, %d tracks", state.start.uri, state.frames_analysed,
                    state.frames_with_faces, len(state.timelines))
        self._report(StatusEvent.DONE, stream, source_id=state.source_id, frames_analysed=state.frames_analysed)

    def tick(self) -> None:
        """Periodic work: flush new rows so readers see progress; refresh track summaries less often."""
        now = time.monotonic()
        self._skip_gaps(now)
        for state in self.streams.values():  # live rows are stored at once: latency is the point
            if state.live and state.rows:
                self._flush(state)
        if self.config.retention_days > 0 and now - self.retention_at >= RETENTION_EVERY_S:
            self.retention_at = now
            deleted = self.store.delete_before(time.time() - self.config.retention_days * 86400)
            if any(deleted.values()):
                logger.info("retention (%g days): deleted %s", self.config.retention_days, deleted)
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
            if state.live:
                self._skip_gaps(float("inf"))
                self._flush(state)
                self.store.write_tracks(state.source_id, self.track_rows(state))
                if self.store.source(state.source_id).get("status") != "disconnected":
                    self.store.set_camera_status(state.source_id, "disconnected", "monitor stopped")
                self._report(StatusEvent.CAMERA_STOPPED, stream, source_id=state.source_id, camera=state.name,
                             frames_analysed=state.frames_analysed, frames_dropped=state.frames_dropped,
                             **self.latency_stats(state))
            else:
                self.store.fail_source(state.source_id, "stopped before the end of the input")
            self.streams.pop(stream, None)
        if self.webhooks is not None:
            self.webhooks.drain(2.0)
        if self.results is not None:
            self.results.close()

    def _report(self, event: str, stream: str, **detail) -> None:
        if self.io:
            self.io.report(event, stream, **detail)


def run(config: AggregatorConfig, stop: threading.Event | None = None) -> int:
    stop = stop or threading.Event()
    store = Store(config.store or default_store_url())
    io = StageIO.from_config("aggregator", config, outputs=False)
    aggregator = Aggregator(config, store, io)
    try:
        io.report(StatusEvent.READY, store=store.url)
        while not stop.is_set():
            message = io.receive(100)
            if message is not None:
                aggregator.accept(message)
            aggregator.tick()
            io.metrics.queue_depth.set(sum(len(s.waiting) for s in aggregator.streams.values())
                                       + sum(map(len, aggregator.early.values())))
        # Stopping: rows already classified and queued here still count as analysed; take them.
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline and (message := io.receive(20)) is not None:
            aggregator.accept(message)
        return 0
    finally:
        aggregator.stop()
        io.report(StatusEvent.STOPPED, **io.counters.as_dict())
        io.close()
        store.close()
