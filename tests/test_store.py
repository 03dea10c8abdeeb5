"""The store: schema version and migrations, atomic replacement, failure clean-up, events."""

from __future__ import annotations

import sqlite3

import pytest

from emojimation import store as store_module
from emojimation.errors import ConfigError
from emojimation.store import SCHEMA_VERSION, FaceRow, Store, TrackRow


def face(frame: int, track: int = 1) -> FaceRow:
    probs = [0.0] * 7
    probs[3] = 1.0
    return FaceRow(frame, frame / 10, 1000 + frame / 10, track, (1, 2, 3, 4), 0.9, probs, probs)


def test_new_database_has_current_schema_and_tables(tmp_path):
    with Store(f"sqlite:///{tmp_path}/a.db") as store:
        assert store.schema_version() == SCHEMA_VERSION
        tables = {r[0] for r in store.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        assert {"sources", "faces", "tracks", "segments", "events"} <= tables


def test_migrations_apply_step_by_step_and_keep_data(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path}/m.db"
    with Store(url) as store:
        source = store.create_source("video", "a.mp4", "a", "analysing")
    extra_step = "ALTER TABLE sources ADD COLUMN note TEXT; CREATE TABLE extra (x INTEGER)"
    monkeypatch.setattr(store_module, "MIGRATIONS", [*store_module.MIGRATIONS, extra_step])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with Store(url) as store:
        assert store.schema_version() == SCHEMA_VERSION + 1
        assert store.source(source)["note"] is None
        store.db.execute("INSERT INTO extra VALUES (1)")


def test_newer_database_is_refused(tmp_path):
    path = tmp_path / "n.db"
    Store(f"sqlite:///{path}").close()
    sqlite3.connect(path).execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    with pytest.raises(ConfigError, match="newer"):
        Store(f"sqlite:///{path}")


def test_reanalysis_replaces_earlier_results_only_when_done(tmp_path):
    with Store(f"sqlite:///{tmp_path}/r.db") as store:
        first = store.create_source("video", "clip.mp4", "clip", "analysing")
        store.add_faces(first, [face(0), face(1)])
        store.finish_source(first)
        second = store.create_source("video", "clip.mp4", "clip", "analysing")
        store.add_faces(second, [face(0)])
        assert len(store.faces(first)) == 2  # still there while the re-run is unfinished
        store.finish_source(second)
        assert store.sources()["id"].tolist() == [second]
        assert len(store.faces(first)) == 0 and len(store.faces(second)) == 1


def test_failed_source_keeps_no_partial_rows_and_earlier_results_survive(tmp_path):
    with Store(f"sqlite:///{tmp_path}/f.db") as store:
        done = store.create_source("video", "clip.mp4", "clip", "analysing")
        store.add_faces(done, [face(0)])
        store.finish_source(done)
        failed = store.create_source("video", "clip.mp4", "clip", "analysing")
        store.add_faces(failed, [face(0), face(1)])
        store.write_tracks(failed, [TrackRow(1, 0, 1, 2, [0, 0, 0, 1, 0, 0, 0], [("happy", 0, 1)])])
        store.fail_source(failed, "decoding failed")
        assert len(store.faces(failed)) == 0 and store.tracks(failed).empty and store.segments(failed).empty
        assert store.source(failed)["status"] == "failed" and store.source(failed)["error"] == "decoding failed"
        assert len(store.faces(done)) == 1


def test_tracks_segments_events_and_cascade_delete(tmp_path):
    with Store(f"sqlite:///{tmp_path}/t.db") as store:
        source = store.create_source("camera", "rtsp://cam", "door", "live")
        store.add_faces(source, [face(0), face(1, track=2)])
        store.write_tracks(source, [TrackRow(1, 0.0, 0.1, 1, [0, 0, 0, 1, 0, 0, 0], [("happy", 0.0, 0.2)], b"png")])
        store.add_event(source, "status", "camera live", {"status": "live"}, at=5.0)
        store.add_event(source, "alert", "angry", at=6.0)
        track = store.tracks(source).iloc[0]
        assert track.dominant_emotion == "happy" and track.segments == "happy:0.00-0.20" and track.thumbnail == b"png"
        assert store.events(source)["kind"].tolist() == ["alert", "status"]  # newest first
        assert store.faces(source, track_id=2)["frame"].tolist() == [1]
        assert store.faces(source, start_s=0.05)["frame"].tolist() == [1]
        store.delete_source(source)
        for table in ("faces", "tracks", "segments", "events"):
            assert store.db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] == 0


def test_unsupported_url_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="unsupported scheme"):
        Store("mysql://user:secret@host/db")


def test_faces_reads_only_requested_columns_and_rejects_unknown(tmp_path):
    with Store(f"sqlite:///{tmp_path}/c.db") as store:
        source = store.create_source("video", "a.mp4", "a", "analysing")
        store.add_faces(source, [face(0), face(1)])
        frame = store.faces(source, columns=["frame", "time_s", "p_happy"])
        assert list(frame.columns) == ["frame", "time_s", "p_happy"] and frame["p_happy"].tolist() == [1.0, 1.0]
        with pytest.raises(ValueError, match="unknown face columns"):
            store.faces(source, columns=["frame; DROP TABLE faces"])
