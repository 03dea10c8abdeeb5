"""Nothing lost when a stage dies or hangs (issue 14), with real processes: `analyse` restarts
killed and hung stages and its results equal an undisturbed run's; a run killed outright
continues with `--resume` and writes the same outputs, with no duplicate rows."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from bench.synthetic import SHARED_DATA, require_shared_data
from core.store import Store
from helpers_processes import ProcessMarker, stage_processes

SOURCE = SHARED_DATA / "videos" / "WolfgangLanger_Pexels.mp4"  # 19.7 s, one face throughout
VICTIMS = ("detector", "classifier", "aggregator")


def make_clip(path: Path, seconds: float) -> Path:
    """`seconds` of the source, looped, at 320x180 (small: the test is about delivery, not pixels)."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", "3", "-i", str(SOURCE), "-t", str(seconds),
                    "-vf", "scale=320:180", "-an", "-c:v", "libx264", "-preset", "veryfast", str(path)], check=True)
    return path


def command(clip: Path, out: Path, store: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "emojimation", "analyse", "--no-progress", str(clip), "--every-frame",
            "--workers", "2", "--out", str(out), "--store", store, *extra]


def run(args: list[str], marker: ProcessMarker, home: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout,
                            env=marker.env(EMOJIMATION_HOME=str(home)))
    marker.assert_none_left(what="by `emojimation analyse`")
    return result


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A 59 s clip and an 8 s clip, each with its undisturbed run's outputs."""
    require_shared_data()
    folder = tmp_path_factory.mktemp("fault-clips")
    made = {}
    for name, seconds in (("long", 59), ("short", 8)):
        clip = make_clip(folder / f"{name}.mp4", seconds)
        out = folder / f"{name}-out"
        result = run(command(clip, out, f"sqlite:///{folder}/{name}.db"), ProcessMarker(), folder)
        assert result.returncode == 0, result.stderr[-2000:]
        made[name] = (clip, out)
    return made


def assert_same_outputs(out: Path, expected: Path) -> None:
    """Same frames, boxes, tracks and emotions; probabilities equal to float32 precision."""
    for name in ("detections.csv", "tracks.csv"):
        got, want = pd.read_csv(out / name), pd.read_csv(expected / name)
        assert list(got.columns) == list(want.columns) and len(got) == len(want), name
        numbers = got.select_dtypes("number").columns
        exact = [c for c in numbers if c.startswith(("frame", "track_id", "x", "y", "w", "h", "time_s", "start_s",
                                                     "end_s", "frames"))]
        pd.testing.assert_frame_equal(got[exact], want[exact], check_exact=True, obj=name)
        np.testing.assert_allclose(got[numbers].to_numpy(float), want[numbers].to_numpy(float), atol=1e-5)
        text = [c for c in got.columns if c not in numbers and c != "input"]
        pd.testing.assert_frame_equal(got[text], want[text], obj=name)
    [got], [want] = (json.loads((folder / "summary.json").read_text())["inputs"] for folder in (out, expected))
    probs = [[track.pop("mean_probs") for track in entry["tracks"]] for entry in (got, want)]
    got.pop("input"), want.pop("input")
    assert got == want
    assert np.allclose(*(pd.DataFrame(p).to_numpy(float) for p in probs), atol=1e-5)


def assert_no_duplicate_rows(store_url: str) -> None:
    with Store(store_url) as store:
        sources = store.sources()
        assert list(sources["status"]) == ["done"], sources[["id", "status"]]
        faces = store.faces(int(sources["id"].iloc[0]))
        assert not faces.duplicated(["frame", "track_id"]).any()


@contextmanager
def cleaned_up_on_failure(process: subprocess.Popen, marker: ProcessMarker) -> Iterator[None]:
    """Kill the run and everything it started if the block fails; after a success nothing is
    killed, so the leftover check that follows sees whatever the run left."""
    try:
        yield
    except BaseException:
        if process.poll() is None:
            process.kill()
        marker.kill_all()
        raise


