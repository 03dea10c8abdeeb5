"""The results store: one module behind a database URL (SQLite by default).

Tables: sources (video, image set or camera, with status), faces (one row per face per
analysed frame), tracks, segments and events. The schema is versioned; `migrate()` brings
any older database up to `SCHEMA_VERSION` step by step. Every reader (CLI outputs, the
dashboard, the Python API) goes through this module.

Rows carry `time_s` (offset from the start of the source) and `captured_at` (absolute Unix
time). Re-analysing a file writes a new source row and, only once it is complete, deletes
the earlier results for the same URI in the same transaction: results are never half
replaced, and a failed re-run leaves the earlier results in place.
"""

from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import pandas as pd

from emojimation.emotions import EMOTIONS
from emojimation.errors import ConfigError

PROB_COLUMNS = [f"p_{e}" for e in EMOTIONS]
SMOOTHED_COLUMNS = [f"s_{e}" for e in EMOTIONS]
MEAN_COLUMNS = [f"mean_{e}" for e in EMOTIONS]
FACE_COLUMNS = ["id", "source_id", "frame", "time_s", "captured_at", "track_id", "x", "y", "w", "h", "score",
                *PROB_COLUMNS, *SMOOTHED_COLUMNS, "emotion"]

# Each entry upgrades the schema from version i to i + 1. Never edit a released step: add one.
MIGRATIONS: list[str] = [
    f"""
    CREATE TABLE sources (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL CHECK (kind IN ('video', 'image', 'images', 'camera')),
        uri TEXT NOT NULL,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        error TEXT,
        source_fps REAL,
        width INTEGER,
        height INTEGER,
        expected_frames INTEGER,
        frames_analysed INTEGER NOT NULL DEFAULT 0,
        frames_with_faces INTEGER NOT NULL DEFAULT 0,
        faces INTEGER NOT NULL DEFAULT 0,
        duration_s REAL NOT NULL DEFAULT 0,
        model TEXT,
        options TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX sources_uri ON sources (uri);
    CREATE TABLE faces (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        source_id INTEGER NOT NULL REFERENCES sources (id) ON DELETE CASCADE,
        frame INTEGER NOT NULL,
        time_s REAL NOT NULL,
        captured_at REAL NOT NULL,
        track_id INTEGER NOT NULL,
        x REAL NOT NULL, y REAL NOT NULL, w REAL NOT NULL, h REAL NOT NULL,
        score REAL NOT NULL,
        {", ".join(f"{c} REAL NOT NULL" for c in PROB_COLUMNS)},
        {", ".join(f"s_{e} REAL NOT NULL" for e in EMOTIONS)},
        emotion TEXT NOT NULL
    );
    CREATE INDEX faces_source_time ON faces (source_id, time_s);
    CREATE INDEX faces_source_track ON faces (source_id, track_id, time_s);
    CREATE TABLE tracks (
        source_id INTEGER NOT NULL REFERENCES sources (id) ON DELETE CASCADE,
        track_id INTEGER NOT NULL,
        start_s REAL NOT NULL,
        end_s REAL NOT NULL,
        frames INTEGER NOT NULL,
        dominant_emotion TEXT NOT NULL,
        {", ".join(f"{c} REAL NOT NULL" for c in MEAN_COLUMNS)},
        segments TEXT NOT NULL DEFAULT '',
        thumbnail BLOB,
        PRIMARY KEY (source_id, track_id)
    );
    CREATE TABLE segments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        source_id INTEGER NOT NULL REFERENCES sources (id) ON DELETE CASCADE,
        track_id INTEGER NOT NULL,
        emotion TEXT NOT NULL,
        start_s REAL NOT NULL,
        end_s REAL NOT NULL
    );
    CREATE INDEX segments_source ON segments (source_id, track_id);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        source_id INTEGER REFERENCES sources (id) ON DELETE CASCADE,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        message TEXT NOT NULL,
        data TEXT
    );
    CREATE INDEX events_at ON events (at);
    """,
    # 2: live cameras drop stale frames rather than lag; count them per source.
    """
    ALTER TABLE sources ADD COLUMN frames_dropped INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX faces_captured ON faces (captured_at);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


@dataclass
class FaceRow:
    frame: int
    time_s: float
    captured_at: float
    track_id: int
    box: tuple[float, float, float, float]
    score: float
    probs: Sequence[float]  # calibrated, per frame
    smoothed: Sequence[float]  # per-track smoothed

    def values(self, source_id: int) -> tuple:
        emotion = EMOTIONS[max(range(len(EMOTIONS)), key=lambda i: self.probs[i])]
        return (source_id, self.frame, self.time_s, self.captured_at, self.track_id, *map(float, self.box),
                float(self.score), *map(float, self.probs), *map(float, self.smoothed), emotion)


@dataclass
class TrackRow:
    track_id: int
    start_s: float
    end_s: float
    frames: int
    mean_probs: Sequence[float]  # of the smoothed probabilities
    segments: list[tuple[str, float, float]]
    thumbnail: bytes | None = None

    @property
    def dominant_emotion(self) -> str:
        return EMOTIONS[max(range(len(EMOTIONS)), key=lambda i: self.mean_probs[i])]

    def segments_text(self) -> str:
        return ";".join(f"{e}:{s:.2f}-{t:.2f}" for e, s, t in self.segments)


def sqlite_path(url: str) -> Path:
    """Path of a `sqlite:///path` URL (or a bare path)."""
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///"):])
    if "://" in url:
        scheme = url.split("://", 1)[0]
        raise ConfigError(f"store URL {url.split('@')[-1]!r}: unsupported scheme {scheme!r} (use sqlite:///PATH)")
    return Path(url)


class Store:
    """A connection to the results database. One per process; not shared across threads."""

    def __init__(self, url: str, migrate: bool = True) -> None:
        self.url = url
        self.path = sqlite_path(url)
        if not self.path.parent.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(str(self.path), timeout=30.0, isolation_level=None)
        except sqlite3.Error as error:
            raise ConfigError(f"store {self.path}: cannot open ({error})") from None
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.db.execute("PRAGMA synchronous=NORMAL")
        if migrate:
            self.migrate()

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # --- schema -------------------------------------------------------------------------
    def schema_version(self) -> int:
        return int(self.db.execute("PRAGMA user_version").fetchone()[0])

    def migrate(self) -> int:
        """Apply the missing migrations; returns the resulting version."""
        with self.transaction() as db:
            version = self.schema_version()
            if version > SCHEMA_VERSION:
                raise ConfigError(f"store {self.path}: schema version {version} is newer than this "
                                  f"Emojimation ({SCHEMA_VERSION}); upgrade Emojimation")
            for step in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[step].split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {step + 1}")
        return self.schema_version()

    # --- writes -------------------------------------------------------------------------
    def create_source(self, kind: str, uri: str, name: str, status: str, **fields: Any) -> int:
        now = time.time()
        columns = {"kind": kind, "uri": uri, "name": name, "status": status, "created_at": now,
                   "updated_at": now, **self._encode_fields(fields)}
        cursor = self.db.execute(
            f"INSERT INTO sources ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
            tuple(columns.values()),
        )
        return int(cursor.lastrowid)

    @staticmethod
    def _encode_fields(fields: dict[str, Any]) -> dict[str, Any]:
        return {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in fields.items()}

    def update_source(self, source_id: int, **fields: Any) -> None:
        fields = {**self._encode_fields(fields), "updated_at": time.time()}
        self.db.execute(f"UPDATE sources SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                        (*fields.values(), source_id))

    def add_faces(self, source_id: int, rows: Sequence[FaceRow], progress: dict[str, Any] | None = None) -> None:
        """Insert face rows (and update the source's counters) in one transaction."""
        columns = ("source_id, frame, time_s, captured_at, track_id, x, y, w, h, score, "
                   + ", ".join(PROB_COLUMNS) + ", " + ", ".join(f"s_{e}" for e in EMOTIONS) + ", emotion")
        placeholders = ", ".join("?" * (11 + 2 * len(EMOTIONS)))
        with self.transaction() as db:
            db.executemany(f"INSERT INTO faces ({columns}) VALUES ({placeholders})",
                           [row.values(source_id) for row in rows])
            if progress:
                fields = {**progress, "updated_at": time.time()}
                db.execute(f"UPDATE sources SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                           (*fields.values(), source_id))

    def write_tracks(self, source_id: int, tracks: Sequence[TrackRow]) -> None:
        """Insert or replace track summaries and their segments."""
        with self.transaction() as db:
            for track in tracks:
                db.execute(
                    f"INSERT OR REPLACE INTO tracks (source_id, track_id, start_s, end_s, frames, dominant_emotion, "
                    f"{', '.join(MEAN_COLUMNS)}, segments, thumbnail) VALUES ({', '.join('?' * (8 + len(EMOTIONS)))})",
                    (source_id, track.track_id, track.start_s, track.end_s, track.frames, track.dominant_emotion,
                     *map(float, track.mean_probs), track.segments_text(), track.thumbnail),
                )
                db.execute("DELETE FROM segments WHERE source_id = ? AND track_id = ?", (source_id, track.track_id))
                db.executemany(
                    "INSERT INTO segments (source_id, track_id, emotion, start_s, end_s) VALUES (?, ?, ?, ?, ?)",
                    [(source_id, track.track_id, e, s, t) for e, s, t in track.segments],
                )

    def finish_source(self, source_id: int, **fields: Any) -> None:
        """Mark done and drop earlier results for the same file, atomically."""
        with self.transaction() as db:
            uri = db.execute("SELECT uri FROM sources WHERE id = ?", (source_id,)).fetchone()[0]
            # Only earlier, finished results: a concurrent run of the same file keeps its rows.
            db.execute("DELETE FROM sources WHERE uri = ? AND id < ? AND kind != 'camera' "
                       "AND status IN ('done', 'failed')", (uri, source_id))
            fields = {**self._encode_fields(fields), "status": "done", "updated_at": time.time()}
            db.execute(f"UPDATE sources SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?",
                       (*fields.values(), source_id))

    def fail_source(self, source_id: int, error: str) -> None:
        """Mark failed and delete its partial rows: no half-written results."""
        with self.transaction() as db:
            for table in ("faces", "tracks", "segments"):
                db.execute(f"DELETE FROM {table} WHERE source_id = ?", (source_id,))
            db.execute("UPDATE sources SET status = 'failed', error = ?, updated_at = ? WHERE id = ?",
                       (error, time.time(), source_id))

    def add_event(self, source_id: int | None, kind: str, message: str, data: dict[str, Any] | None = None,
                  at: float | None = None) -> int:
        cursor = self.db.execute(
            "INSERT INTO events (source_id, at, kind, message, data) VALUES (?, ?, ?, ?, ?)",
            (source_id, time.time() if at is None else at, kind, message, json.dumps(data or {})),
        )
        return int(cursor.lastrowid)

    def open_camera(self, uri: str, name: str, **fields: Any) -> int:
        """The camera's source row, reused across runs so its timeline continues; status `connecting`."""
        row = self.db.execute("SELECT id FROM sources WHERE kind = 'camera' AND uri = ? ORDER BY id DESC LIMIT 1",
                              (uri,)).fetchone()
        if row is None:
            return self.create_source("camera", uri, name, "connecting", **fields)
        self.update_source(int(row[0]), name=name, status="connecting", error=None, **fields)
        return int(row[0])

    def set_camera_status(self, source_id: int, status: str, message: str, data: dict[str, Any] | None = None,
                          at: float | None = None) -> None:
        """A camera's status change and its event, together (the dashboard shows both)."""
        at = time.time() if at is None else at
        with self.transaction() as db:
            db.execute("UPDATE sources SET status = ?, updated_at = ? WHERE id = ?", (status, at, source_id))
            db.execute("INSERT INTO events (source_id, at, kind, message, data) VALUES (?, ?, ?, ?, ?)",
                       (source_id, at, f"camera-{status}", message, json.dumps(data or {})))

    def delete_before(self, cutoff: float) -> dict[str, int]:
        """Retention: camera face rows captured before `cutoff` (Unix time), tracks left with no
        rows, and events before it. Results of analysed files are kept until deleted by hand."""
        with self.transaction() as db:
            cameras = "SELECT id FROM sources WHERE kind = 'camera'"
            faces = db.execute(f"DELETE FROM faces WHERE captured_at < ? AND source_id IN ({cameras})",
                               (cutoff,)).rowcount
            orphan = (f"source_id IN ({cameras}) AND NOT EXISTS (SELECT 1 FROM faces f WHERE "
                      "f.source_id = {t}.source_id AND f.track_id = {t}.track_id)")
            db.execute("DELETE FROM segments WHERE " + orphan.format(t="segments"))
            tracks = db.execute("DELETE FROM tracks WHERE " + orphan.format(t="tracks")).rowcount
            events = db.execute("DELETE FROM events WHERE at < ?", (cutoff,)).rowcount
        return {"faces": faces, "tracks": tracks, "events": events}

    def delete_source(self, source_id: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM sources WHERE id = ?", (source_id,))

    # --- reads --------------------------------------------------------------------------
    def _frame(self, sql: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        cursor = self.db.execute(sql, tuple(params))
        return pd.DataFrame(cursor.fetchall(), columns=[c[0] for c in cursor.description])

    def sources(self, ids: Sequence[int] | None = None) -> pd.DataFrame:
        if ids is not None:
            marks = ", ".join("?" * len(ids)) or "NULL"
            return self._frame(f"SELECT * FROM sources WHERE id IN ({marks}) ORDER BY id", ids)
        return self._frame("SELECT * FROM sources ORDER BY id DESC")

    def source(self, source_id: int) -> dict[str, Any] | None:
        frame = self.sources([source_id])
        return None if frame.empty else frame.iloc[0].to_dict()

    def faces(self, source_id: int, start_s: float | None = None, end_s: float | None = None,
              track_id: int | None = None, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """Face rows in frame order; `columns` limits what is read (a 180,000-row source reads
        in ~40 % of the time when a page needs only its plotted columns)."""
        if columns is not None:
            unknown = set(columns) - set(FACE_COLUMNS)
            if unknown:
                raise ValueError(f"unknown face columns: {', '.join(sorted(unknown))}")
        selected = ", ".join(columns) if columns is not None else "*"
        sql, params = f"SELECT {selected} FROM faces WHERE source_id = ?", [source_id]
        if start_s is not None:
            sql, params = sql + " AND time_s >= ?", params + [start_s]
        if end_s is not None:
            sql, params = sql + " AND time_s <= ?", params + [end_s]
        if track_id is not None:
            sql, params = sql + " AND track_id = ?", params + [track_id]
        return self._frame(sql + " ORDER BY frame, id", params)

    def tracks(self, source_id: int) -> pd.DataFrame:
        return self._frame("SELECT * FROM tracks WHERE source_id = ? ORDER BY track_id", (source_id,))

    def segments(self, source_id: int, track_id: int | None = None) -> pd.DataFrame:
        if track_id is None:
            return self._frame("SELECT * FROM segments WHERE source_id = ? ORDER BY track_id, start_s", (source_id,))
        return self._frame("SELECT * FROM segments WHERE source_id = ? AND track_id = ? ORDER BY start_s",
                           (source_id, track_id))

    def events(self, source_id: int | None = None, limit: int = 500) -> pd.DataFrame:
        if source_id is None:
            return self._frame("SELECT * FROM events ORDER BY at DESC, id DESC LIMIT ?", (limit,))
        return self._frame("SELECT * FROM events WHERE source_id = ? ORDER BY at DESC, id DESC LIMIT ?",
                           (source_id, limit))
