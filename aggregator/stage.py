"""Aggregator stage entry: Classified in (any order, any worker), store rows out.

Each stream is re-ordered by sequence number (reorder.py), so tracks see frames in source
order no matter how many detector and classifier workers raced. Its faces get track IDs and
smoothed timelines (tracks.py), and its rows are written in small transactions (writer.py):
the dashboard sees a source grow. A stream's End finalises its tracks and marks the source
done, or deletes its partial rows if ingest reported an error. A track seen in fewer than
`min_track_frames` frames keeps its rows but gets no summary (tracks.py).

File runs deliver at least once: each flush acknowledges the stream's stored frames to ingest
(`Ack`), which sends again what is not stored in time, so duplicates are dropped by (stream,
seq). A Start whose run already made a source carries on with it (a restarted aggregator,
`analyse --resume`): the stored rows are replayed through the same tracker, and the stream
goes on after its last stored frame. An aggregator stopped mid-file marks the source
interrupted and keeps its rows for `--resume`.

Camera streams are live: a missing sequence number (a frame dropped as stale anywhere
upstream) is waited for only `reorder_window_s`, then counted as dropped and skipped; rows
are written as they come; the camera's status changes (sent in the stream by ingest) become
store events; alert rules are checked on every smoothed track (alerts.py); retention prunes
old rows; each frame's tracked faces are published for `monitor --preview` (preview.py).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from aggregator.alerts import AlertEvaluator, WebhookSender
from aggregator.preview import Preview
from aggregator.reorder import Reorder
from aggregator.tracks import StreamTracks
from aggregator.writer import SourceWriter, Writer
from core.config import AggregatorConfig, default_store_url, rules_from_json
from core.messages import Classified, End, Message, Start, Status, StatusEvent
from core.runtime import StageIO
from core.store import FaceRow, Store

logger = logging.getLogger(__name__)


@dataclass
class Stream:
    """One open stream: what it is, its face tracks, and its rows on their way to the store."""

    start: Start
    tracks: StreamTracks
    source: SourceWriter

    @property
    def name(self) -> str:
        return self.start.name or self.start.uri

    @property
    def live(self) -> bool:
        return self.source.live


class Aggregator:
    """Wires the parts: re-ordering, tracks, alerts, store writes and the preview. Separate
    from the stage's sockets, so tests can drive it directly."""

    def __init__(self, config: AggregatorConfig, store: Store, io: StageIO | None = None) -> None:
        self.config = config
        self.io = io
        self.streams: dict[str, Stream] = {}
        self.finished: dict[str, int] = {}  # file streams closed here: their End's seq, acknowledged again on demand
        self.order = Reorder(config.reorder_window_s, self._drop)
        self.early_status: dict[str, list[Status]] = {}  # camera statuses that beat their stream's Start
        self.writer = Writer(store, config, io)
        self.alerts = AlertEvaluator(rules_from_json(config.alert_rules))
        self.webhooks = WebhookSender() if any(r.webhook for r in self.alerts.rules) else None
        self.alerts_fired = 0
        self.preview = Preview(io.context, io.security, config.results_bind) if config.results_bind and io is not None else None

    @property
    def held(self) -> int:
        """Messages waiting to be put in order (the stage's queue depth)."""
        return self.order.held

    def accept(self, message: Message) -> None:
        if isinstance(message, Status):
            self._camera_status(message)
        elif message.stream in self.finished and message.stream not in self.streams:
            self._drop("duplicate", message)  # sent again because its ack was lost: say so again
            self._ack(message.stream, self.finished[message.stream])
        elif isinstance(message, Start):
            self._open(message)
        elif self.config.max_age_s and isinstance(message, Classified) and \
                time.time() - message.capture_time > self.config.max_age_s:
            if self.io:  # live and stale: not stored; the re-ordering counts the gap for its camera
                self.io.counters.drop("stale")
        else:
            self._process(self.order.push(message))

    def tick(self) -> None:
        """Periodic work: skip live gaps waited for long enough, then the writer's flushes and retention."""
        now = time.monotonic()
        self._skip_gaps(now)
        self.writer.tick([(stream.source, stream.tracks) for stream in self.streams.values()], now)

    def stop(self) -> None:
        """Flush what has arrived; unfinished file sources are marked failed (never shown as done)."""
        for key, stream in list(self.streams.items()):
            if stream.live:
                self._skip_gaps(float("inf"))  # frames still missing will not come now
                stream.source.flush(stream.tracks)
                stream.source.disconnect("monitor stopped")
                self._report_camera_stopped(stream)
            else:
                stream.source.interrupt()
            self._forget(key)
        if self.webhooks is not None:
            self.webhooks.drain(2.0)
        if self.preview is not None:
            self.preview.close()

    # --- stream lifecycle -----------------------------------------------------------------
    def _open(self, start: Start) -> None:
        if start.stream in self.streams:  # sent again (a lost or slow ack): where the stream stands
            self._ack(start.stream, self.streams[start.stream].source.flushed_frames)
            return
        if start.kind == "camera":
            for key, earlier in list(self.streams.items()):  # the same camera's previous ingest run
                if earlier.live and earlier.start.uri == start.uri:
                    earlier.source.flush(earlier.tracks)
                    self._forget(key)
        source = self.writer.open(start)
        if source.status == "done" and not source.live:  # stored completely before a restart
            self._close_done(start.stream, source.source_id, source.frames_analysed)
            return
        tracks = StreamTracks(self.config, start, source.next_track_id() if source.live else 1)
        if source.frames_analysed and not source.live:
            self._resume(start, source, tracks)
        self.streams[start.stream] = Stream(start, tracks, source)
        self._report(StatusEvent.SOURCE_OPENED, start.stream, source_id=source.source_id)
        for status in self.early_status.pop(start.stream, []):
            self._camera_status(status)
        if not source.live:
            self._ack(start.stream, source.flushed_frames)
        self._process(self.order.open(start.stream, source.live, 1 if source.live else source.flushed_frames + 1))

    def _resume(self, start: Start, source: SourceWriter, tracks: StreamTracks) -> None:
        """Carry on with a file source this run stored part of: replay its rows through the tracker."""
        mismatched = tracks.replay(self.writer.store.faces(source.source_id),
                                   self.io.beat if self.io else lambda: None)
        if mismatched:
            logger.error("%s: %d stored rows got another track ID on replay", start.uri, mismatched)
        if self.io:
            self.io.counters.resumed += 1
        logger.warning("%s: carrying on after %d stored frames (%d tracks)", start.uri, source.frames_analysed,
                       len(tracks.established()))

    def _close_done(self, key: str, source_id: int, frames: int) -> None:
        """A file stream stored completely: acknowledge its End (seq = frames + 1) and report it done."""
        self.finished[key] = frames + 1
        self._report(StatusEvent.DONE, key, source_id=source_id, frames_analysed=frames)
        self._ack(key, frames + 1)

    def _close(self, stream: Stream, end: End) -> None:
        key = stream.start.stream
        self._forget(key)
        source = stream.source
        if stream.live:  # a camera's End: the monitor stopped it; its status event came before
            source.flush(stream.tracks)
            self._report_camera_stopped(stream)
        elif end.error:
            source.fail(end.error)
            self.finished[key] = end.seq
            self._ack(key, end.seq)
            self._report(StatusEvent.FAILED, key, source_id=source.source_id, error=end.error)
        else:
            source.finish(stream.tracks)
            logger.info("%s done: %d frames, %d with faces, %d tracks", stream.start.uri, source.frames_analysed,
                        source.frames_with_faces, len(stream.tracks.established()))
            self._close_done(key, source.source_id, source.frames_analysed)

    def _forget(self, key: str) -> None:
        self.streams.pop(key, None)
        self.order.close(key)

    def _report_camera_stopped(self, stream: Stream) -> None:
        source = stream.source
        self._report(StatusEvent.CAMERA_STOPPED, stream.start.stream, source_id=source.source_id,
                     camera=stream.name, frames_analysed=source.frames_analysed,
                     frames_dropped=source.frames_dropped, **source.latency_stats())

    def _camera_status(self, status: Status) -> None:
        stream = self.streams.get(status.stream)
        if stream is None:
            self.early_status.setdefault(status.stream, []).append(status)
        elif not stream.source.set_camera_status(status):
            self._drop("unexpected", status)

    # --- messages in order ----------------------------------------------------------------
    def _skip_gaps(self, now: float) -> None:
        for skipped in self.order.skip_gaps(now):
            self.streams[skipped.stream].source.frames_dropped += skipped.frames
            self._process(skipped.released)

    def _process(self, messages: list[Message]) -> None:
        for message in messages:
            stream = self.streams[message.stream]
            if isinstance(message, Classified):
                self._add_frame(stream, message)
            elif isinstance(message, End):
                self._close(stream, message)
            else:
                self._drop("unexpected", message)

    def _add_frame(self, stream: Stream, frame: Classified) -> None:
        time_s = stream.source.time_of(frame)
        rows = stream.tracks.add(time_s, frame)
        stream.source.add(time_s, rows)
        if stream.live and self.alerts.rules:
            self._check_alerts(stream, rows)
        if self.preview is not None:
            self.preview.publish(frame, [row.track_id for row in rows])

    def _check_alerts(self, stream: Stream, rows: list[FaceRow]) -> None:
        for row in rows:
            for firing in self.alerts.update(stream.source.source_id, stream.name, row.track_id, row.time_s,
                                             row.smoothed, row.captured_at):
                self.alerts_fired += 1
                self.writer.add_alert(firing)
                if firing.rule.webhook and self.webhooks is not None:
                    self.webhooks.send(firing.rule.webhook, firing.payload())

    def _drop(self, reason: str, message: Message) -> None:
        if self.io:
            self.io.counters.drop(reason)
        logger.warning("dropped %s message %s/%d (%s)", type(message).__name__, message.stream, message.seq, reason)

    def _ack(self, stream: str, seq: int) -> None:
        if self.io:
            self.io.ack(stream, seq)

    def _report(self, event: StatusEvent, stream: str, **detail: Any) -> None:
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
            io.metrics.queue_depth.set(aggregator.held)
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
