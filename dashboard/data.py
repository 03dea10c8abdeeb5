"""The dashboard's only door to the results: every read and write goes through `core.store.Store`.

Pages never open the database. They call `current()` for the `DashboardData` of the running app
and ask it for ready-to-draw values (summaries, downsampled series, CSV text). Keeping the
queries here means the next schema change touches one dashboard module, and the Store stays the
single owner of SQL.

Threads: the Flask server answers callbacks on several threads and a `Store` must not be shared
across threads, so every call opens its own short-lived `Store` (an SQLite connect is ~0.1 ms).

Speed: a one-hour source has ~180,000 face rows, and reading them through `Store.faces` costs
about a second. The face table of recently viewed sources is therefore cached in memory and
refreshed *incrementally*: live sources only append rows, so a refresh asks the Store for rows
after the last cached time and appends them. The cache key is the source row's counters
(`status`, `updated_at`, `faces`, `frames_analysed`), which the aggregator updates in the same
transaction as the rows it adds.

Short tracks: the aggregator writes no summary for a track of fewer than `min_track_frames`
frames (aggregator/tracks.py) and records that minimum in the source's options. The pages apply
the same rule to the face rows: a track with fewer rows is neither drawn nor listed, so a live
track appears once it reaches the minimum (sources stored before the minimum existed: 1).
"""

from __future__ import annotations

import io
import json
import math
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import pandas as pd

from core.emotions import EMOTIONS
from core.store import Store
from dashboard.downsample import DEFAULT_GAP_S, MAX_POINTS_PER_TRACE, Series, downsample

EXTENSION_KEY = "emojimation_dashboard_data"
MAX_TRACKS_SHOWN = 12  # the timeline draws this many tracks (the longest); the rest are listed
MAX_CACHED_ROWS = 3_000_000  # about 270 MB of compacted face rows (90 bytes a row)
LIVE_REFETCH_MARGIN_S = 5.0  # refetch this far back so rows written slightly out of order still arrive
VALUE_PREFIXES = {"smoothed": "s_", "frame": "p_"}
FINISHED_STATUSES = ("done", "failed", "stopped")
CACHED_COLUMNS = ["id", "frame", "time_s", "track_id", *(f"p_{e}" for e in EMOTIONS), *(f"s_{e}" for e in EMOTIONS)]


def current() -> "DashboardData":
    """The `DashboardData` of the app serving this request (set by `dashboard.app.create_app`)."""
    import flask

    return flask.current_app.extensions[EXTENSION_KEY]


@dataclass(frozen=True)
class SourceSummary:
    """One row of the sources page."""

    id: int
    name: str
    uri: str
    kind: str
    status: str
    error: str | None
    duration_s: float
    frames_analysed: int
    expected_frames: int
    faces: int
    tracks: int | None  # None while unknown (analysis still running)
    emotion_mix: dict[str, float]  # empty while unknown
    created_at: float


@dataclass(frozen=True)
class TrackSummary:
    """What the timeline and track pages show about one face track."""

    track_id: int
    start_s: float
    end_s: float
    frames: int
    dominant: str
    means: dict[str, float]
    segments: list[tuple[str, float, float]]
    thumbnail: bytes | None
    provisional: bool  # True while computed from live rows (the aggregator writes the final one at the end)


@dataclass(frozen=True)
class TrackSeries:
    """One track's downsampled probabilities, ready for a figure."""

    track_id: int
    series: Series  # values columns follow EMOTIONS
    rows: int


@dataclass(frozen=True)
class Timeline:
    source: dict[str, Any]
    values: str  # "smoothed" or "frame"
    tracks: list[TrackSeries]
    total_tracks: int
    time_range: tuple[float, float] | None  # first and last face time, None without faces
    window: tuple[float, float] | None


@dataclass
class _CachedFaces:
    token: str
    status: str
    frame: pd.DataFrame
    max_id: int
    max_time: float


@dataclass
class _FacesCache:
    """LRU of face tables per source, bounded by rows, guarded by a lock (callbacks run on several threads)."""

    max_rows: int = MAX_CACHED_ROWS
    entries: "OrderedDict[int, _CachedFaces]" = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, source_id: int) -> _CachedFaces | None:
        with self.lock:
            entry = self.entries.get(source_id)
            if entry is not None:
                self.entries.move_to_end(source_id)
            return entry

    def put(self, source_id: int, entry: _CachedFaces) -> None:
        with self.lock:
            self.entries[source_id] = entry
            self.entries.move_to_end(source_id)
            while len(self.entries) > 1 and sum(len(e.frame) for e in self.entries.values()) > self.max_rows:
                self.entries.popitem(last=False)

    def drop(self, source_id: int) -> None:
        with self.lock:
            self.entries.pop(source_id, None)


