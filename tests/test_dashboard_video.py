"""The source page's video (issue 20): played in real headless Chromium, served over real HTTP.

The store is written once by the real pipeline (`emojimation analyse --annotate --thumbnails` on the
shared sample clip). The browser tests drive Debian's chromium through dash[testing] as
tests/test_dashboard_browser.py does, and press the mouse with Chromium's own input events (CDP
`Input.dispatchMouseEvent`), so Plotly and the page see a real click or drag. The HTTP tests read
`/video/<id>.mp4` from the real `emojimation dashboard` process (waitress) with plain urllib.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from dash.testing.wait import until

from dashboard import ids
from dashboard.app import create_app
from core.store import Store
from helpers_processes import copy_sqlite_store

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:HTTPResponse.getheader:DeprecationWarning"),
]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
MEGAMIND = PROJECT_ROOT.parent / "shared" / "data" / "videos" / "megamind.avi"
TRANSCODE_TIMEOUT_S = 120.0  # an 11 s clip on a busy 2-core machine (about 2 s when idle)
PLAY_TIMEOUT_S = 30.0

# The figure's first x axis and the cursor, in viewport pixels and seconds.
GEOMETRY_JS = """
const outer = document.getElementById(arguments[0]);
const gd = outer && outer.querySelector('.js-plotly-plot');
const video = document.getElementById(arguments[1]);
const cursor = document.getElementById(arguments[2]);
if (!gd || !gd._fullLayout || !gd._fullLayout.xaxis || !video) { return null; }
const layout = gd._fullLayout, xa = layout.xaxis, box = gd.getBoundingClientRect();
const ribbon = layout.yaxis, lines = layout.yaxis2;
const c = cursor.getBoundingClientRect();
return {
  left: box.left + xa._offset, width: xa._length, range: [xa.range[0], xa.range[1]],
  ribbonY: box.top + ribbon._offset + ribbon._length / 2, linesY: box.top + lines._offset + lines._length / 2,
  currentTime: video.currentTime, duration: video.duration, paused: video.paused, readyState: video.readyState,
  cursorTime: cursor.dataset.time === undefined ? null : Number(cursor.dataset.time),
  cursorShown: getComputedStyle(cursor).display !== 'none', cursorX: c.left + c.width / 2,
  cursorTop: c.top, cursorBottom: c.bottom, plotTop: box.top + layout._size.t,
  plotBottom: box.top + layout._size.t + layout._size.h,
};
"""


# --- fixtures --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def annotated_store(tmp_path_factory) -> Path:
    """A store and outputs written by the real pipeline with --annotate and --thumbnails."""
    if not MEGAMIND.is_file():
        pytest.fail(f"{MEGAMIND}: shared sample clip missing; see ../shared/data/README.md", pytrace=False)
    folder = tmp_path_factory.mktemp("dashboard-video")
    database = folder / "pipeline.db"
    result = subprocess.run(
        [sys.executable, "-m", "emojimation", "analyse", str(MEGAMIND), "--store", f"sqlite:///{database}",
         "--out", str(folder / "out"), "--no-progress", "--thumbnails", "--annotate"],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return database


@pytest.fixture
def store_url(annotated_store, tmp_path) -> str:
    """A private copy of the store for one test (tests change it)."""
    return copy_sqlite_store(annotated_store, tmp_path)


def the_source(url: str) -> dict[str, Any]:
    with Store(url) as store:
        return store.source(int(store.sources()["id"].iloc[0]))


def open_page(dash_duo, url: str, tmp_path: Path, path: str) -> None:
    dash_duo.start_server(create_app(url, video_cache_dir=tmp_path / "video-cache"))
    dash_duo.wait_for_page(dash_duo.server_url + path)


def geometry(dash_duo) -> dict[str, Any] | None:
    return dash_duo.driver.execute_script(GEOMETRY_JS, ids.TIMELINE_GRAPH, ids.TIMELINE_VIDEO, ids.TIMELINE_CURSOR)


def wait_geometry(dash_duo, check, timeout: float = 20.0, message: str = "") -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def ready() -> bool:
        found = geometry(dash_duo)
        if found is not None:
            seen.clear()
            seen.update(found)
        return found is not None and bool(check(found))

    until(ready, timeout, msg=f"{message}: last seen {seen}")
    return seen


def x_of(found: dict[str, Any], seconds: float) -> float:
    low, high = found["range"]
    return found["left"] + (seconds - low) / (high - low) * found["width"]


def mouse(dash_duo, kind: str, x: float, y: float) -> None:
    """A real mouse event from Chromium's input pipeline (pointer and mouse events, trusted)."""
    dash_duo.driver.execute_cdp_cmd("Input.dispatchMouseEvent", {
        "type": kind, "x": x, "y": y, "button": "left", "buttons": 1 if kind != "mouseReleased" else 0,
        "clickCount": 1 if kind in ("mousePressed", "mouseReleased") else 0})


