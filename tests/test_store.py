"""The store: schema version and migrations, atomic replacement, failure clean-up, events.

Every behaviour test runs on both backends: SQLite (a file in tmp_path) and PostgreSQL (a fresh
database on the session's private server, see helpers_postgres.py)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from core import store as store_module
from core.errors import ConfigError
from core.store import SCHEMA_VERSION, FaceRow, Store, StoreError, TrackRow
import helpers_postgres
from helpers_postgres import assert_no_password


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path) -> str:
    """A fresh, empty store of each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    return request.getfixturevalue("postgres_server").new_database()


def table_names(store: Store) -> set[str]:
    if store.postgres:
        sql = "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
    else:
        sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
    return {row[0] for row in store.db.execute(sql).fetchall()}


def face(frame: int, track: int = 1) -> FaceRow:
    probs = [0.0] * 7
    probs[3] = 1.0
    return FaceRow(frame, frame / 10, 1000 + frame / 10, track, (1, 2, 3, 4), 0.9, probs, probs)


def test_new_database_has_current_schema_and_tables(store_url):
    with Store(store_url) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert {"sources", "faces", "tracks", "segments", "events"} <= table_names(store)


def test_migrations_apply_step_by_step_and_keep_data(store_url, monkeypatch):
    with Store(store_url) as store:
        source = store.create_source("video", "a.mp4", "a", "analysing")
    extra_step = "ALTER TABLE sources ADD COLUMN note TEXT; CREATE TABLE extra (x INTEGER)"
    monkeypatch.setattr(store_module, "MIGRATIONS", [*store_module.MIGRATIONS, extra_step])
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    with Store(store_url) as store:
        assert store.schema_version() == SCHEMA_VERSION + 1
        assert store.source(source)["note"] is None
        store.db.execute("INSERT INTO extra VALUES (1)")
        assert store.db.execute("SELECT COUNT(*) FROM extra").fetchone()[0] == 1


# --- the shipped v1 -> v2 migration on a real version 1 database -------------------------------
FIXTURES = Path(__file__).parent / "fixtures"
TABLES = {"sources": "id", "faces": "id", "tracks": "source_id, track_id", "segments": "id", "events": "id"}


def load_v1(backend: str, folder: Path, postgres_server=None) -> str:
    """A version 1 database with rows, made by version 1's own DDL (tests/fixtures/store_v1.*.sql)
    with the database's own client library: nothing of the current code is involved."""
    script = (FIXTURES / f"store_v1.{backend}.sql").read_text()
    if backend == "sqlite":
        path = folder / "v1.db"
        connection = sqlite3.connect(path)
        connection.executescript(script)
        connection.close()
        return f"sqlite:///{path}"
    import psycopg

    url = postgres_server.new_database()
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(script)  # no parameters: psycopg sends the whole script as it is
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def v1_store_url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return load_v1("sqlite", tmp_path)
    return load_v1("postgresql", tmp_path, request.getfixturevalue("postgres_server"))


def raw_connection(url: str):
    """A plain driver connection (sqlite3 or psycopg), not the Store's."""
    if url.startswith("sqlite:///"):
        return sqlite3.connect(url[len("sqlite:///"):], isolation_level=None)
    import psycopg

    return psycopg.connect(url, autocommit=True)


def raw_tables(url: str) -> dict[str, list[dict]]:
    """Every row of every table, read with plain SQL."""
    connection = raw_connection(url)
    tables = {}
    try:
        for table, key in TABLES.items():
            cursor = connection.execute(f"SELECT * FROM {table} ORDER BY {key}")
            names = [column[0] for column in cursor.description]
            tables[table] = [{name: bytes(value) if isinstance(value, memoryview) else value  # bytea
                              for name, value in zip(names, row)} for row in cursor.fetchall()]
    finally:
        connection.close()
    return tables


def raw_version(url: str) -> int:
    connection = raw_connection(url)
    try:
        sql = "PRAGMA user_version" if url.startswith("sqlite:///") else "SELECT MAX(version) FROM schema_version"
        return connection.execute(sql).fetchone()[0]
    finally:
        connection.close()