def assert_lost_nothing(process: subprocess.Popen, stderr: str, marker: ProcessMarker, out: Path, expected: Path,
                        store: str, what: str) -> pd.DataFrame:
    """A disturbed run exited 0, left no process, and wrote an undisturbed run's outputs with
    no duplicate rows; returns the store's events."""
    assert process.returncode == 0, stderr[-3000:]
    marker.assert_none_left(what=what)
    assert_same_outputs(out, expected)
    assert_no_duplicate_rows(store)
    with Store(store) as opened:
        return opened.events()


def stored_frames(store_url: str) -> int:
    try:
        with Store(store_url, migrate=False) as store:
            return int(store.sources()["frames_analysed"].sum())
    except Exception:  # noqa: BLE001 - the aggregator has not created the schema yet
        return 0


def test_chaos_killed_and_hung_stages_lose_nothing(clips, tmp_path):
    """SIGKILL a random detector, classifier or aggregator about every second, and SIGSTOP one stage
    once for good: the run exits 0 with an undisturbed run's detections, and leaves no process."""
    clip, expected = clips["long"]
    marker = ProcessMarker()
    store = f"sqlite:///{tmp_path}/chaos.db"
    process = subprocess.Popen(command(clip, tmp_path / "out", store, "--heartbeat-timeout-s", "6"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=marker.env(EMOJIMATION_HOME=str(tmp_path)))
    rng = random.Random(14)
    kills: dict[tuple[str, ...], int] = {}  # per stage process (its argv names its addresses)
    stopped: int | None = None
    with cleaned_up_on_failure(process, marker):
        while stored_frames(store) == 0 and process.poll() is None:
            time.sleep(0.2)
        while process.poll() is None:
            time.sleep(rng.uniform(0.7, 1.4))  # (the 59 s clip takes about 10 s undisturbed)
            running = [p for stage in VICTIMS for p in stage_processes(marker.processes(), stage)
                       if kills.get(p.argv, 0) < 3 and p.pid != stopped]  # within the restart budget
            if not running or process.poll() is not None:
                continue
            victim = rng.choice(running)
            kills[victim.argv] = kills.get(victim.argv, 0) + 1
            if stopped is None and sum(kills.values()) == 3:
                stopped = victim.pid
                os.kill(victim.pid, signal.SIGSTOP)  # never resumed: the supervisor must notice the hang
            else:
                os.kill(victim.pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=300)
    assert sum(kills.values()) >= 5 and stopped is not None, kills
    events = assert_lost_nothing(process, stderr, marker, tmp_path / "out", expected, store, "after the chaos run")
    assert {"stage-restarted", "stage-hung"} <= set(events["kind"]), set(events["kind"])


def test_killed_zygote_loses_nothing(clips, tmp_path):
    """The stages are forked by one zygote process (emojimation.zygote): SIGKILL it mid-run and
    every stage goes with it; the supervisor starts a new zygote and the stages again, and the
    run exits 0 with an undisturbed run's outputs, leaving no process."""
    clip, expected = clips["long"]
    marker = ProcessMarker()
    store = f"sqlite:///{tmp_path}/zygote.db"
    process = subprocess.Popen(command(clip, tmp_path / "out", store), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=marker.env(EMOJIMATION_HOME=str(tmp_path)))
    with cleaned_up_on_failure(process, marker):
        while stored_frames(store) < 200 and process.poll() is None:
            time.sleep(0.1)
        [zygote] = [p for p in marker.processes() if p.ppid == process.pid and "emojimation.zygote" in p.argv]
        stages = [p for p in marker.processes() if p.ppid == zygote.pid]
        assert {stage for p in stages for stage in VICTIMS if stage in p.argv} == set(VICTIMS), [str(p) for p in stages]
        os.kill(zygote.pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=300)
    events = assert_lost_nothing(process, stderr, marker, tmp_path / "out", expected, store,
                                 "after the zygote was killed")
    assert (events["kind"] == "stage-restarted").sum() >= len(VICTIMS), events


@pytest.mark.parametrize("kill_at, whole_tree", [(0.1, False), (0.5, True), (0.9, False)])
def test_killed_run_resumes_to_the_same_outputs(clips, tmp_path, kill_at, whole_tree):
    """SIGKILL `analyse`'s process group (or every process of the run at once) at a point of the
    run, then the same command with --resume: the same outputs as an undisturbed run, no
    duplicate rows, and meanwhile no source that looks complete."""
    clip, expected = clips["short"]
    marker = ProcessMarker()
    store = f"sqlite:///{tmp_path}/resume.db"
    args = command(clip, tmp_path / "out", store)
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                               env=marker.env(EMOJIMATION_HOME=str(tmp_path)))
    total = json.loads((expected / "summary.json").read_text())["inputs"][0]["frames_analysed"]
    try:
        while stored_frames(store) < kill_at * total and process.poll() is None:
            time.sleep(0.05)
        assert process.poll() is None, "the run ended before its kill point"
        os.killpg(process.pid, signal.SIGKILL)
        if whole_tree:
            marker.kill_all()
        process.wait(10)
        assert not marker.wait_gone(20)
    finally:
        marker.kill_all()
    assert not (tmp_path / "out" / "summary.json").exists()
    with Store(store) as opened:
        [source] = opened.sources().to_dict("records")
    assert source["status"] != "done" or source["frames_analysed"] == total  # done only when complete
    result = run(args + ["--resume"], marker, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_outputs(tmp_path / "out", expected)
    assert_no_duplicate_rows(store)
    with Store(store) as opened:
        resumed = opened.events().query("kind == 'run-resumed'")
    assert len(resumed) == (source["status"] != "done"), resumed


def test_restarts_resends_and_resumes_are_prometheus_counters():
    """A restarted stage learns its restart count from its config (EMOJIMATION_RESTARTS, set by
    the supervisor on respawn); ingest counts frames sent again, the aggregator resumed streams."""
    from prometheus_client import generate_latest

    from core import config as cfg
    from core.metrics import Counters, StageMetrics

    os.environ["EMOJIMATION_RESTARTS"] = "2"
    try:
        restarts = cfg.load(cfg.IngestConfig, "ingest", None, {}).restarts
    finally:
        del os.environ["EMOJIMATION_RESTARTS"]
    counters = Counters(restarts=restarts, resent=5, resumed=1)
    text = generate_latest(StageMetrics("ingest", counters).registry).decode()
    for line in ('emojimation_restarts_total{stage="ingest"} 2.0', 'emojimation_frames_resent_total{stage="ingest"} 5.0',
                 'emojimation_streams_resumed_total{stage="ingest"} 1.0'):
        assert line in text, text


def test_sources_page_shows_an_interrupted_run_with_its_resume_command(tmp_path):
    """Interrupted (the aggregator marked it) or left `analysing` by a run killed outright: shown
    as interrupted with the command that resumes it; a running analysis is not."""
    from dashboard.app import create_app
    from dashboard.data import current
    from dashboard.pages import sources

    url = f"sqlite:///{tmp_path}/dash.db"
    with Store(url) as store:
        store.create_source("video", "/v/a.mp4", "a.mp4", "interrupted", options={"resume": "emojimation analyse a --resume"})
        killed = store.create_source("video", "/v/b.mp4", "b.mp4", "analysing",
                                     options={"resume": "emojimation analyse b --resume"})
        store.db.execute("UPDATE sources SET updated_at = ? WHERE id = ?", (time.time() - 600, killed))
        store.create_source("video", "/v/c.mp4", "c.mp4", "analysing", options={"resume": "emojimation analyse c --resume"})
    app = create_app(url)
    with app.server.app_context():
        page = str(sources.sources_table(current().source_summaries()))
    assert "analyse a --resume" in page and "analyse b --resume" in page and "analyse c --resume" not in page