def click_at(dash_duo, x: float, y: float) -> None:
    mouse(dash_duo, "mouseMoved", x, y)
    mouse(dash_duo, "mousePressed", x, y)
    mouse(dash_duo, "mouseReleased", x, y)


def play(dash_duo) -> None:
    dash_duo.driver.execute_script(
        "const v = document.getElementById(arguments[0]); v.muted = true; v.play();", ids.TIMELINE_VIDEO)


def pause(dash_duo) -> None:
    dash_duo.driver.execute_script("document.getElementById(arguments[0]).pause();", ids.TIMELINE_VIDEO)


def assert_console_clean(dash_duo) -> None:
    assert dash_duo.get_logs() == [], "browser console should contain no error"
    # Leave the page, so no video request or poll is still running when the test server stops.
    dash_duo.driver.get("about:blank")


# --- the browser -----------------------------------------------------------------------------
def test_dvi001_annotated_video_plays_the_cursor_follows_and_a_click_seeks(dash_duo, store_url, tmp_path):
    source = the_source(store_url)
    assert str(source["annotated_video"]).endswith("megamind.annotated.mp4") and Path(source["annotated_video"]).is_file()
    open_page(dash_duo, store_url, tmp_path, f"/source/{source['id']}")
    dash_duo.wait_for_contains_text(f"#{ids.TIMELINE_VIDEO_BOX}", "annotated video")
    found = wait_geometry(dash_duo, lambda g: g["readyState"] >= 1 and g["duration"] > 10,
                          message="the annotated video did not load")
    assert found["duration"] == pytest.approx(float(source["duration_s"]), abs=0.5)

    play(dash_duo)  # it plays: currentTime advances
    found = wait_geometry(dash_duo, lambda g: g["currentTime"] > 1.0, PLAY_TIMEOUT_S, "the video did not play")
    pause(dash_duo)
    found = wait_geometry(dash_duo, lambda g: g["paused"] and g["cursorTime"] == pytest.approx(g["currentTime"],
                                                                                                abs=0.002))
    # The cursor follows: it stands at the video's time on the axis, over the whole plot height.
    assert found["cursorShown"]
    assert found["cursorX"] == pytest.approx(x_of(found, found["currentTime"]), abs=2.0)
    assert found["cursorTop"] == pytest.approx(found["plotTop"], abs=2.0)
    assert found["cursorBottom"] == pytest.approx(found["plotBottom"], abs=2.0)

    # A click on a track's curves seeks the video to the time under the pointer; the zoom stays.
    range_before = found["range"]
    click_at(dash_duo, x_of(found, 6.0), found["linesY"])
    found = wait_geometry(dash_duo, lambda g: abs(g["currentTime"] - 6.0) < 0.1, message="the click did not seek")
    found = wait_geometry(dash_duo, lambda g: g["cursorTime"] == pytest.approx(g["currentTime"], abs=0.002))
    assert found["cursorX"] == pytest.approx(x_of(found, 6.0), abs=2.0)
    assert found["range"] == pytest.approx(range_before)

    # A drag along the ribbon scrubs: the video follows the pointer, and the timeline does not zoom.
    y = found["ribbonY"]
    mouse(dash_duo, "mouseMoved", x_of(found, 2.0), y)
    mouse(dash_duo, "mousePressed", x_of(found, 2.0), y)
    wait_geometry(dash_duo, lambda g: abs(g["currentTime"] - 2.0) < 0.1, message="pressing the ribbon did not seek")
    for seconds in (2.5, 3.0, 3.5, 4.0):
        mouse(dash_duo, "mouseMoved", x_of(found, seconds), y)
    mouse(dash_duo, "mouseReleased", x_of(found, 4.0), y)
    found = wait_geometry(dash_duo, lambda g: abs(g["currentTime"] - 4.0) < 0.1, message="the drag did not scrub")
    assert found["range"] == pytest.approx(range_before)

    # A drag on the curves still zooms every track, and does not move the video.
    x_start, x_end = x_of(found, 5.0), x_of(found, 8.0)
    mouse(dash_duo, "mouseMoved", x_start, found["linesY"])
    mouse(dash_duo, "mousePressed", x_start, found["linesY"])
    for step in range(1, 9):
        mouse(dash_duo, "mouseMoved", x_start + (x_end - x_start) * step / 8, found["linesY"])
    mouse(dash_duo, "mouseReleased", x_end, found["linesY"])
    zoomed = wait_geometry(dash_duo, lambda g: g["range"][1] - g["range"][0] < 4.0, message="the drag did not zoom")
    assert zoomed["range"] == pytest.approx([5.0, 8.0], abs=0.1)
    assert zoomed["currentTime"] == pytest.approx(4.0, abs=0.1)
    assert not zoomed["cursorShown"]  # 4.0 s is left of the zoomed window
    dash_duo.wait_for_contains_text(f"#{ids.TIMELINE_RANGE_LABEL}", "5.0 s – 8.0 s")  # the server redrew the zoom
    assert_console_clean(dash_duo)