def raw_execute(url: str, sql: str) -> None:
    connection = raw_connection(url)
    try:
        connection.execute(sql)
    finally:
        connection.close()


def schema(url: str) -> dict[str, object]:
    """Columns, indexes and foreign keys of the store's tables, as the database reports them."""
    if url.startswith("sqlite:///"):
        connection = sqlite3.connect(url[len("sqlite:///"):])
        try:
            return {
                "columns": {t: connection.execute(f"PRAGMA table_info({t})").fetchall() for t in TABLES},
                "foreign keys": {t: connection.execute(f"PRAGMA foreign_key_list({t})").fetchall() for t in TABLES},
                "indexes": sorted((name, table, tuple(c[2] for c in connection.execute(f"PRAGMA index_info({name})")))
                                  for name, table in connection.execute(
                                      "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index'")),
            }
        finally:
            connection.close()
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        return {
            "columns": connection.execute(
                "SELECT table_name, ordinal_position, column_name, data_type, is_nullable, column_default, "
                "is_identity FROM information_schema.columns WHERE table_schema = 'public' "
                "ORDER BY table_name, ordinal_position").fetchall(),
            "constraints": connection.execute(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE connamespace = 'public'::regnamespace ORDER BY 1, 2").fetchall(),
            "indexes": connection.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1").fetchall(),
        }


def test_the_two_v1_fixtures_hold_the_same_rows(tmp_path, postgres_server):
    """The SQLite and PostgreSQL version 1 fixtures are one database, so both upgrades are checked
    against the same content."""
    urls = [load_v1("sqlite", tmp_path), load_v1("postgresql", tmp_path, postgres_server)]
    sqlite_rows, postgres_rows = (raw_tables(url) for url in urls)
    assert sqlite_rows == postgres_rows
    assert all(sqlite_rows[table] for table in TABLES)  # every table holds rows
    assert [raw_version(url) for url in urls] == [1, 1]


def test_a_real_v1_database_upgrades_to_the_current_schema_and_keeps_every_row(v1_store_url, tmp_path, request):
    before = raw_tables(v1_store_url)
    assert raw_version(v1_store_url) == 1 and "frames_dropped" not in before["sources"][0]
    with Store(v1_store_url) as store:
        assert store.schema_version() == SCHEMA_VERSION >= 2
        sources = store.sources()
    after = raw_tables(v1_store_url)
    # Step 2 added sources.frames_dropped, 0 for the rows already there; nothing else changed.
    assert [row.pop("frames_dropped") for row in after["sources"]] == [0] * len(before["sources"])
    # Step 3 added sources.annotated_video, empty for the rows already there.
    assert [row.pop("annotated_video") for row in after["sources"]] == [None] * len(before["sources"])
    assert after == before
    # The upgraded database has exactly the schema a new one gets: columns, indexes, foreign keys.
    fresh = f"sqlite:///{tmp_path}/fresh.db" if v1_store_url.startswith("sqlite:///") \
        else request.getfixturevalue("postgres_server").new_database()
    Store(fresh).close()
    assert schema(v1_store_url) == schema(fresh)

    # The old rows read back through the store's API, as the dashboard and the CLI read them.
    assert sorted(sources["uri"]) == sorted(row["uri"] for row in before["sources"])
    assert (sources["frames_dropped"] == 0).all()
    with Store(v1_store_url) as store:
        for source in before["sources"]:
            faces = store.faces(source["id"])
            expected = [row for row in before["faces"] if row["source_id"] == source["id"]]
            assert faces["p_happy"].tolist() == [row["p_happy"] for row in expected]
            assert faces["emotion"].tolist() == [row["emotion"] for row in expected]
            tracks = store.tracks(source["id"])
            expected = [row for row in before["tracks"] if row["source_id"] == source["id"]]
            assert tracks["segments"].tolist() == [row["segments"] for row in expected]
            assert [None if pd.isna(t) else bytes(t) for t in tracks["thumbnail"]] == [row["thumbnail"] for row in expected]
        camera = next(row for row in before["sources"] if row["kind"] == "camera")
        assert json.loads(store.events(camera["id"]).sort_values("at")["data"].iloc[-1])["status"] == "disconnected"
        # It keeps working: the v1 camera's timeline continues, new sources get new ids.
        assert store.open_camera(camera["uri"], camera["name"]) == camera["id"]
        store.add_faces(camera["id"], [face(7)], progress={"frames_dropped": 3})
        assert store.source(camera["id"])["frames_dropped"] == 3 and len(store.faces(camera["id"])) == 3
        new = store.create_source("video", "/clips/new.mp4", "new.mp4", "analysing")
        assert new > max(row["id"] for row in before["sources"])
    with Store(v1_store_url) as store:  # opening again migrates nothing more
        assert store.schema_version() == SCHEMA_VERSION


def test_a_failing_v1_upgrade_rolls_back_completely(v1_store_url):
    """Step 2 fails half-way on this database (an index already takes the name its second
    statement creates, after its first statement added the column): nothing of the step may
    stay, or the next start would fail on the half-added column for ever."""
    raw_execute(v1_store_url, "CREATE INDEX faces_captured ON faces (frame)")
    before, schema_before = raw_tables(v1_store_url), schema(v1_store_url)
    with pytest.raises(StoreError, match="faces_captured"):
        Store(v1_store_url)
    assert raw_version(v1_store_url) == 1
    assert schema(v1_store_url) == schema_before  # no frames_dropped column left behind
    assert raw_tables(v1_store_url) == before
    # Once the conflict is gone, the same database upgrades.
    raw_execute(v1_store_url, "DROP INDEX faces_captured")
    with Store(v1_store_url) as store:
        assert store.schema_version() == SCHEMA_VERSION
        assert (store.sources()["frames_dropped"] == 0).all()


def test_newer_database_is_refused(tmp_path):
    path = tmp_path / "n.db"
    Store(f"sqlite:///{path}").close()
    sqlite3.connect(path).execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    with pytest.raises(ConfigError, match="newer"):
        Store(f"sqlite:///{path}")


def test_postgres_version_table_and_newer_database_is_refused(postgres_server):
    url = postgres_server.new_database()
    with Store(url, migrate=False) as store:
        assert store.schema_version() == 0 and "schema_version" not in table_names(store)
    with Store(url) as store:
        assert store.db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
        store.db.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION + 5,))
    with pytest.raises(ConfigError, match="newer") as refused:
        Store(url)
    assert "***" in str(refused.value)
    assert_no_password(str(refused.value))


