"""Dashboard without a browser: downsampling, the data module over a real store, ids, auth and CLI rules.

The store here is filled through the Store's own write API (`devtools.dashboard_demo`), including the
issue's large case: one hour at 10 fps with 5 tracks, 180,000 face rows.
"""

from __future__ import annotations

import base64
import csv
import io

import numpy as np
import pytest

from dashboard import ids
from dashboard.auth import _offered, parse_credentials
from dashboard.cli import bind_problem, is_loopback
from dashboard.data import DashboardData, source_token
from devtools.dashboard_demo import write_synthetic_source
from dashboard.downsample import MAX_POINTS_PER_TRACE, downsample
from dashboard.figures import timeline_figure, uirevision_for
from dashboard.jobs import AnalysisJobs, UploadError, analyse_command, analyse_environment, safe_filename
from dashboard.theme import EMOTION_COLOURS
from core.emotions import EMOTIONS
from core.store import FaceRow, Store, TrackRow

HOUR_ROWS = 3600 * 10 * 5


@pytest.fixture(scope="module")
def hour_store(tmp_path_factory) -> tuple[str, int]:
    """A store with the issue's large source: 1 h at 10 fps, 5 tracks (180,000 rows)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('dashboard-hour') / 'hour.db'}"
    with Store(url) as store:
        source_id = write_synthetic_source(store, duration_s=3600.0, fps=10.0, tracks=5, seed=1)
    return url, source_id


def face_rows(track_id: int, times: list[float], emotion: int = 3) -> list[FaceRow]:
    probs = [0.02] * len(EMOTIONS)
    probs[emotion] = 1.0 - 0.02 * (len(EMOTIONS) - 1)
    return [FaceRow(frame=int(round(t * 10)), time_s=t, captured_at=1.7e9 + t, track_id=track_id,
                    box=(1.0, 2.0, 30.0, 30.0), score=0.9, probs=probs, smoothed=probs) for t in times]


# --- downsampling ---------------------------------------------------------------------------
def test_dsd001_short_series_pass_through_unchanged():
    times = np.array([0.3, 0.1, 0.2])
    values = np.array([[0.3, 0.7], [0.1, 0.9], [0.2, 0.8]])
    series = downsample(times, values, max_points=10)
    assert series.time.tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert series.values[:, 0].tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert series.frames.tolist() == [1, 1, 1]


def test_dsd002_gaps_break_the_line():
    times = np.array([0.0, 0.1, 0.2, 5.0, 5.1])
    series = downsample(times, np.ones((5, 2)), max_points=100, gap_s=1.0)
    assert len(series) == 6
    assert np.isnan(series.values[3]).all() and series.frames[3] == 0
    assert 0.2 < series.time[3] < 5.0


def test_dsd003_long_series_are_bounded_and_keep_the_mean():
    rng = np.random.default_rng(0)
    times = np.arange(36_000) / 10.0
    values = rng.random((36_000, 7)).astype(np.float32)
    series = downsample(times, values, max_points=MAX_POINTS_PER_TRACE)
    assert len(series) <= MAX_POINTS_PER_TRACE
    assert series.frames.sum() == 36_000
    weighted = np.nansum(series.values * series.frames[:, None], axis=0) / series.frames.sum()
    assert weighted == pytest.approx(values.mean(axis=0), rel=1e-4)


def test_dsd004_a_zoom_window_gets_most_of_the_budget():
    times = np.arange(36_000) / 10.0
    values = np.zeros((36_000, 7), dtype=np.float32)
    series = downsample(times, values, max_points=1000, window=(1800.0, 1860.0))
    assert len(series) <= 1000
    inside = (series.time >= 1800.0) & (series.time <= 1860.0)
    assert inside.sum() == 601  # the 60 s window holds 601 frames: all of them, raw
    assert series.time.min() < 10 and series.time.max() > 3590  # the full extent stays visible


def test_dsd005_dominant_is_minus_one_on_gaps():
    times = np.array([0.0, 0.1, 3.0])
    values = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert downsample(times, values, 10).dominant().tolist() == [0, 1, -1, 0]


def test_dsd006_max_points_must_be_positive():
    with pytest.raises(ValueError, match="max_points"):
        downsample(np.zeros(1), np.zeros((1, 7)), max_points=0)


# --- the data module over a real store ------------------------------------------------------
def test_dsd010_hour_source_timeline_is_bounded_per_trace(hour_store):
    url, source_id = hour_store
    data = DashboardData(url)
    timeline = data.timeline(source_id)
    assert timeline is not None and timeline.total_tracks == 5 and len(timeline.tracks) == 5
    assert sum(track.rows for track in timeline.tracks) == HOUR_ROWS
    for track in timeline.tracks:
        assert len(track.series) <= MAX_POINTS_PER_TRACE
    figure = timeline_figure(timeline, uirevision_for(source_id))
    assert len(figure.data) == 5 * (len(EMOTIONS) + 1)
    assert max(len(trace.x) for trace in figure.data if trace.type == "scatter") <= MAX_POINTS_PER_TRACE
    assert max(len(trace.z[0]) for trace in figure.data if trace.type == "heatmap") <= MAX_POINTS_PER_TRACE
    assert figure.layout.uirevision == uirevision_for(source_id)
    # A zoom (a rebuild from the cached face table) stays bounded too. How fast it is, is for
    # bench/: a time limit here fails on a loaded machine, not on a slow dashboard.
    zoomed = data.timeline(source_id, window=(600.0, 660.0))
    assert all(len(track.series) <= MAX_POINTS_PER_TRACE for track in zoomed.tracks)


def test_dsd011_export_holds_exactly_the_rows_of_the_window(hour_store):
    url, source_id = hour_store
    data = DashboardData(url)
    filename, text = data.export_csv(source_id, (100.0, 130.0))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert filename == "synthetic-1h_100.00-130.00s.csv"
    assert len(rows) == 301 * 5 == data.rows_in_window(source_id, (100.0, 130.0))
    assert all(100.0 <= float(row["time_s"]) <= 130.0 for row in rows)
    assert {f"p_{e}" for e in EMOTIONS} <= set(rows[0]) and "id" not in rows[0]


def test_dsd012_live_rows_reach_the_cache_incrementally(tmp_path):
    url = f"sqlite:///{tmp_path / 'live.db'}"
    data = DashboardData(url)
    with Store(url) as store:
        source_id = store.create_source("camera", "rtsp://cam/1", "door", "live")
        store.add_faces(source_id, face_rows(1, [0.0, 0.1, 0.2]), {"faces": 3, "frames_analysed": 3})
    first = data.timeline(source_id)
    assert [t.rows for t in first.tracks] == [3]
    with Store(url) as store:
        store.add_faces(source_id, face_rows(1, [0.3]) + face_rows(2, [0.3, 0.4], emotion=4),
                        {"faces": 6, "frames_analysed": 5})
        fresh = store.faces(source_id)
    second = data.timeline(source_id)
    assert [t.rows for t in second.tracks] == [4, 2]
    cached = data.faces(data.source(source_id))
    assert sorted(cached["id"]) == sorted(fresh["id"])
    summaries = data.track_summaries(source_id)  # no tracks table yet: provisional, from the rows
    assert [(s.track_id, s.dominant, s.provisional) for s in summaries] == [(1, "happy", True), (2, "sad", True)]


def test_dsd015_short_tracks_are_neither_drawn_nor_listed(tmp_path):
    """A track with fewer rows than the minimum the aggregator recorded in the source's options
    is not drawn and has no card (a live one until it reaches the minimum); with summaries
    written, only theirs are listed. A source without a recorded minimum shows every track."""
    url = f"sqlite:///{tmp_path / 'short.db'}"
    data = DashboardData(url)
    with Store(url) as store:
        source_id = store.create_source("camera", "rtsp://cam/1", "door", "live", options={"min_track_frames": 3})
        store.add_faces(source_id, face_rows(1, [0.0, 0.1]) + face_rows(2, [0.1], emotion=4),
                        {"faces": 3, "frames_analysed": 2})
    timeline = data.timeline(source_id)
    assert timeline.tracks == [] and timeline.total_tracks == 0 and data.track_summaries(source_id) == []
    with Store(url) as store:
        store.add_faces(source_id, face_rows(1, [0.2]), {"faces": 4, "frames_analysed": 3})
    timeline = data.timeline(source_id)
    assert [(t.track_id, t.rows) for t in timeline.tracks] == [(1, 3)] and timeline.total_tracks == 1
    assert [(s.track_id, s.frames, s.provisional) for s in data.track_summaries(source_id)] == [(1, 3, True)]
    assert data.timeline(source_id, track_id=2).tracks == [] and data.track_summary(source_id, 2) is None

    happy = [0.02, 0.02, 0.02, 0.88, 0.02, 0.02, 0.02]
    with Store(url) as store:  # the aggregator's summaries: none for the short track 2
        store.write_tracks(source_id, [TrackRow(1, 0.0, 0.2, 3, happy, [("happy", 0.0, 0.3)])])
        store.update_source(source_id, status="disconnected")
    assert [(s.track_id, s.provisional) for s in data.track_summaries(source_id)] == [(1, False)]
    assert [s.tracks for s in data.source_summaries() if s.id == source_id] == [1]

    with Store(url) as store:  # stored before the minimum existed: every track, as before
        legacy = store.create_source("camera", "rtsp://cam/2", "hall", "live")
        store.add_faces(legacy, face_rows(1, [0.0, 0.1]) + face_rows(2, [0.1]), {"faces": 3, "frames_analysed": 2})
    assert [t.track_id for t in data.timeline(legacy).tracks] == [1, 2]


def test_dsd013_source_token_changes_with_progress(tmp_path):
    url = f"sqlite:///{tmp_path / 'token.db'}"
    with Store(url) as store:
        source_id = store.create_source("video", "/a.mp4", "a.mp4", "analysing", expected_frames=10)
        before = source_token(store.source(source_id))
        store.add_faces(source_id, face_rows(1, [0.0]), {"faces": 1, "frames_analysed": 1})
        assert source_token(store.source(source_id)) != before


def test_dsd014_summaries_delete_and_events(hour_store, tmp_path):
    url = f"sqlite:///{tmp_path / 'small.db'}"
    with Store(url) as store:
        keep = write_synthetic_source(store, duration_s=20.0, tracks=2, name="keep.mp4")
        drop = write_synthetic_source(store, duration_s=10.0, tracks=1, name="drop.mp4")
        camera = store.create_source("camera", "rtsp://127.0.0.1:8554/door", "door", "connecting")
        store.add_event(keep, "alert", "track 1 angry", {"track_id": 1})
        store.add_event(None, "system", "started")
    data = DashboardData(url)
    summaries = {s.name: s for s in data.source_summaries()}
    assert summaries["door"].expected_frames == 0  # NULL in the store
    assert summaries["door"].tracks is None
    data.delete_source(camera)
    assert summaries["keep.mp4"].tracks == 2 and summaries["keep.mp4"].faces == 400
    assert sum(summaries["keep.mp4"].emotion_mix.values()) == pytest.approx(1.0, abs=1e-6)
    events = data.events()
    assert events["message"].tolist() == ["started", "track 1 angry"]
    assert events["source_name"].tolist() == ["", "keep.mp4"]
    data.delete_source(drop)
    assert [s.name for s in data.source_summaries()] == ["keep.mp4"]
    assert data.timeline(drop) is None


# --- figures, ids, colours ------------------------------------------------------------------
def test_dsd021_one_distinct_colour_per_emotion_and_unique_ids():
    assert set(EMOTION_COLOURS) == set(EMOTIONS)
    assert len(set(EMOTION_COLOURS.values())) == len(EMOTIONS)
    values = [value for name, value in vars(ids).items() if name.isupper()]
    assert len(values) == len(set(values))


# --- uploads, auth and the bind rule --------------------------------------------------------
def test_dsd030_uploads_are_sanitised_and_checked(tmp_path):
    assert safe_filename("../../etc/passwd") == "passwd"
    assert safe_filename("C:\\clips\\my clip (1).mp4") == "my_clip_1_.mp4"
    jobs = AnalysisJobs("sqlite:///unused.db", tmp_path)
    with pytest.raises(UploadError, match="not a video or image"):
        jobs.submit("notes.txt", b"hello")
    with pytest.raises(UploadError, match="empty"):
        jobs.submit("clip.mp4", b"")
    command = analyse_command(tmp_path / "clip.mp4", tmp_path / "out")
    assert command[1:5] == ["-m", "emojimation", "analyse", str(tmp_path / "clip.mp4")]
    assert command[5:] == ["--out", str(tmp_path / "out"), "--no-progress", "--thumbnails"]
    # The store URL (a PostgreSQL password, perhaps) goes by environment: argv is public to every user.
    store = "postgresql://u:pw@db/x"
    env = analyse_environment(store, {"EMOJIMATION_DASHBOARD_AUTH": "ann:pw", "PATH": "/bin"})
    assert env["EMOJIMATION_STORE"] == store and "EMOJIMATION_DASHBOARD_AUTH" not in env and env["PATH"] == "/bin"
    assert not any(store in part for part in command)


def test_dsd031_credentials_parsing():
    assert parse_credentials("ann:se:cret") == ("ann", "se:cret")
    for bad in ("ann", ":pw", "ann:"):
        with pytest.raises(ValueError):
            parse_credentials(bad)
    header = "Basic " + base64.b64encode(b"ann:pw").decode()
    assert _offered(header) == ("ann", "pw")
    assert _offered("Bearer abc") is None and _offered("Basic !!!") is None and _offered(None) is None


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.3.2.1", True), ("localhost", True), ("::1", True), ("[::1]", True),
    ("0.0.0.0", False), ("192.168.1.20", False), ("::", False), ("example.org", False),
])
def test_dsd032_loopback_detection(host, loopback):
    assert is_loopback(host) is loopback
    assert (bind_problem(host, has_auth=False, no_auth=False) is None) is loopback
    assert bind_problem(host, has_auth=True, no_auth=False) is None
    assert bind_problem(host, has_auth=False, no_auth=True) is None