def test_dvi002_each_track_has_its_thumbnail_and_a_button_to_its_first_appearance(dash_duo, store_url, tmp_path):
    source = the_source(store_url)
    with Store(store_url) as store:
        tracks = store.tracks(int(source["id"]))
    assert tracks["thumbnail"].notna().all()  # --thumbnails: one per track
    open_page(dash_duo, store_url, tmp_path, f"/source/{source['id']}")
    wait_geometry(dash_duo, lambda g: g["readyState"] >= 1, message="the video did not load")
    cards = dash_duo.find_elements(f"#{ids.TIMELINE_TRACKS} .track-card")
    assert len(cards) == len(tracks)
    assert len(dash_duo.find_elements(f"#{ids.TIMELINE_TRACKS} img.thumb")) == len(tracks)
    # ... and on the timeline itself, beside each track's title (one drawn <image> per track).
    faces = dash_duo.driver.execute_script(
        "const g = document.querySelector('#' + arguments[0] + ' .js-plotly-plot');"
        "return [g._fullLayout.images.map(i => i.name),"
        " g.querySelectorAll('.layer-above .imagelayer image, .imagelayer image').length];", ids.TIMELINE_GRAPH)
    assert sorted(faces[0]) == sorted(f"track {int(t)} face" for t in tracks["track_id"])
    assert faces[1] == len(tracks)
    buttons = dash_duo.find_elements(f"#{ids.TIMELINE_TRACKS} .jump-button")
    assert len(buttons) == len(tracks)
    last = tracks.sort_values("start_s").iloc[-1]  # the latest first appearance: a real jump from 0
    assert float(last["start_s"]) > 1.0
    card = dash_duo.find_element(f"#{ids.TIMELINE_TRACKS} .track-card:nth-child({int(tracks.index.get_loc(last.name)) + 1})")
    assert f"Track {int(last['track_id'])}" in card.text
    dash_duo.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", card)
    card.find_element("css selector", ".jump-button").click()
    found = wait_geometry(dash_duo, lambda g: abs(g["currentTime"] - float(last["start_s"])) < 0.05,
                          message="the button did not jump to the track's first appearance")
    assert found["cursorTime"] == pytest.approx(float(last["start_s"]), abs=0.05)
    assert_console_clean(dash_duo)


def test_dvi003_without_annotated_video_the_original_is_transcoded_once_and_plays(dash_duo, store_url, tmp_path):
    source = the_source(store_url)
    with Store(store_url) as store:
        store.update_source(int(source["id"]), annotated_video=None)
    open_page(dash_duo, store_url, tmp_path, f"/source/{source['id']}")
    # "Preparing" while ffmpeg runs, then the player (the page swaps it in by itself).
    wait_geometry(dash_duo, lambda g: g["readyState"] >= 1 and g["duration"] > 10, TRANSCODE_TIMEOUT_S,
                  "the transcoded original never appeared")
    dash_duo.wait_for_contains_text(f"#{ids.TIMELINE_VIDEO_BOX}", "original video")
    cached = list((tmp_path / "video-cache").glob("*.mp4"))
    assert len(cached) == 1
    assert (tmp_path / "video-cache").stat().st_mode & 0o777 == 0o700 and cached[0].stat().st_mode & 0o777 == 0o600
    probe = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                            "stream=codec_name,pix_fmt", "-of", "json", str(cached[0])],
                           capture_output=True, text=True, check=True)
    assert json.loads(probe.stdout)["streams"][0] == {"codec_name": "h264", "pix_fmt": "yuv420p"}
    modified = cached[0].stat().st_mtime_ns
    play(dash_duo)
    wait_geometry(dash_duo, lambda g: g["currentTime"] > 1.0, PLAY_TIMEOUT_S, "the transcoded video did not play")
    pause(dash_duo)
    # Opening the page again uses the cache: no second transcode.
    dash_duo.wait_for_page(f"{dash_duo.server_url}/source/{source['id']}")
    wait_geometry(dash_duo, lambda g: g["readyState"] >= 1, message="the cached video did not load")
    assert [p.stat().st_mtime_ns for p in (tmp_path / "video-cache").glob("*.mp4")] == [modified]
    assert_console_clean(dash_duo)