def test_postgres_concurrent_first_opens_migrate_once(postgres_server):
    """Processes starting together (dashboard, aggregator) all open a fresh database: the advisory
    lock makes one of them migrate and the others wait, instead of failing on duplicate tables."""
    url = postgres_server.new_database()
    errors: list[BaseException] = []

    def open_store() -> None:
        try:
            Store(url).close()
        except BaseException as error:  # noqa: BLE001 - reported by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    with Store(url) as store:
        assert store.db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]


def test_reanalysis_replaces_earlier_results_only_when_done(store_url):
    with Store(store_url) as store:
        first = store.create_source("video", "clip.mp4", "clip", "analysing")
        store.add_faces(first, [face(0), face(1)])
        store.finish_source(first)
        second = store.create_source("video", "clip.mp4", "clip", "analysing")
        store.add_faces(second, [face(0)])
        assert len(store.faces(first)) == 2  # still there while the re-run is unfinished
        store.finish_source(second)
        assert store.sources()["id"].tolist() == [second]
        assert len(store.faces(first)) == 0 and len(store.faces(second)) == 1


def test_failed_source_keeps_no_partial_rows_and_earlier_results_survive(store_url):
    with Store(store_url) as store:
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


def test_tracks_segments_events_and_cascade_delete(store_url):
    with Store(store_url) as store:
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