def _record(row: Mapping[str, Any]) -> dict[str, Any]:
    """A store row as a dict with SQL NULLs as None: pandas turns NULL into NaN in numeric columns
    that hold other values (a camera's unknown expected_frames), and `NaN or 0` is NaN."""
    return {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in row.items()}


def source_token(source: Mapping[str, Any]) -> str:
    """Changes whenever the aggregator writes to the source (rows, counters or status)."""
    return (f"{source['status']}|{source['updated_at']!r}|{source['faces']}|"
            f"{source['frames_analysed']}|{source['expected_frames']}")


def min_track_frames(source: Mapping[str, Any]) -> int:
    """The fewest rows a track of `source` needs to be shown: the minimum its aggregator recorded
    in the source's options, 1 for sources stored before there was one."""
    try:
        options = json.loads(source.get("options") or "{}")
        return max(1, int(options.get("min_track_frames", 1))) if isinstance(options, dict) else 1
    except (TypeError, ValueError):
        return 1


def display_name(source: Mapping[str, Any]) -> str:
    """The file name for files (the store keeps the path as given), the name for cameras."""
    name = str(source.get("name") or source.get("uri") or f"source {source.get('id')}")
    return name if source.get("kind") == "camera" or "://" in name else Path(name).name or name


class DashboardData:
    """Reads and writes the results store for the dashboard pages; one per app."""

    def __init__(self, store_url: str, max_points: int = MAX_POINTS_PER_TRACE,
                 max_tracks: int = MAX_TRACKS_SHOWN) -> None:
        # Opening once with migrate=True validates the URL, creates an empty store if needed and
        # upgrades an old schema; every later open skips the migration's write transaction.
        Store(store_url).close()
        self.store_url = store_url
        self.max_points = max_points
        self.max_tracks = max_tracks
        self._faces = _FacesCache()

    @contextmanager
    def _store(self) -> Iterator[Store]:
        store = Store(self.store_url, migrate=False)
        try:
            yield store
        finally:
            store.close()

    # --- sources ------------------------------------------------------------------------
    def source(self, source_id: int) -> dict[str, Any] | None:
        with self._store() as store:
            row = store.source(source_id)
        return None if row is None else _record(row)

    def source_for_uri(self, uri: str) -> dict[str, Any] | None:
        """The newest source analysed from `uri` (used to follow an upload's progress)."""
        with self._store() as store:
            sources = store.sources()
        match = sources[sources["uri"] == uri]
        return None if match.empty else _record(match.sort_values("id").iloc[-1].to_dict())

    def sources_token(self) -> str:
        """Changes when any source is added, removed or updated."""
        with self._store() as store:
            sources = store.sources()
        return ";".join(f"{row.id}:{row.status}:{row.updated_at!r}" for row in sources.itertuples())

    def source_summaries(self) -> list[SourceSummary]:
        """Every source, newest first, with its track count and emotion mix once known."""
        with self._store() as store:
            sources = store.sources()
            tracks = {int(sid): store.tracks(int(sid)) for sid in sources["id"]}
        summaries = []
        for row in map(_record, sources.to_dict("records")):
            table = tracks[int(row["id"])]
            count: int | None = len(table) if not table.empty else None
            if count is None and row["status"] in FINISHED_STATUSES:
                count = 0
            summaries.append(SourceSummary(
                id=int(row["id"]), name=display_name(row), uri=str(row["uri"]), kind=str(row["kind"]),
                status=str(row["status"]), error=row.get("error"), duration_s=float(row["duration_s"] or 0.0),
                frames_analysed=int(row["frames_analysed"] or 0), expected_frames=int(row["expected_frames"] or 0),
                faces=int(row["faces"] or 0), tracks=count, emotion_mix=_emotion_mix(table),
                created_at=float(row["created_at"]),
            ))
        return summaries

    def delete_source(self, source_id: int) -> None:
        with self._store() as store:
            store.delete_source(source_id)
        self._faces.drop(source_id)

    # --- faces, timelines and tracks ----------------------------------------------------
    def faces(self, source: Mapping[str, Any]) -> pd.DataFrame:
        """All face rows of `source` (a row from `source()`), from the cache when still valid.

        Only CACHED_COLUMNS are kept (the export reads full rows from the store itself).
        """
        source_id, token = int(source["id"]), source_token(source)
        entry = self._faces.get(source_id)
        if entry is not None and entry.token == token:
            return entry.frame
        with self._store() as store:
            if entry is not None and entry.status == source["status"] and int(source["faces"] or 0) >= len(entry.frame):
                recent = _compact(store.faces(source_id, start_s=entry.max_time - LIVE_REFETCH_MARGIN_S,
                                              columns=CACHED_COLUMNS))
                recent = recent[recent["id"] > entry.max_id]
                frame = pd.concat([entry.frame, recent], ignore_index=True) if not recent.empty else entry.frame
            else:
                frame = _compact(store.faces(source_id, columns=CACHED_COLUMNS))
        self._faces.put(source_id, _CachedFaces(
            token=token, status=str(source["status"]), frame=frame,
            max_id=int(frame["id"].max()) if not frame.empty else -1,
            max_time=float(frame["time_s"].max()) if not frame.empty else 0.0,
        ))
        return frame

    def timeline(self, source_id: int, window: tuple[float, float] | None = None, values: str = "smoothed",
                 track_id: int | None = None) -> Timeline | None:
        """Downsampled per-track series of a source (or of one track), None if the source is gone.
        Short tracks (fewer rows than the source's `min_track_frames`) are left out."""
        source = self.source(source_id)
        if source is None:
            return None
        prefix = VALUE_PREFIXES.get(values, "s_")
        faces = self.faces(source)
        if track_id is not None:
            faces = faces[faces["track_id"] == track_id]
        sizes = faces.groupby("track_id").size()
        long_enough = sizes >= min_track_frames(source)
        if not long_enough.all():
            sizes = sizes[long_enough]
            faces = faces[faces["track_id"].isin(sizes.index)]
        if faces.empty:
            return Timeline(source, values, [], 0, None, window)
        shown = sorted(sizes.sort_values(ascending=False, kind="stable").index[: self.max_tracks])
        columns = [prefix + emotion for emotion in EMOTIONS]
        series = []
        for track, rows in faces[faces["track_id"].isin(shown)].groupby("track_id", sort=True):
            reduced = downsample(rows["time_s"].to_numpy(), rows[columns].to_numpy(np.float32),
                                 self.max_points, window, DEFAULT_GAP_S)
            series.append(TrackSeries(int(track), reduced, len(rows)))
        time_range = (float(faces["time_s"].min()), float(faces["time_s"].max()))
        return Timeline(source, values, series, int(sizes.shape[0]), time_range, window)

    def rows_in_window(self, source_id: int, window: tuple[float, float] | None) -> int:
        """How many face rows the CSV export of this window would hold."""
        source = self.source(source_id)
        if source is None:
            return 0
        times = self.faces(source)["time_s"]
        if window is None:
            return int(times.shape[0])
        return int(((times >= window[0]) & (times <= window[1])).sum())

    def track_summaries(self, source_id: int) -> list[TrackSummary]:
        """Per-track summaries: the aggregator's final ones (it writes none for a short track), or
        provisional ones from the rows so far of the tracks that are not short."""
        with self._store() as store:
            tracks = store.tracks(source_id)
            segments = store.segments(source_id) if not tracks.empty else pd.DataFrame()
        if not tracks.empty:
            by_track = {int(t): group for t, group in segments.groupby("track_id")} if not segments.empty else {}
            return [_final_summary(row, by_track.get(int(row["track_id"]))) for row in tracks.to_dict("records")]
        source = self.source(source_id)
        if source is None:
            return []
        faces, minimum = self.faces(source), min_track_frames(source)
        return [_provisional_summary(int(track), rows) for track, rows in faces.groupby("track_id", sort=True)
                if len(rows) >= minimum]

    def track_summary(self, source_id: int, track_id: int) -> TrackSummary | None:
        return next((t for t in self.track_summaries(source_id) if t.track_id == track_id), None)

    def export_csv(self, source_id: int, window: tuple[float, float] | None) -> tuple[str, str]:
        """(file name, CSV text) of every face row in the window, read fresh from the store."""
        with self._store() as store:
            source = store.source(source_id)
            start, end = window if window is not None else (None, None)
            faces = store.faces(source_id, start_s=start, end_s=end)
        stem = Path(display_name(source or {"id": source_id})).stem or f"source-{source_id}"
        span = "all" if window is None else f"{window[0]:.2f}-{window[1]:.2f}s"
        buffer = io.StringIO()
        faces.drop(columns=["id"], errors="ignore").to_csv(buffer, index=False)
        return f"{stem}_{span}.csv", buffer.getvalue()

    def live_frame(self, source_id: int, image: bool = True) -> dict[str, Any] | None:
        """A camera's newest annotated frame (`monitor --live-view`), None when none is kept."""
        with self._store() as store:
            return store.live_frame(source_id, image)

    # --- events -------------------------------------------------------------------------
    def events(self, source_id: int | None = None, limit: int = 500) -> pd.DataFrame:
        """Events newest first, with a `source_name` column (empty for events without a source)."""
        with self._store() as store:
            events = store.events(source_id, limit)
            sources = store.sources()
        names = {int(row["id"]): display_name(row) for row in sources.to_dict("records")}
        events = events.copy()
        events["source_name"] = [names.get(int(s), f"source {int(s)}") if pd.notna(s) else ""
                                 for s in events["source_id"]]
        return events

    def events_token(self, source_id: int | None) -> str:
        with self._store() as store:
            latest = store.events(source_id, 1)
        return f"{source_id}|{latest['id'].iloc[0] if not latest.empty else 0}"

    def source_options(self) -> list[dict[str, Any]]:
        """Dropdown options: every source by name."""
        with self._store() as store:
            sources = store.sources()
        return [{"label": f"{display_name(row)} (#{int(row['id'])})", "value": int(row["id"])}
                for row in sources.to_dict("records")]