def test_dvi004_a_missing_file_shows_the_message(dash_duo, store_url, tmp_path):
    source = the_source(store_url)
    gone = tmp_path / "moved-away" / "megamind.avi"
    with Store(store_url) as store:
        store.db.execute("UPDATE sources SET uri = ?, annotated_video = ? WHERE id = ?",
                         (str(gone), str(tmp_path / "deleted.annotated.mp4"), int(source["id"])))
    open_page(dash_duo, store_url, tmp_path, f"/source/{source['id']}")
    dash_duo.wait_for_contains_text(f"#{ids.TIMELINE_VIDEO_MESSAGE}", "The video file is gone")
    assert str(gone) in dash_duo.find_element(f"#{ids.TIMELINE_VIDEO_MESSAGE}").text
    assert not dash_duo.find_elements(f"#{ids.TIMELINE_VIDEO}")
    assert not dash_duo.find_elements(f"#{ids.TIMELINE_TRACKS} .jump-button")  # nothing to jump in
    # The timelines are still there.
    until(lambda: dash_duo.driver.execute_script(
        "const g = document.querySelector('#' + arguments[0] + ' .js-plotly-plot');"
        "return !!(g && g._fullData && g._fullData.length);", ids.TIMELINE_GRAPH), 20)
    assert not (tmp_path / "video-cache").exists()  # nothing transcoded
    assert_console_clean(dash_duo)