def test_write_tracks_replaces_a_track_and_its_segments(store_url):
    with Store(store_url) as store:
        source = store.create_source("video", "a.mp4", "a", "analysing")
        store.write_tracks(source, [TrackRow(1, 0.0, 1.0, 10, [0, 0, 0, 1, 0, 0, 0], [("happy", 0.0, 1.0)])])
        store.write_tracks(source, [TrackRow(1, 0.0, 2.0, 20, [0, 0, 0, 0, 1, 0, 0],
                                             [("sad", 0.0, 1.5), ("happy", 1.5, 2.0)], b"\x00png")])
        track = store.tracks(source)
        assert len(track) == 1 and track.iloc[0].frames == 20 and track.iloc[0].dominant_emotion == "sad"
        assert track.iloc[0].thumbnail == b"\x00png"
        assert store.segments(source, 1)["emotion"].tolist() == ["sad", "happy"]


def test_complete_track_writes_and_the_last_track_id_of_short_tracks(store_url):
    """`complete` deletes the summaries (and segments) of tracks no longer in the list; the last
    track ID counts a short track's face rows too (it has no summary)."""
    happy = [0, 0, 0, 1, 0, 0, 0]
    with Store(store_url) as store:
        source = store.create_source("camera", "rtsp://cam", "door", "live")
        assert store.last_track_id(source) == 0
        store.write_tracks(source, [TrackRow(t, 0.0, 1.0, 3, happy, [("happy", 0.0, 1.0)]) for t in (1, 2)])
        store.add_faces(source, [FaceRow(0, 0.0, 1.0, 5, (0, 0, 9, 9), 0.9, happy, happy)])  # track 5: short
        assert store.last_track_id(source) == 5
        store.write_tracks(source, [TrackRow(2, 0.0, 1.5, 4, happy, [("happy", 0.0, 1.5)])], complete=True)
        assert store.tracks(source)[["track_id", "frames"]].values.tolist() == [[2, 4]]
        assert store.segments(source)["track_id"].tolist() == [2]


def test_camera_reuse_status_events_and_retention(store_url):
    with Store(store_url) as store:
        camera = store.open_camera("rtsp://cam", "door", width=640)
        assert store.open_camera("rtsp://cam", "front door") == camera  # the timeline continues
        assert store.source(camera)["name"] == "front door" and store.source(camera)["width"] == 640
        store.set_camera_status(camera, "live", "camera live", {"fps": 10}, at=50.0)
        assert store.source(camera)["status"] == "live"
        assert json.loads(store.events(camera).iloc[0].data) == {"fps": 10}
        old, new = face(0, track=1), face(1, track=2)
        old.captured_at, new.captured_at = 10.0, 100.0
        store.add_faces(camera, [old, new], progress={"faces": 2, "frames_analysed": 2})
        store.write_tracks(camera, [TrackRow(t, 0, 1, 1, [0, 0, 0, 1, 0, 0, 0], [("happy", 0, 1)]) for t in (1, 2)])
        video = store.create_source("video", "a.mp4", "a", "analysing")
        store.add_faces(video, [old])
        store.update_source(video, options={"fps": 5})
        assert json.loads(store.source(video)["options"]) == {"fps": 5}
        assert store.delete_before(60.0) == {"faces": 1, "tracks": 1, "events": 1}
        assert store.faces(camera)["track_id"].tolist() == [2] and store.tracks(camera)["track_id"].tolist() == [2]
        assert store.segments(camera)["track_id"].tolist() == [2]
        assert len(store.faces(video)) == 1  # analysed files are kept
        assert store.source(camera)["faces"] == 2


def fill(store: Store) -> int:
    source = store.create_source("video", "a.mp4", "a", "analysing", source_fps=25.0, width=640, height=360)
    store.add_faces(source, [face(0), face(1, track=2)], progress={"faces": 2})
    store.write_tracks(source, [TrackRow(1, 0.0, 0.1, 1, [0, 0, 0, 1, 0, 0, 0], [("happy", 0.0, 0.1)], b"png"),
                                TrackRow(2, 0.1, 0.2, 1, [0, 0, 0, 1, 0, 0, 0], [("happy", 0.1, 0.2)])])
    store.add_event(source, "status", "done", {"n": 1}, at=5.0)
    store.finish_source(source, duration_s=0.2)
    return source