def _compact(faces: pd.DataFrame) -> pd.DataFrame:
    """Only what the pages draw, probabilities as float32: a third of the memory of a full row."""
    compact = faces.reindex(columns=CACHED_COLUMNS)
    probabilities = CACHED_COLUMNS[4:]
    compact[probabilities] = compact[probabilities].astype(np.float32)
    return compact


def _emotion_mix(tracks: pd.DataFrame) -> dict[str, float]:
    """Share of each emotion across a source: track means weighted by track length."""
    if tracks.empty:
        return {}
    weights = tracks["frames"].to_numpy(dtype=float)
    if weights.sum() <= 0:
        return {}
    means = tracks[[f"mean_{e}" for e in EMOTIONS]].to_numpy(dtype=float)
    mix = (means * weights[:, None]).sum(axis=0) / weights.sum()
    return {emotion: float(value) for emotion, value in zip(EMOTIONS, mix)}


def _final_summary(row: Mapping[str, Any], segments: pd.DataFrame | None) -> TrackSummary:
    spans = ([] if segments is None else
             [(str(s.emotion), float(s.start_s), float(s.end_s)) for s in segments.itertuples()])
    thumbnail = row.get("thumbnail")
    return TrackSummary(
        track_id=int(row["track_id"]), start_s=float(row["start_s"]), end_s=float(row["end_s"]),
        frames=int(row["frames"]), dominant=str(row["dominant_emotion"]),
        means={e: float(row[f"mean_{e}"]) for e in EMOTIONS}, segments=spans,
        thumbnail=bytes(thumbnail) if thumbnail is not None and not _is_missing(thumbnail) else None,
        provisional=False,
    )


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _provisional_summary(track_id: int, rows: pd.DataFrame) -> TrackSummary:
    """Summary from live rows: mean smoothed probabilities and runs of the top emotion."""
    rows = rows.sort_values("time_s", kind="stable")
    smoothed = rows[[f"s_{e}" for e in EMOTIONS]].to_numpy(dtype=float)
    means = smoothed.mean(axis=0)
    top = smoothed.argmax(axis=1)
    times = rows["time_s"].to_numpy(dtype=float)
    starts = np.flatnonzero(np.r_[True, top[1:] != top[:-1]])
    ends = np.r_[starts[1:], len(top)]
    segments = [(EMOTIONS[int(top[s])], float(times[s]), float(times[e - 1])) for s, e in zip(starts, ends)]
    return TrackSummary(
        track_id=track_id, start_s=float(times[0]), end_s=float(times[-1]), frames=len(rows),
        dominant=EMOTIONS[int(np.argmax(means))], means=dict(zip(EMOTIONS, map(float, means))),
        segments=segments, thumbnail=None, provisional=True,
    )