# --- plain HTTP: the real `emojimation dashboard` process (waitress) -------------------------
def request(url: str, headers: dict[str, str] | None = None, method: str = "GET") -> tuple[int, Any, bytes]:
    req = urllib.request.Request(url, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read()


@pytest.fixture
def served(store_url, tmp_path):
    """The command as a user runs it, with --auth, on a free loopback port: (base URL, source row)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_dashboard_cli import dashboard_command, run_env, stop  # noqa: E402

    env = {**run_env(tmp_path), "EMOJIMATION_DASHBOARD_AUTH": "ann:pw"}
    process = subprocess.Popen(dashboard_command("--port", "0", "--store", store_url), cwd=PROJECT_ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if "http://" not in line:
        process.kill()
        pytest.fail(f"dashboard did not start: {line!r} {process.stderr.read()}")
    try:
        yield "http://" + line.split("http://", 1)[1].split()[0], the_source(store_url)
    finally:
        stop(process)


AUTH = {"Authorization": "Basic " + base64.b64encode(b"ann:pw").decode()}


def test_dvi005_range_requests_return_the_right_bytes(served):
    base, source = served
    url = f"{base}/video/{source['id']}.mp4"
    content = Path(source["annotated_video"]).read_bytes()
    size = len(content)

    status, headers, body = request(url, AUTH)
    assert status == 200 and body == content
    assert headers["Accept-Ranges"] == "bytes" and headers["Content-Type"] == "video/mp4"
    assert int(headers["Content-Length"]) == size

    cases = {
        "bytes=0-0": (0, 0),
        "bytes=100-199": (100, 199),
        f"bytes={size // 2}-": (size // 2, size - 1),  # a seek to the middle: the rest of the file
        "bytes=-500": (size - 500, size - 1),  # the last 500 bytes (where a player looks for the index)
        f"bytes={size - 10}-{size + 1000}": (size - 10, size - 1),  # an end past the file is cut to it
    }
    for header, (first, last) in cases.items():
        status, headers, body = request(url, {**AUTH, "Range": header})
        assert status == 206, header
        assert headers["Content-Range"] == f"bytes {first}-{last}/{size}", header
        assert int(headers["Content-Length"]) == last - first + 1 and body == content[first:last + 1], header
        assert headers["Accept-Ranges"] == "bytes"

    status, headers, _ = request(url, {**AUTH, "Range": f"bytes={size}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{size}"
    status, headers, body = request(url, {**AUTH, "Range": "bytes=100-199"}, method="HEAD")
    assert status == 206 and headers["Content-Range"] == f"bytes 100-199/{size}" and body == b""


def test_dvi006_video_is_served_by_id_behind_auth_and_the_host_check(served):
    base, source = served
    url = f"{base}/video/{source['id']}.mp4"
    status, headers, body = request(url, {"Range": "bytes=0-99"})  # no credentials
    assert status == 401 and "Basic" in headers["WWW-Authenticate"] and b"ftyp" not in body
    status, _, _ = request(url, {**AUTH, "Range": "bytes=0-99", "Host": "rebound.example"})
    assert status == 403
    status, _, body = request(f"{base}/video/{int(source['id']) + 100}.mp4", AUTH)
    assert status == 404 and body.startswith(b"No such source")
    # Only an id is accepted: a path in the request is never opened.
    for path in ("/video/..%2F..%2Fetc%2Fpasswd", "/video/%2Fetc%2Fpasswd.mp4", "/video/-1.mp4",
                 f"/video/{source['id']}.mp4/../../etc/passwd"):
        status, _, body = request(base + path, AUTH)
        assert status == 404 or b"ftyp" not in body, path
        assert b"root:" not in body, path


# --- cameras: the newest annotated frame, only with `monitor --live-view` ---------------------
def test_dvi007_camera_page_shows_the_newest_frame_only_with_live_view(dash_duo, tmp_path):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_monitor import HANG_S, MonitorProcess, wait_for  # noqa: E402

    if not MEGAMIND.is_file():
        pytest.fail(f"{MEGAMIND}: shared sample clip missing; see ../shared/data/README.md", pytrace=False)
    camera = f"lobby={MEGAMIND}"  # a looping file stands in for a camera
    started: list[Any] = []
    try:
        # Off by default: rows are stored, images are not.
        monitor = MonitorProcess(tmp_path, camera, "--loop")
        started.append(monitor)
        monitor.wait_ready()
        wait_for(lambda: monitor.face_count("lobby") > 5, HANG_S, "face rows")
        source_id = int(monitor.camera("lobby")["id"])
        with monitor.store() as store:
            assert store.live_frame(source_id) is None
        dash_duo.start_server(create_app(monitor.store_url, video_cache_dir=tmp_path / "video-cache"))
        dash_duo.wait_for_page(f"{dash_duo.server_url}/source/{source_id}")
        dash_duo.wait_for_contains_text(f"#{ids.TIMELINE_LIVE_BOX}", "Live view is off")
        monitor.stop()

        # With --live-view the page shows the newest annotated frame and follows it.
        monitor = MonitorProcess(tmp_path, camera, "--loop", "--live-view", "--live-view-every-s", "0.5")
        started.append(monitor)
        monitor.wait_ready()
        image = f"#{ids.TIMELINE_LIVE_IMAGE}"
        shown = "const i = document.querySelector(arguments[0]); return i && i.complete && i.naturalWidth > 0 " \
                "? [i.naturalWidth, i.naturalHeight, i.dataset.at] : null;"
        first = until(lambda: dash_duo.driver.execute_script(shown, image), HANG_S, msg="no live frame shown")
        # megamind.avi is 720x528; a camera's preview frames are scaled to 640 px at most.
        assert first[0] == 640 and abs(first[1] - 528 * 640 / 720) <= 2
        until(lambda: (dash_duo.driver.execute_script(shown, image) or first)[2] != first[2], HANG_S,
              msg="the live frame was not refreshed")
        status, headers, body = request(f"{dash_duo.server_url}/live/{source_id}.jpg")
        assert status == 200 and headers["Content-Type"] == "image/jpeg" and headers["Cache-Control"] == "no-store"
        import cv2
        import numpy as np

        decoded = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
        assert decoded is not None and decoded.shape[:2] == (first[1], first[0])
        assert dash_duo.driver.execute_script("return document.querySelector(arguments[0]).src;", image) \
            .split("?")[0].endswith(f"/live/{source_id}.jpg")

        # When the monitor stops, the kept frame is deleted and the page says the view is off.
        monitor.stop()
        with Store(monitor.store_url) as store:
            assert store.live_frame(source_id) is None
        dash_duo.wait_for_contains_text(f"#{ids.TIMELINE_LIVE_BOX}", "Live view is off", timeout=HANG_S)
        assert request(f"{dash_duo.server_url}/live/{source_id}.jpg")[0] == 404
        assert_console_clean(dash_duo)
    finally:
        for monitor in started:
            monitor.kill()
