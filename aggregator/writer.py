"""The aggregator's store writes: each source's rows in small batches, its track summaries and its
end; camera status changes, alert events and retention.

Rows are written in small transactions so the dashboard sees a source grow: a live source's
rows at once (latency is the point), a file's at most every FLUSH_EVERY_S. Track summaries are
written only after the rows they summarise (`SourceWriter.flush(tracks)`), so a reader never
sees a track whose rows are missing; a short track (tracks.py) has rows but no summary. The
source row's options record the stream's `min_track_frames`, so the dashboard applies the same
minimum to rows whose summary is not written yet.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

import numpy as np

from aggregator.alerts import Firing
from aggregator.tracks import StreamTracks, min_track_frames
from core.config import AggregatorConfig
from core.messages import Classified, Start, Status, StatusEvent
from core.runtime import StageIO
from core.store import FaceRow, Store

logger = logging.getLogger(__name__)

FLUSH_EVERY_S = 0.25
TRACKS_EVERY_S = 1.0  # live track summaries (segments are recomputed from the whole track)
RETENTION_EVERY_S = 60.0
LATENCY_SAMPLES = 5_000  # capture -> stored latencies kept per camera for percentiles
CAMERA_STATUSES = ("live", "disconnected", "connecting")
SOURCE_COUNTERS = ("frames_analysed", "frames_with_faces", "faces", "frames_dropped")


class SourceWriter:
    """One stream's source row and the face rows on their way to it, with the counters it shows.

    A camera's row is reused across its ingest runs (`row` is what it holds): its counters and
    its timeline continue from there. So is a file's row when its run carries on (a restarted
    aggregator, `analyse --resume`)."""

    def __init__(self, store: Store, start: Start, source_id: int, io: StageIO | None = None,
                 row: dict[str, Any] | None = None) -> None:
        row = row or {}
        self.store = store
        self.start = start
        self.source_id = source_id
        self.io = io
        self.live = start.kind == "camera"
        self.origin = float(row.get("created_at") or 0.0)  # camera rows: time_s = capture time - origin
        self.frames_analysed, self.frames_with_faces, self.faces, self.frames_dropped = (
            int(row.get(name) or 0) for name in SOURCE_COUNTERS)
        self.last_time_s = 0.0
        self.stored_duration_s = float(row.get("duration_s") or 0.0)  # a continued file's, so far
        self.status = str(row.get("status") or "")  # a continued source's status when it was opened
        self.rows: list[FaceRow] = []
        self.flushed_frames = self.frames_analysed
        self.tracks_written_at = 0.0
        self.latencies: deque[float] = deque(maxlen=LATENCY_SAMPLES)

    def time_of(self, frame: Classified) -> float:
        """The frame's time on the source's timeline: a file's source time; a camera's capture
        time since the camera was first seen, continuous across its runs."""
        return frame.capture_time - self.origin if self.live else frame.source_time

    def add(self, time_s: float, rows: list[FaceRow]) -> None:
        """One analysed frame and its face rows (none for a frame without faces), stored at the next flush."""
        self.frames_analysed += 1
        self.last_time_s = max(self.last_time_s, time_s)
        if rows:
            self.frames_with_faces += 1
            self.faces += len(rows)
            self.rows.extend(rows)

    def progress(self) -> dict[str, int | float]:
        """The source row's counters; the duration includes the last frame's own length."""
        duration = self.last_time_s + (1.0 / self.start.source_fps if self.start.source_fps else 0.0)
        duration = max(duration, self.stored_duration_s)
        progress = {"frames_analysed": self.frames_analysed, "frames_with_faces": self.frames_with_faces,
                    "faces": self.faces, "duration_s": duration}
        if self.live:
            progress["frames_dropped"] = self.frames_dropped
        return progress

    def flush(self, tracks: StreamTracks | None = None, complete: bool = False) -> None:
        """Store the rows so far with the counters; given `tracks`, then their summaries too
        (`complete`: they are all of the source's, see Store.write_tracks).
        A file's frames are then acknowledged to ingest, which may forget them."""
        self.store.add_faces(self.source_id, self.rows, self.progress(),
                             after_frames=None if self.live else self.flushed_frames)
        stored = time.time()
        if self.io:
            self.io.metrics.observe_stored((row.captured_at for row in self.rows), stored)
        if self.live:
            self.latencies.extend(stored - row.captured_at for row in self.rows)
        self.rows = []
        self.flushed_frames = self.frames_analysed
        if self.io:
            self.io.report(StatusEvent.PROGRESS, self.start.stream, source_id=self.source_id,
                           frames_analysed=self.frames_analysed)
            if not self.live:
                self.io.ack(self.start.stream, self.frames_analysed)
        if tracks is not None:
            self.store.write_tracks(self.source_id, tracks.track_rows(), complete=complete)

    def flush_batch(self, tracks: StreamTracks, now: float) -> None:
        """A batch is due: store frames analysed since the last flush, and the track summaries
        when they are more than TRACKS_EVERY_S old."""
        if self.frames_analysed == self.flushed_frames:
            return
        tracks_due = bool(tracks.timelines) and now - self.tracks_written_at >= TRACKS_EVERY_S
        self.flush(tracks if tracks_due else None)
        if tracks_due:
            self.tracks_written_at = now

    def finish(self, tracks: StreamTracks) -> None:
        """A file's End: everything stored, then the source marked done (replacing earlier results)."""
        self.flush(tracks, complete=True)
        self.store.finish_source(self.source_id, **self.progress())

    def interrupt(self) -> None:
        """A file stopped before its end: what arrived is stored and kept for `--resume`."""
        self.flush()
        self.store.interrupt_source(self.source_id)

    def fail(self, error: str) -> None:
        """A file that ended with an error, or never ended: its partial rows are deleted."""
        self.store.fail_source(self.source_id, error)

    def set_camera_status(self, status: Status) -> bool:
        """A camera's status change (sent in the stream by ingest) as the source's status and an
        event; False for a status this stage does not know (nothing is written)."""
        detail = dict(status.detail)
        new_status = str(detail.pop("status", ""))
        if new_status not in CAMERA_STATUSES:
            return False
        size = {key: detail[key] for key in ("width", "height") if isinstance(detail.get(key), int)}
        if size:
            self.store.update_source(self.source_id, **size)
        self.store.set_camera_status(self.source_id, new_status, str(detail.pop("message", new_status)), detail,
                                     at=status.capture_time)
        return True

    def disconnect(self, message: str) -> None:
        """Mark the camera disconnected, unless its ingest already did."""
        if self.store.source(self.source_id).get("status") != "disconnected":
            self.store.set_camera_status(self.source_id, "disconnected", message)

    def next_track_id(self) -> int:
        """The first track ID the source has not used (by a summary or, for a short track, by
        face rows only): a camera's tracks continue after its earlier runs', so IDs stay unique
        per source."""
        return self.store.last_track_id(self.source_id) + 1

    def latency_stats(self) -> dict[str, float]:
        """Capture-to-stored latency percentiles of the camera's recent rows (empty before any)."""
        if not self.latencies:
            return {}
        values = np.asarray(self.latencies)
        return {"latency_p50_ms": round(float(np.percentile(values, 50)) * 1000, 1),
                "latency_p95_ms": round(float(np.percentile(values, 95)) * 1000, 1)}


class Writer:
    """Opens sources, and does the writes that are not one source's: periodic flushes, alert
    events and retention."""

    def __init__(self, store: Store, config: AggregatorConfig, io: StageIO | None = None) -> None:
        self.store = store
        self.config = config
        self.io = io
        self.last_flush = time.monotonic()
        self.retention_at = 0.0

    def open(self, start: Start) -> SourceWriter:
        """A new source row for a file, or the one its run made before (a restarted aggregator,
        `--resume`: it carries on); for a camera its existing one (status `connecting`). The
        stored options are the Start's plus the stream's `min_track_frames`."""
        options = {**start.options, "min_track_frames": min_track_frames(self.config, start)}
        if start.kind != "camera":
            run = str(start.options.get("run") or "")
            row = self.store.run_source(start.uri, run) if run else None
            if row is not None and row["status"] in ("analysing", "interrupted", "done"):
                if row["status"] == "interrupted":
                    self.store.update_source(int(row["id"]), status="analysing")
                if row["status"] != "done":  # carried on: this run's minimum now applies
                    self.store.update_source(int(row["id"]), options=options)
                return SourceWriter(self.store, start, int(row["id"]), self.io, row)
            source_id = self.store.create_source(
                start.kind, start.uri, start.name or start.uri, "analysing",
                source_fps=start.source_fps, width=start.width, height=start.height,
                expected_frames=start.expected_frames, model=self.config.model_name, options=options,
            )
            return SourceWriter(self.store, start, source_id, self.io)
        source_id = self.store.open_camera(start.uri, start.name or start.uri, source_fps=start.source_fps,
                                           model=self.config.model_name, options=options)
        return SourceWriter(self.store, start, source_id, self.io, self.store.source(source_id))

    def tick(self, sources: Iterable[tuple[SourceWriter, StreamTracks]], now: float) -> None:
        """Periodic writes: live rows at once, retention, and every FLUSH_EVERY_S each source's
        new frames (so readers see progress)."""
        sources = list(sources)
        for source, _tracks in sources:
            if source.live and source.rows:
                source.flush()
        self._apply_retention(now)
        if now - self.last_flush < FLUSH_EVERY_S:
            return
        for source, tracks in sources:
            source.flush_batch(tracks, now)
        self.last_flush = now

    def add_alert(self, firing: Firing) -> None:
        """An alert on its camera's timeline, and in the log."""
        rule = firing.rule
        message = (f"{firing.camera}: track {firing.track_id} {rule.emotion} >= {rule.min_prob:g} "
                   f"for {rule.min_duration_s:g} s ({rule.name})")
        self.store.add_event(firing.source_id, "alert", message, firing.payload(), at=firing.at)
        logger.warning("alert %s", message)

    def _apply_retention(self, now: float) -> None:
        """Delete camera rows older than `retention_days` (checked once a minute; 0 = keep all)."""
        if self.config.retention_days <= 0 or now - self.retention_at < RETENTION_EVERY_S:
            return
        self.retention_at = now
        deleted = self.store.delete_before(time.time() - self.config.retention_days * 86400)
        if any(deleted.values()):
            logger.info("retention (%g days): deleted %s", self.config.retention_days, deleted)