def test_reads_have_the_same_columns_dtypes_and_values_on_both_backends(tmp_path, postgres_server):
    frames = []
    for url in (f"sqlite:///{tmp_path}/same.db", postgres_server.new_database()):
        with Store(url) as store:
            source = fill(store)
            frames.append({"sources": store.sources().drop(columns=["created_at", "updated_at"]),
                           "faces": store.faces(source), "tracks": store.tracks(source),
                           "segments": store.segments(source), "events": store.events(source)})
    for name, sqlite_frame in frames[0].items():
        pd.testing.assert_frame_equal(frames[1][name], sqlite_frame, obj=name)


def test_unsupported_url_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="unsupported scheme") as refused:
        Store("mysql://user:secret@host/db")
    assert "secret" not in str(refused.value)


def test_postgres_errors_are_one_line_without_the_password(postgres_server):
    url = postgres_server.new_database()
    wrong_password = postgres_server.url(url.rsplit("/", 1)[1], password="WrongPass")
    refused = url.replace(f":{postgres_server.port}/", ":1/")
    for bad, reason in ((wrong_password, "password authentication failed"), (refused, "refused")):
        with pytest.raises(ConfigError, match="cannot connect") as failed:
            Store(bad)
        message = str(failed.value)
        assert reason in message and "\n" not in message and "***" in message and "WrongPass" not in message
        assert_no_password(message)
    with Store(url) as store, pytest.raises(StoreError) as failed:
        store.db.execute("SELECT * FROM no_such_table")
    assert "no_such_table" in str(failed.value) and "\n" not in str(failed.value)
    assert_no_password(str(failed.value))


def test_faces_reads_only_requested_columns_and_rejects_unknown(store_url):
    with Store(store_url) as store:
        source = store.create_source("video", "a.mp4", "a", "analysing")
        store.add_faces(source, [face(0), face(1)])
        frame = store.faces(source, columns=["frame", "time_s", "p_happy"])
        assert list(frame.columns) == ["frame", "time_s", "p_happy"] and frame["p_happy"].tolist() == [1.0, 1.0]
        with pytest.raises(ValueError, match="unknown face columns"):
            store.faces(source, columns=["frame; DROP TABLE faces"])


def test_postgres_password_from_pgpassword_environment(postgres_server, monkeypatch):
    """libpq reads PGPASSWORD (or ~/.pgpass): the URL, seen in `ps` and logs, can leave it out."""
    url = postgres_server.new_database(password=None)
    monkeypatch.setenv("PGPASSWORD", helpers_postgres.PASSWORD)
    with Store(url) as store:
        assert store.schema_version() == SCHEMA_VERSION


@pytest.mark.slow
def test_analyse_into_postgres_end_to_end(postgres_server, tmp_path):
    """`emojimation analyse --store postgresql://...` on a 3 s clip: exit 0, rows readable through Store."""
    from bench.synthetic import compose_clip, val_faces

    clip = tmp_path / "happy.mp4"
    (image, label, _file), = val_faces(1, seed=7, emotions=("happy",))
    compose_clip(clip, [image], [label], seconds_per_face=3.0, fps=10.0, face_px=170)
    url = postgres_server.new_database()
    env = {**os.environ, "EMOJIMATION_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "emojimation", "analyse", "--no-progress", "--json", str(clip),
                             "--out", str(tmp_path / "out"), "--store", url],
                            capture_output=True, text=True, timeout=240, env=env)
    assert result.returncode == 0, result.stderr
    assert_no_password(result.stderr + result.stdout)
    entry = json.loads(result.stdout)["inputs"][0]
    with Store(url) as store:
        source = store.sources().iloc[0]
        assert source.status == "done" and source.uri.endswith("happy.mp4") and source.faces == entry["faces"] > 0
        assert len(store.faces(int(source.id))) == entry["faces"]
        assert store.tracks(int(source.id))["track_id"].tolist() == [t["track_id"] for t in entry["tracks"]]
