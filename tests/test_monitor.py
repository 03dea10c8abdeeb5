"""`emojimation monitor` against real camera servers on 127.0.0.1: GStreamer's RTSP server,
an HTTP MJPEG stream, an HLS playlist written live by ffmpeg, and a webhook receiver.

Every server and monitor here is a real process or socket; each test stops what it starts,
and every wait is bounded by a deadline. The deadlines only catch a hang: how fast rows arrive
or the monitor stops is for bench/, not asserted here (a loaded two-core machine is slow).
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.synthetic import background, compose_clip, paste, require_shared_data, val_faces
from detector.backends import make_detector
from emojimation.annotate import EMOTION_COLOURS_BGR
from core.config import DEFAULT_DETECTOR
from core.emotions import EMOTIONS
from core.model_io import EmotionModel, default_model
from core.store import Store
from helpers_processes import ProcessMarker, stage_processes

SERVERS = Path(__file__).parent / "servers"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with PyGObject for GStreamer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


LIVE_MONITORS: list["MonitorProcess"] = []


def wait_for(condition, timeout_s: float, what: str, every_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every_s)
    logs = "\n".join(line for m in LIVE_MONITORS for line in m.lines[-25:])
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\nmonitor log:\n{logs}")


def detectable_faces(emotion: str | None, count: int, seed: int = 5) -> list[np.ndarray]:
    """Val faces the default detector finds when pasted at 170 px, and (with `emotion`) that the
    shipped model reads as that emotion with p >= 0.7: the tests below need faces seen for sure."""
    candidates = val_faces(40, seed=seed, emotions=(emotion,) if emotion else tuple(EMOTIONS))
    detector = make_detector(DEFAULT_DETECTOR)
    faces = [face for face, _, _ in candidates]
    if emotion:
        probs = EmotionModel(default_model()).probabilities(np.stack(faces))
        faces = [f for f, p in zip(faces, probs) if p[EMOTIONS.index(emotion)] >= 0.7]
    chosen = []
    for face in faces:
        frame = background(640, 360)
        paste(frame, face, 200, 95, 170)
        if len(detector.detect(frame)[0]) == 1:
            chosen.append(face)
        if len(chosen) == count:
            return chosen
    raise AssertionError(f"only {len(chosen)} usable {emotion or 'val'} faces")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    require_shared_data()
    folder = tmp_path_factory.mktemp("camera-clips")
    mixed = detectable_faces(None, 6)
    compose_clip(folder / "faces.mp4", mixed * 2, [0] * 12, seconds_per_face=5.0, fps=10.0, face_px=170)
    happy = detectable_faces("happy", 1)
    compose_clip(folder / "happy.mp4", happy * 3, [3] * 3, seconds_per_face=4.0, fps=10.0, face_px=170)
    return {"faces": folder / "faces.mp4", "happy": folder / "happy.mp4"}


class RtspServer:
    """GStreamer's RTSP server process serving `clip` at rtsp://127.0.0.1:PORT/cam."""

    def __init__(self, clip: Path) -> None:
        self.clip = clip
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"rtsp://viewer:s3cret@127.0.0.1:{self.port}/cam"

    def start(self) -> None:
        if not Path(SYSTEM_PYTHON).exists():
            raise AssertionError(f"{SYSTEM_PYTHON} missing: scripts/test.sh installs python3-gi and GStreamer")
        self.process = subprocess.Popen([SYSTEM_PYTHON, str(SERVERS / "rtsp_server.py"), str(self.port),
                                         str(self.clip)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline().strip()
        if line != "ready":
            raise AssertionError(f"RTSP server did not start: {line} {self.process.stderr.read()[-500:]}")

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


HANG_S = 60.0  # every wait below: generous, so only a hang fails, never a slow machine
STOP_TIMEOUT_S = HANG_S  # SIGTERM to exit


class MonitorProcess:
    """`emojimation monitor ...` as a user runs it, with its stderr collected. Everything it
    starts carries `tag`'s marker in its environment (tests/helpers_processes.py)."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.store_url = f"sqlite:///{tmp_path / 'monitor.db'}"
        self.marker = str(tmp_path)  # the work folder (TMPDIR), in the stages' socket paths
        self.tag = ProcessMarker()
        environment = self.tag.env(EMOJIMATION_HOME=str(tmp_path), TMPDIR=str(tmp_path), **(env or {}))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "emojimation", "monitor", "--store", self.store_url, "--status-every-s", "3600",
             "--backoff-max-s", "1", "--stall-s", "3", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.stdout = ""
        LIVE_MONITORS[:] = [self]

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line.rstrip())

    def wait_ready(self, timeout_s: float = 60) -> float:
        wait_for(lambda: any("pipeline ready" in line for line in self.lines) or self.process.poll() is not None,
                 timeout_s, "the monitor's 'pipeline ready'")
        assert self.process.poll() is None, "monitor exited:\n" + "\n".join(self.lines[-20:])
        return time.monotonic()

    def store(self) -> Store:
        return Store(self.store_url)

    def camera(self, name: str) -> dict | None:
        with self.store() as store:
            sources = store.sources()
            rows = sources[(sources.kind == "camera") & (sources.name == name)]
            return None if rows.empty else rows.iloc[0].to_dict()

    def face_count(self, name: str, after: float = 0.0) -> int:
        camera = self.camera(name)
        if camera is None:
            return 0
        with self.store() as store:
            faces = store.faces(int(camera["id"]), columns=["captured_at"])
        return int((faces.captured_at > after).sum())

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM, wait for the exit, then check nothing the monitor started is left."""
        self.process.send_signal(signal.SIGTERM)
        try:
            self.stdout, _ = self.process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"monitor did not exit within {timeout_s:g} s of SIGTERM") from None
        self.tag.assert_none_left(what="by the monitor")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.tag.kill_all()


@pytest.fixture
def processes():
    """Everything a test starts, killed at the end whatever happened."""
    started: list = []
    yield started
    for thing in reversed(started):
        thing.kill()


def test_check_config_reports_every_wrong_key(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[monitor]\nfps = 5\nretention_days = 30\n\n[[cameras]]\nname = "door"\n'
                    'url = "rtsp://u:p@127.0.0.1:8554/cam"\n\n[[alerts]]\nname = "angry"\nemotion = "angry"\n'
                    'min_prob = 0.7\nmin_duration_s = 3\nwebhook = "http://127.0.0.1:9/hook"\n')
    result = subprocess.run([sys.executable, "-m", "emojimation", "monitor", "--check-config", str(good)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "1 camera(s), 1 alert rule(s)" in result.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("monitor:\n  fps: fast\n  colour: red\ncameras:\n  - name: door\n    adress: rtsp://x\n"
                   "alerts:\n  - name: a\n    emotion: furious\n    min_prob: 2\nextra: {}\n")
    result = subprocess.run([sys.executable, "-m", "emojimation", "monitor", "--check-config", str(bad)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    errors = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    for expected in ("'fast' is not a valid float", "unknown setting 'colour'", "unknown key 'adress'",
                     "missing 'url'", "'furious' is not one of", "min_prob: must be between 0 and 1",
                     "unknown table 'extra'"):
        assert sum(expected in line for line in errors) == 1, (expected, errors)
    gone = tmp_path / "gone.toml"  # a model that is not there: found by the check, not at the first face
    gone.write_text(good.read_text().replace("[monitor]\n", f'[monitor]\nmodel = "{tmp_path / "gone.tflite"}"\n'))
    result = subprocess.run([sys.executable, "-m", "emojimation", "monitor", "--check-config", str(gone)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"emojimation: config error: model: {tmp_path / 'gone.tflite'}: model file not found"


def test_rtsp_cameras_reconnect_and_a_dead_url_blocks_nothing(clips, tmp_path, processes):
    """Two cameras on a real RTSP server (TCP and UDP) plus a dead URL: rows from both, the dead
    one blocking nothing; the server killed and restarted: disconnected then live, both events
    stored, rows resume; SIGTERM: every process gone and every analysed frame in the store."""
    server = RtspServer(clips["faces"])
    processes.append(server)
    server.start()
    # The UDP camera: the same server, its transport chosen in the config file.
    config = tmp_path / "cameras.toml"
    config.write_text(f'[[cameras]]\nname = "udp"\nurl = "{server.url}"\nrtsp_transport = "udp"\n')
    monitor = MonitorProcess(tmp_path, f"tcp={server.url}", "--name", "dead=rtsp://127.0.0.1:9/nothing",
                             "--config", str(config), "--json")
    processes.append(monitor)
    monitor.wait_ready()
    wait_for(lambda: monitor.face_count("tcp") > 0, HANG_S, "face rows from the first camera")
    wait_for(lambda: monitor.face_count("udp") > 0, HANG_S, "face rows from the second camera")
    assert monitor.camera("dead")["status"] == "disconnected"
    assert monitor.camera("tcp")["status"] == "live"
    assert "s3cret" not in "\n".join(monitor.lines)  # credentials are never logged

    server.kill()
    wait_for(lambda: monitor.camera("tcp")["status"] == "disconnected", HANG_S, "status disconnected after the kill")
    before_restart = time.time()
    server.start()
    wait_for(lambda: monitor.camera("tcp")["status"] == "live", HANG_S, "status live after the restart")
    wait_for(lambda: monitor.face_count("tcp", after=before_restart) > 0, HANG_S, "rows after the restart")
    with monitor.store() as store:
        events = store.events(int(monitor.camera("tcp")["id"]))
    kinds = list(events.sort_values("at").kind)
    assert "camera-disconnected" in kinds and kinds[::-1].index("camera-live") < kinds[::-1].index(
        "camera-disconnected"), kinds  # the latest disconnect was followed by live again
    assert "s3cret" not in events.to_string()

    monitor.stop()  # also checks that no process it started is left
    assert monitor.process.returncode == 0, "\n".join(monitor.lines[-20:])
    summary = {c["name"]: c for c in json.loads(monitor.stdout)["cameras"]}
    with monitor.store() as store:
        for name in ("tcp", "udp"):
            camera = monitor.camera(name)
            faces = store.faces(int(camera["id"]), columns=["frame"])
            # The aggregator's own count at exit equals what the store holds: nothing analysed was lost.
            assert summary[name]["frames_analysed"] == camera["frames_analysed"] > 0
            assert camera["faces"] == len(faces) > 0
            assert camera["status"] == "disconnected"


def _mjpeg_server(clip: Path) -> http.server.ThreadingHTTPServer:
    capture = cv2.VideoCapture(str(clip))
    jpegs = []
    while len(jpegs) < 100:
        ok, frame = capture.read()
        if not ok:
            break
        jpegs.append(cv2.imencode(".jpg", frame)[1].tobytes())

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's naming)
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            index = 0
            try:
                while not getattr(self.server, "closing", False):
                    data = jpegs[index % len(jpegs)]
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: "
                                     + str(len(data)).encode() + b"\r\n\r\n" + data + b"\r\n")
                    index += 1
                    time.sleep(0.1)
            except (BrokenPipeError, ConnectionResetError):
                return

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


class Stopper:
    def __init__(self, kill) -> None:
        self.kill = kill


def test_http_mjpeg_and_hls_streams(clips, tmp_path, processes):
    mjpeg = _mjpeg_server(clips["faces"])
    processes.append(Stopper(lambda: (setattr(mjpeg, "closing", True), mjpeg.shutdown(), mjpeg.server_close())))
    hls_dir = tmp_path / "hls"
    hls_dir.mkdir()
    writer = subprocess.Popen(["ffmpeg", "-v", "error", "-re", "-stream_loop", "-1", "-i", str(clips["faces"]),
                               "-c:v", "libx264", "-preset", "ultrafast", "-g", "10", "-f", "hls", "-hls_time", "1",
                               "-hls_list_size", "6", "-hls_flags", "delete_segments", str(hls_dir / "live.m3u8")],
                              stdin=subprocess.DEVNULL)
    processes.append(Stopper(lambda: (writer.kill(), writer.wait())))
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(hls_dir), **k)  # noqa: E731
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    files.daemon_threads = True
    threading.Thread(target=files.serve_forever, daemon=True).start()
    processes.append(Stopper(lambda: (files.shutdown(), files.server_close())))
    wait_for(lambda: (hls_dir / "live.m3u8").exists(), HANG_S, "the HLS playlist")

    monitor = MonitorProcess(tmp_path, f"mjpeg=http://127.0.0.1:{mjpeg.server_address[1]}/stream.mjpg",
                             f"hls=http://127.0.0.1:{files.server_address[1]}/live.m3u8")
    processes.append(monitor)
    monitor.wait_ready()
    wait_for(lambda: monitor.face_count("mjpeg") > 0, HANG_S, "face rows from the MJPEG stream")
    wait_for(lambda: monitor.face_count("hls") > 0, HANG_S, "face rows from the HLS playlist")
    assert monitor.camera("mjpeg")["status"] == "live" and monitor.camera("hls")["status"] == "live"
    monitor.stop()


def test_alert_fires_and_posts_the_webhook(clips, tmp_path, processes):
    received: list[dict] = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append(json.loads(body))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    processes.append(Stopper(lambda: (receiver.shutdown(), receiver.server_close())))
    config = tmp_path / "monitor.toml"
    config.write_text(f'[monitor]\nloop = true\n\n[[cameras]]\nname = "lobby"\nurl = "{clips["happy"]}"\n\n'
                      f'[[alerts]]\nname = "joy"\nemotion = "happy"\nmin_prob = 0.6\nmin_duration_s = 2\n'
                      f'webhook = "http://127.0.0.1:{receiver.server_address[1]}/hook"\n\n'
                      f'[[alerts]]\nname = "never"\nemotion = "angry"\nmin_prob = 0.99\nmin_duration_s = 1\n')
    monitor = MonitorProcess(tmp_path, "--config", str(config))
    processes.append(monitor)
    monitor.wait_ready()
    wait_for(lambda: received, HANG_S, "the webhook POST")
    payload = received[0]
    assert payload["alert"] == "joy" and payload["camera"] == "lobby" and payload["emotion"] == "happy"
    assert payload["value"] >= 0.6
    with monitor.store() as store:
        alerts = store.events(int(monitor.camera("lobby")["id"]))
    alerts = alerts[alerts.kind == "alert"]
    assert len(alerts) >= 1 and all("joy" in m for m in alerts.message)  # the angry rule never fired
    monitor.stop()


def test_preview_window_shows_annotated_frames(clips, tmp_path, processes):
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", "1", "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    processes.append(Stopper(lambda: (xvfb.kill(), xvfb.wait())))
    display = f":{xvfb.stdout.readline().strip()}"
    monitor = MonitorProcess(tmp_path, f"lobby={clips['happy']}", "--loop", "--preview", env={"DISPLAY": display})
    processes.append(monitor)
    monitor.wait_ready()
    wait_for(lambda: monitor.face_count("lobby") > 5, HANG_S, "face rows")
    shot = tmp_path / "screen.png"
    happy = np.array(EMOTION_COLOURS_BGR["happy"])
    seen: list[int] = []

    def happy_box_on_screen() -> bool:
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "x11grab", "-video_size", "1024x768", "-i", display,
                        "-frames:v", "1", str(shot)], check=True, timeout=30)
        image = cv2.imread(str(shot))
        seen.append(int((np.abs(image.astype(int) - happy).sum(axis=2) < 30).sum()))
        return seen[-1] > 300

    # Screenshots until one shows the box (a preview window may still be opening), not one after a sleep.
    wait_for(happy_box_on_screen, HANG_S, "a happy-coloured box in the preview window", every_s=0.5)
    monitor.stop()


def test_retention_deletes_camera_rows_older_than_the_limit(tmp_path):
    """Rows written with old capture times are deleted by the aggregator's retention pass;
    recent rows, and the results of analysed files, stay."""
    from aggregator.stage import Aggregator
    from core.config import AggregatorConfig
    from core.store import FaceRow, TrackRow

    url = f"sqlite:///{tmp_path / 'retention.db'}"
    now = time.time()
    probs = [0.1, 0.0, 0.0, 0.7, 0.1, 0.0, 0.1]
    with Store(url) as store:
        camera = store.open_camera("rtsp://cam/1", "door")
        video = store.create_source("video", "/videos/a.mp4", "a.mp4", "done")
        old = [FaceRow(i, float(i), now - 3 * 86400 + i, 1, (0, 0, 10, 10), 0.9, probs, probs) for i in range(5)]
        new = [FaceRow(10 + i, 10.0 + i, now - 60 + i, 2, (0, 0, 10, 10), 0.9, probs, probs) for i in range(3)]
        store.add_faces(camera, old + new)
        store.add_faces(video, [FaceRow(0, 0.0, now - 30 * 86400, 1, (0, 0, 10, 10), 0.9, probs, probs)])
        store.write_tracks(camera, [TrackRow(1, 0.0, 4.0, 5, probs, [("happy", 0.0, 4.0)]),
                                    TrackRow(2, 10.0, 12.0, 3, probs, [("happy", 10.0, 12.0)])])
        store.add_event(camera, "camera-live", "old event", at=now - 3 * 86400)
        store.add_event(camera, "camera-live", "new event", at=now - 10)
        aggregator = Aggregator(AggregatorConfig(retention_days=2.0), store)
        aggregator.tick()
        kept = store.faces(camera)
        assert sorted(kept.frame) == [10, 11, 12]
        assert list(store.tracks(camera).track_id) == [2]
        assert list(store.segments(camera).track_id) == [2]
        assert list(store.events(camera).message) == ["new event"]
        assert len(store.faces(video)) == 1  # file results are not subject to camera retention


def test_a_killed_stage_is_restarted_and_rows_resume(clips, tmp_path, processes):
    monitor = MonitorProcess(tmp_path, f"lobby={clips['faces']}", "--loop")
    processes.append(monitor)
    monitor.wait_ready()
    wait_for(lambda: monitor.face_count("lobby") > 0, HANG_S, "face rows")
    for stage in ("aggregator", "detector"):
        victim = stage_processes(monitor.tag.processes(), stage)[0]
        killed_at = time.time()
        os.kill(victim.pid, signal.SIGKILL)
        wait_for(lambda: monitor.face_count("lobby", after=killed_at + 0.5) > 0, HANG_S, f"rows after killing the {stage}")
        assert any(f"{stage}-0 stopped unexpectedly" in line and "restarting" in line for line in monitor.lines) \
            or any(f"{stage} stopped unexpectedly" in line for line in monitor.lines), monitor.lines[-10:]
    assert monitor.process.poll() is None
    monitor.stop()  # also checks that no process it started (the restarted stages too) is left
