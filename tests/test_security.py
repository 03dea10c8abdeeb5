"""Issue 16: no secret on a command line, a dashboard that refuses what it should, links that never
fall back to plain, one redaction, private files.

Everything here is real: the monitor reads a GStreamer RTSP server that demands the password, the
dashboard is a real process on a free 127.0.0.1 port, PostgreSQL is a private server, webhooks go
to http.server on 127.0.0.1, ZeroMQ sockets are real sockets. Each test stops what it starts.
"""

from __future__ import annotations

import base64
import http.server
import json
import logging
import os
import signal
import socket
import sqlite3
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path
from urllib.parse import quote

import cv2
import numpy as np
import pytest
import zmq

from aggregator.alerts import WebhookSender
from core.errors import DataError, redact_url
from core.security import InsecureBindError, LinkSecurity, generate_keys, plain_bind_problem
from core.store import Store, StoreError, TrackRow
from ingest.media import MAX_IMAGE_PIXELS, read_image
from test_monitor import free_port, wait_for  # one copy of each helper

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SERVERS = Path(__file__).parent / "servers"
SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's, with PyGObject for GStreamer
# The camera's password holds '@', '/' and ':' (the redaction's hard cases); in the URL it is
# percent-encoded, as RTSP needs. Neither form may show up anywhere but the camera's own socket.
CAMERA_PASSWORD = "Zq@7/w0rd:x"
CAMERA_SECRETS = [CAMERA_PASSWORD, quote(CAMERA_PASSWORD, safe=""), "7%2Fw0rd", "7/w0rd"]


# --- helpers -----------------------------------------------------------------------------------
def command_lines() -> dict[int, bytes]:
    """Every process's argv as the kernel shows it to any local user (/proc/PID/cmdline)."""
    lines = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                lines[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:  # gone meanwhile
                continue
    return lines


def assert_nowhere_on_a_command_line(secrets: list[str]) -> int:
    """Check every process now; returns how many were checked."""
    lines = command_lines()
    for pid, line in lines.items():
        for secret in secrets:
            assert secret.encode() not in line, f"pid {pid} has a secret on its command line: {line[:300]!r}"
    return len(lines)


def assert_no_secret(text: str, secrets: list[str], where: str) -> None:
    for secret in secrets:
        assert secret not in text, f"{where} holds a secret ({secret[:3]}...)"


def processes_with(marker: str) -> list[int]:
    return [pid for pid, line in command_lines().items() if marker.encode() in line and pid != os.getpid()]


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def store_text(path: Path) -> str:
    """Every value of every table of a SQLite store, as text (what a reader of the file sees)."""
    with sqlite3.connect(path) as connection:
        return "\n".join(connection.iterdump())


def make_clip(path: Path, seconds: int, size: str = "320x240") -> Path:
    """An H.264 MP4 of ffmpeg's test pattern (no faces needed: these tests are about secrets)."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={size}:rate=10",
                    "-t", str(seconds), "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", "10",
                    str(path)], check=True, timeout=120)
    return path




class Dashboard:
    """`emojimation dashboard` as a user runs it; the store URL goes by environment."""

    def __init__(self, tmp_path: Path, store_url: str, *args: str, env: dict[str, str] | None = None) -> None:
        environment = {k: v for k, v in os.environ.items() if not k.startswith("EMOJIMATION_")}
        environment.update({"EMOJIMATION_HOME": str(tmp_path / "home"), "EMOJIMATION_STORE": store_url,
                            "TMPDIR": str(tmp_path), **(env or {})})
        self.process = subprocess.Popen([sys.executable, "-m", "emojimation", "dashboard", "--port", "0", *args],
                                        cwd=PROJECT_ROOT, env=environment, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if "http://" not in line:
            self.kill()
            raise AssertionError(f"dashboard did not start: {line!r} {self.process.stderr.read()}")
        self.first_line = line
        self.url = "http://" + line.split("http://", 1)[1].split()[0].rstrip("/")
        self.port = int(self.url.rsplit(":", 1)[1])
        self.output = ""

    def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                timeout: float = 60) -> tuple[int, str]:
        import http.client

        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body or None, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read().decode(errors="replace")
        finally:
            connection.close()

    def callback(self, output_has: str, inputs: dict[str, object], state: dict[str, object] | None = None
                 ) -> tuple[int, str]:
        """Call the Dash callback whose output names `output_has`, as the browser would."""
        status, text = self.request("GET", "/_dash-dependencies")
        assert status == 200, text
        spec = next(c for c in json.loads(text) if output_has in c["output"])
        return self.request("POST", "/_dash-update-component", callback_body(spec, inputs, state or {}),
                            {"Content-Type": "application/json"})

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            out, err = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            out, err = self.process.communicate()
        self.output = self.first_line + out + err
        return self.output

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def callback_body(spec: dict, inputs: dict[str, object], state: dict[str, object]) -> bytes:
    """A /_dash-update-component request body for the callback `spec` (from /_dash-dependencies)."""
    def parts(text: str) -> list[dict[str, str]]:
        items = []
        for part in text.strip(".").split("..."):
            ident, prop = part.rsplit(".", 1)
            items.append({"id": ident, "property": prop.split("@")[0]})
        return items

    def values(declared: list[dict], given: dict[str, object]) -> list[dict]:
        return [{"id": d["id"], "property": d["property"], "value": given.get(f"{d['id']}.{d['property']}")}
                for d in declared]

    outputs = parts(spec["output"])
    return json.dumps({
        "output": spec["output"], "outputs": outputs if spec["output"].startswith("..") else outputs[0],
        "inputs": values(spec["inputs"], inputs), "state": values(spec.get("state", []), state),
        "changedPropIds": [f"{d['id']}.{d['property']}" for d in spec["inputs"]],
    }).encode()


def upload_contents(data: bytes, kind: str = "video/mp4") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


@pytest.fixture
def started():
    """Everything a test starts (objects with kill()), killed at the end whatever happened."""
    things: list = []
    yield things
    for thing in reversed(things):
        thing.kill()


# --- 1. one redaction ----------------------------------------------------------------------------
REDACTIONS = [
    # user info: '@', '/' and ':' in the password
    ("rtsp://admin:p@ss@cam.local:554/live", "rtsp://admin:***@cam.local:554/live", ["p@ss", "ss@"]),
    ("rtsp://admin:pa/ss@cam.local/live", "rtsp://admin:***@cam.local/live", ["pa/ss"]),
    ("rtsp://admin:a:b/c@d@cam.local/x", "rtsp://admin:***@cam.local/x", ["a:b/c@d", "c@d"]),
    ("rtsp://viewer:Zq%407%2Fw0rd%3Ax@127.0.0.1:8554/cam", "rtsp://viewer:***@127.0.0.1:8554/cam", ["Zq%40"]),
    ("https://0123456789abcdef@hooks.example/x", "https://***@hooks.example/x", ["0123456789abcdef"]),
    # query (and camera-path) parameters named like secrets
    ("http://cam/video.mjpg?user=admin&password=hunter2&fps=5", "http://cam/video.mjpg?user=admin&password=***&fps=5",
     ["hunter2"]),
    ("http://cam/snap.jpg?token=tok123", "http://cam/snap.jpg?token=***", ["tok123"]),
    ("https://chat.example/v1/spaces/AA/messages?key=AIzaKEY&token=T0KEN", "https://chat.example/v1/spaces/AA/"
     "messages?key=***&token=***", ["AIzaKEY", "T0KEN"]),
    ("https://api.example/hook?Secret=s3&access_token=at&api_key=ak&pwd=pw", "https://api.example/hook?Secret=***&"
     "access_token=***&api_key=***&pwd=***", ["s3&", "=at", "=ak", "=pw"]),
    ("rtsp://10.0.0.9:554/user=admin_password=tlJwpbo6_channel=1_stream=0.sdp", "rtsp://10.0.0.9:554/user=admin_"
     "password=***", ["tlJwpbo6"]),
    # tokens in webhook paths
    ("https://hooks.slack.com/services/T0ABCDEFG/B0ABCDEFG/AbCdEfGhIjKlMnOpQrStUvWx",
     "https://hooks.slack.com/services/***", ["AbCdEfGhIjKlMnOpQrStUvWx", "B0ABCDEFG"]),
    ("https://discord.com/api/webhooks/112233445566778899/Xy_9-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefGHIJ",
     "https://discord.com/api/webhooks/***", ["Xy_9-AbCd"]),
    ("https://chat.example.org/hooks/xq5k3nd8wjfo7yb4qq1yhzbc1a", "https://chat.example.org/hooks/***",
     ["xq5k3nd8wjfo7yb4qq1yhzbc1a"]),
    ("https://api.telegram.org/bot123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/sendMessage",
     "https://api.telegram.org/***/sendMessage", ["AAHdqTcv"]),
    ("rtsps://192.168.1.1:7441/Ab3dEfGh1jKlMnOp?enableSrtp", "rtsps://192.168.1.1:7441/***?enableSrtp",
     ["Ab3dEfGh1jKlMnOp"]),
    # outside URLs (a conninfo string), and several URLs in one line of text
    ("connect host=db user=e password=pg-secret dbname=x", "connect host=db user=e password=*** dbname=x",
     ["pg-secret"]),
    ("store 'postgresql://e:Secret:p@ss/word@127.0.0.1:5432/db' and rtsp://u:v@w/x failed",
     "store 'postgresql://e:***@127.0.0.1:5432/db' and rtsp://u:***@w/x failed", ["p@ss/word", "u:v@"]),
    # what must stay as it is: names, plain paths, '@' in a path, camera paths
    ("rtsp://127.0.0.1:8554/cam", "rtsp://127.0.0.1:8554/cam", []),
    ("rtsp://cam.local:554/Streaming/Channels/101", "rtsp://cam.local:554/Streaming/Channels/101", []),
    ("rtsp://cam.local:554/h264Preview_01_main", "rtsp://cam.local:554/h264Preview_01_main", []),
    ("http://host/people/ann@example.org", "http://host/people/ann@example.org", []),
    ("/tmp/pytest-of-root/clip 2024-05-01.mp4", "/tmp/pytest-of-root/clip 2024-05-01.mp4", []),
]


@pytest.mark.parametrize("text, expected, leaks", REDACTIONS, ids=[r[0][:48] for r in REDACTIONS])
def test_one_redaction_handles_every_form(text, expected, leaks):
    redacted = redact_url(text)
    assert redacted == expected
    for leak in leaks:
        assert leak not in redacted
    assert redact_url(redacted) == redacted  # twice changes nothing


def test_camera_names_and_store_rows_are_redacted_whoever_writes_them(tmp_path):
    """The monitor names a camera by its redacted URL, and the store redacts every text it writes
    about a source (uri, name, error, options) and every event (message, data), whoever calls it."""
    from ingest.camera import camera_uri

    url = "rtsp://admin:p@ss/w@cam.local/live?token=tok9"
    assert camera_uri(url) == "rtsp://admin:***@cam.local/live?token=***"
    hook = "https://hooks.slack.com/services/T0/B0/SeCrEt0123456789"
    db = tmp_path / "rows.db"
    with Store(f"sqlite:///{db}") as store:
        camera = store.open_camera(url, url, options={"url": url})
        store.set_camera_status(camera, "disconnected", f"cannot open {url}", {"url": url})
        video = store.create_source("video", url, url, "analysing")
        store.update_source(video, error=f"failed: {url}")
        store.fail_source(video, f"failed: {url}")
        store.add_event(camera, "alert", f"webhook {hook} failed", {"webhook": hook, "camera": url})
    text = store_text(db)
    for secret in ("p@ss", "ss/w", "tok9", "SeCrEt0123456789"):
        assert secret not in text
    assert "rtsp://admin:***@cam.local/live?token=***" in text and "hooks.slack.com/services/***" in text


# --- 2. files ------------------------------------------------------------------------------------
def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_folder_and_files_are_private(tmp_path, monkeypatch):
    previous = os.umask(0o022)  # the usual umask: without the store's care, 0755 / 0644
    try:
        folder = tmp_path / "new" / "store"
        db = folder / "results.db"
        with Store(f"sqlite:///{db}") as store:
            source = store.create_source("video", "/v.mp4", "v.mp4", "analysing")
            png = cv2.imencode(".png", np.full((48, 48, 3), 200, np.uint8))[1].tobytes()
            store.write_tracks(source, [TrackRow(1, 0.0, 1.0, 10, [1 / 7] * 7, [("happy", 0.0, 1.0)], png)])
            assert _mode(folder) == 0o700 and _mode(folder.parent) == 0o700  # every folder it created
            for name in ("results.db", "results.db-wal", "results.db-shm"):  # WAL mode: open while in use
                assert _mode(folder / name) == 0o600, name
            # The face thumbnails live inside the database file: no other file is written.
            assert sorted(p.name for p in folder.iterdir()) == ["results.db", "results.db-shm", "results.db-wal"]
        # An existing, world-readable database is tightened when opened.
        shared = tmp_path / "shared"
        shared.mkdir(mode=0o755)
        old = shared / "old.db"
        Store(f"sqlite:///{old}").close()
        old.chmod(0o644)
        Store(f"sqlite:///{old}").close()
        assert _mode(old) == 0o600 and _mode(shared) == 0o755  # a folder it did not create is left alone
        # The default data folder ($EMOJIMATION_HOME) is the store's own: tightened when it exists.
        home = tmp_path / "home"
        home.mkdir(mode=0o755)
        monkeypatch.setenv("EMOJIMATION_HOME", str(home))
        from core.config import default_store_url

        Store(default_store_url()).close()
        assert _mode(home) == 0o700 and _mode(home / "emojimation.db") == 0o600
    finally:
        os.umask(previous)


def _relay_with_keys(folder: Path) -> subprocess.CompletedProcess:
    """A stage that binds and connects over Curve with `folder` (it reads every key it needs)."""
    listen, bind = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    return subprocess.run([sys.executable, "-m", "emojimation", "relay", "--listen", listen, "--bind", bind,
                           "--push", f"tcp://127.0.0.1:{free_port()}", "--curve-dir", str(folder)],
                          capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT)


def test_keys_folder_is_tightened_and_open_keys_are_refused_in_one_line(tmp_path):
    folder = tmp_path / "keys"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    result = subprocess.run([sys.executable, "-m", "emojimation", "keys", "generate", str(folder)],
                            capture_output=True, text=True, timeout=60, cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr
    assert _mode(folder) == 0o700 and _mode(folder / "authorized") == 0o700  # an existing folder, tightened
    folder.chmod(0o755)  # loosened again by hand: the next stage that loads the keys tightens it
    (folder / "server.key_secret").chmod(0o644)
    refused = _relay_with_keys(folder)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode != 0 and len(lines) == 1, refused.stderr
    assert "server.key_secret is open to other users (mode 0644)" in lines[0] and "chmod 600" in lines[0]
    assert _mode(folder) == 0o700
    (folder / "server.key_secret").chmod(0o600)
    (folder / "authorized" / "client.key").chmod(0o666)  # anyone could add themselves to the allow-list
    refused = _relay_with_keys(folder)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode != 0 and len(lines) == 1, refused.stderr
    assert "authorized/client.key is writable by other users" in lines[0]


# --- 3. webhooks ---------------------------------------------------------------------------------
class _Recorder(http.server.BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 (http.server's naming)
        self.server.posts.append((self.path, self.rfile.read(int(self.headers["Content-Length"]))))
        if self.server.redirect_to:
            self.send_response(302)
            self.send_header("Location", self.server.redirect_to)
        else:
            self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def _http_server(redirect_to: str = "") -> http.server.ThreadingHTTPServer:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.posts, server.redirect_to = [], redirect_to
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_webhook_redirects_are_not_followed_and_only_http_is_spoken(tmp_path, caplog):
    target = _http_server()
    redirector = _http_server(f"http://127.0.0.1:{target.server_port}/stolen")
    secret_file = tmp_path / "secret.txt"
    secret_file.write_text("do not send")
    try:
        sender = WebhookSender()
        with caplog.at_level(logging.ERROR, logger="aggregator.alerts"):
            sender.send(f"http://127.0.0.1:{redirector.server_port}/hooks/T0K3Nabcdef0123456789", {"alert": "a"})
            sender.send(f"file://{secret_file}", {"alert": "b"})
            sender.drain(10)
        assert len(redirector.posts) == 1  # asked once: a redirect is a final answer, not retried
        assert target.posts == []  # and never followed
        assert sender.delivered == 0 and sender.failed == 2
        log = caplog.text
        assert "answered 302" in log and "redirects are not followed" in log
        assert "not an http:// or https:// URL" in log
        assert "T0K3Nabcdef0123456789" not in log  # the hook's token is redacted in the log
        # A plain 200 is delivered (the sender works at all).
        sender.send(f"http://127.0.0.1:{target.server_port}/ok", {"alert": "c"})
        sender.drain(10)
        assert sender.delivered == 1 and json.loads(target.posts[0][1]) == {"alert": "c"}
    finally:
        for server in (target, redirector):
            server.shutdown()
            server.server_close()


# --- 4. images -----------------------------------------------------------------------------------
def _png_claiming(width: int, height: int) -> bytes:
    """A small, valid PNG stream whose header declares width x height."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 4096)) + chunk(b"IEND", b""))


def _jpeg_claiming(width: int, height: int) -> bytes:
    """A real 16x16 JPEG with its frame header (SOF0) rewritten to width x height."""
    data = bytearray(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def test_an_oversized_image_is_refused_in_one_line_before_decoding(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(_png_claiming(100_000, 100_000))  # 4 KB on disk, 30 GB decoded
    result = subprocess.run([sys.executable, "-m", "emojimation", "analyse", str(big), "--store",
                             f"sqlite:///{tmp_path / 's.db'}", "--out", str(tmp_path / "out"), "--no-progress"],
                            capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0 and len(lines) == 1, result.stderr
    assert lines[0] == (f"emojimation: error: {big}: image is 10,000 megapixels, above the limit of "
                        f"{MAX_IMAGE_PIXELS / 1e6:g} megapixels; not decoded")
    # Just above our limit (and below Pillow's own): the header's size is in the message.
    over = tmp_path / "over.jpg"
    over.write_bytes(_jpeg_claiming(9000, 8000))
    with pytest.raises(DataError, match=r"over\.jpg: image is 9000x8000 \(72 megapixels\), above the limit"):
        read_image(str(over))
    # An ordinary image still reads.
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), np.full((40, 60, 3), 9, np.uint8))
    assert read_image(str(small)).shape == (40, 60, 3)


# --- 5. links ------------------------------------------------------------------------------------
def test_a_plain_bind_beyond_loopback_is_refused_unless_insecure(caplog):
    assert plain_bind_problem("tcp://127.0.0.1:5555", "", False) is None
    assert plain_bind_problem("tcp://localhost:5555", "", False) is None
    assert plain_bind_problem("tcp://[::1]:5555", "", False) is None
    assert plain_bind_problem("ipc:///tmp/x.sock", "", False) is None
    assert plain_bind_problem("tcp://*:5555", "/keys", False) is None
    for exposed in ("tcp://*:5555", "tcp://0.0.0.0:5555", "tcp://192.168.1.20:5555", "tcp://eth0:5555"):
        problem = plain_bind_problem(exposed, "", False)
        assert problem and "--curve-dir" in problem and "--insecure" in problem and "\n" not in problem
    context = zmq.Context()
    try:
        security = LinkSecurity(context, "detector")
        sock = context.socket(zmq.PUSH)
        with pytest.raises(InsecureBindError, match="--insecure"):
            security.bind(sock, f"tcp://*:{free_port()}")
        sock.close(linger=0)
        insecure = LinkSecurity(context, "detector", insecure=True)
        with caplog.at_level(logging.WARNING, logger="core.security"):
            socks = [context.socket(zmq.PUSH) for _ in range(2)]
            for one in socks:
                insecure.bind(one, f"tcp://0.0.0.0:{free_port()}")
            for one in socks:
                one.close(linger=0)
        warnings = [r for r in caplog.records if "--insecure" in r.getMessage()]
        assert len(warnings) == 1  # one line, not one per socket
    finally:
        context.term()


def test_every_socket_has_a_maximum_message_size():
    context = zmq.Context()
    try:
        security = LinkSecurity(context, "aggregator", max_message_bytes=1024 * 1024)
        pull = context.socket(zmq.PULL)
        pull.setsockopt(zmq.LINGER, 0)
        address = f"tcp://127.0.0.1:{free_port()}"
        security.bind(pull, address)
        assert pull.getsockopt(zmq.MAXMSGSIZE) == 1024 * 1024
        push = context.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.connect(address)
        push.send(b"x" * (2 * 1024 * 1024))  # over the limit: the connection is dropped, nothing delivered
        assert not pull.poll(1500)
        fresh = context.socket(zmq.PUSH)
        fresh.setsockopt(zmq.LINGER, 0)
        fresh.connect(address)
        fresh.send(b"y" * 1000)  # within it: delivered
        assert pull.poll(5000) and pull.recv() == b"y" * 1000
        sub = context.socket(zmq.SUB)
        security.connect(sub, address)  # connecting sockets get the limit too
        assert sub.getsockopt(zmq.MAXMSGSIZE) == 1024 * 1024
        for one in (pull, push, fresh, sub):
            one.close(linger=0)
    finally:
        context.term()


def test_a_pub_socket_through_the_security_layer_gives_plain_subscribers_nothing(tmp_path):
    keys = tmp_path / "keys"
    generate_keys(keys)
    context = zmq.Context()
    security = LinkSecurity(context, "aggregator", str(keys))
    try:
        pub = context.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        address = f"tcp://127.0.0.1:{free_port()}"
        security.bind(pub, address)
        security.start()
        plain = context.socket(zmq.SUB)
        plain.setsockopt(zmq.SUBSCRIBE, b"")
        plain.connect(address)
        trusted = context.socket(zmq.SUB)
        trusted.setsockopt(zmq.SUBSCRIBE, b"")
        LinkSecurity(context, "monitor", str(keys)).connect(trusted, address)
        deadline = time.monotonic() + 10
        got_trusted = False
        while time.monotonic() < deadline and not got_trusted:
            pub.send(b"tracked faces")
            got_trusted = bool(trusted.poll(100))
        assert got_trusted  # the keyed subscriber is served
        for _ in range(10):
            pub.send(b"tracked faces")
        assert not plain.poll(500)  # the plain one never is
        security.stop_watching()
        for one in (pub, plain, trusted):
            one.close(linger=0)
    finally:
        security.close()
        context.term()


# --- 6. the dashboard ----------------------------------------------------------------------------
def test_dashboard_answers_only_its_own_host_names(tmp_path, started):
    dashboard = Dashboard(tmp_path, f"sqlite:///{tmp_path / 's.db'}", "--allowed-host", "dash.example.org")
    started.append(dashboard)
    port = dashboard.port
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.nip.io", f"localhost.evil.example:{port}"):
        status, text = dashboard.request("GET", "/", headers={"Host": host})
        assert status == 403, (host, status)
        assert "--allowed-host" in text and len(text.strip().splitlines()) == 1
        assert dashboard.request("GET", "/_dash-layout", headers={"Host": host})[0] == 403
        assert dashboard.request("POST", "/_dash-update-component", b"{}",
                                 {"Host": host, "Content-Type": "application/json"})[0] == 403
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"[::1]:{port}", "dash.example.org", f"DASH.example.org:{port}"):
        assert dashboard.request("GET", "/", headers={"Host": host})[0] == 200, host


def _send_large_body(port: int, total: int, path: str, chunked: bool, headers_done: threading.Event,
                     result: dict) -> None:
    """Send a POST of `total` bytes (streamed in 1 MiB pieces) until the server stops taking it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json"]
    head.append("Transfer-Encoding: chunked" if chunked else f"Content-Length: {total}")
    piece = b"0" * (1024 * 1024)
    sent = 0
    try:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        headers_done.set()
        while sent < total:
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
            sent += len(piece)
        if chunked:
            sock.sendall(b"0\r\n\r\n")
    except OSError:
        pass  # the server answered and closed: the rest is never read
    finally:
        result["sent"] = sent
        sock.settimeout(10)
        try:
            result["answer"] = sock.recv(4096).decode(errors="replace")
        except OSError as error:
            result.setdefault("answer", f"error {error}")
        sock.close()


def _refused_body(dashboard: Dashboard, total: int, chunked: bool, path: str = "/_dash-update-component"
                  ) -> tuple[str, int, int]:
    """(status line, MB the dashboard's peak memory grew by, bytes sent) for one oversized POST."""
    before = rss_kb(dashboard.process.pid)
    peak_before = rss_kb(dashboard.process.pid, "VmHWM")
    result: dict = {}
    done = threading.Event()
    sender = threading.Thread(target=_send_large_body, args=(dashboard.port, total, path, chunked, done, result))
    sender.start()
    sender.join(120)
    assert not sender.is_alive(), "the server kept reading the body"
    peak_after = rss_kb(dashboard.process.pid, "VmHWM")
    grown_mb = (max(peak_after, peak_before) - before) // 1024 if peak_after > peak_before else \
        (rss_kb(dashboard.process.pid) - before) // 1024
    return result.get("answer", "").split("\r\n", 1)[0], grown_mb, result.get("sent", 0)


def test_a_300_mb_body_is_refused_before_it_is_read(tmp_path, started):
    dashboard = Dashboard(tmp_path, f"sqlite:///{tmp_path / 's.db'}")  # the default upload limit (200 MB)
    started.append(dashboard)
    assert dashboard.request("GET", "/")[0] == 200  # warm: the app is fully loaded before measuring
    status, grown_mb, sent = _refused_body(dashboard, 300 * 1024 * 1024, chunked=False)
    assert status.startswith("HTTP/1.1 413"), status
    assert grown_mb < 50, f"the dashboard grew by {grown_mb} MB"
    assert sent < 300 * 1024 * 1024  # it hung up rather than take the whole body
    # Small bodies elsewhere than the callback endpoint: 1 MiB is plenty.
    assert dashboard.request("POST", "/", b"0" * (2 * 1024 * 1024))[0] == 413
    assert dashboard.process.poll() is None
    assert dashboard.request("GET", "/")[0] == 200  # and it keeps serving


def test_an_upload_over_the_limit_sent_straight_to_the_server_is_refused(tmp_path, started):
    dashboard = Dashboard(tmp_path, f"sqlite:///{tmp_path / 's.db'}", "--max-upload-mb", "1")
    started.append(dashboard)
    uploads = lambda: sorted(p for p in tmp_path.glob("emojimation-uploads-*/*"))  # noqa: E731
    # Under the body limit (base64 of 1 MB + 1 MiB of JSON), over the upload limit: the callback refuses.
    status, text = dashboard.callback("upload-job.data", {"upload-drop.contents": upload_contents(b"\0" * 1_500_000)},
                                      {"upload-drop.filename": "clip.mp4"})
    assert status == 200 and "over this dashboard's limit of 1 MB" in text, text[:300]
    assert uploads() == []  # nothing saved, nothing queued
    # Over the body limit: 413 before the body is read, by Content-Length or while chunks arrive.
    for chunked in (False, True):
        line, grown_mb, _ = _refused_body(dashboard, 8 * 1024 * 1024, chunked=chunked)
        assert line.startswith("HTTP/1.1 413"), (chunked, line)
    assert uploads() == []


class _WerkzeugServer:
    """The dashboard app under Werkzeug's server (what runs when waitress is missing, and what the
    browser tests use): the guard and Flask, not waitress, must refuse here."""

    def __init__(self, tmp_path: Path, **options) -> None:
        from werkzeug.serving import make_server

        from dashboard.app import create_app

        self.app = create_app(f"sqlite:///{tmp_path / 'w.db'}", upload_dir=tmp_path / "uploads", **options)
        self.server = make_server("127.0.0.1", 0, self.app.server, threaded=True)
        self.port = self.server.server_port
        self.process = type("Self", (), {"pid": os.getpid()})()  # memory is measured on this process
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def kill(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        from dashboard.jobs import EXTENSION_KEY

        self.app.server.extensions[EXTENSION_KEY].shutdown()


def test_without_waitress_the_guard_itself_refuses(tmp_path, started):
    server = _WerkzeugServer(tmp_path, max_upload_bytes=1024 * 1024)
    started.append(server)
    probe = Dashboard.__new__(Dashboard)
    probe.port = server.port
    assert probe.request("GET", "/", headers={"Host": "evil.example"})[0] == 403
    assert probe.request("GET", "/")[0] == 200
    for chunked in (False, True):  # by Content-Length before the app reads; while the chunks arrive
        line, grown_mb, _ = _refused_body(server, 64 * 1024 * 1024, chunked=chunked)
        assert line.startswith("HTTP/1.1 413"), (chunked, line)
        assert grown_mb < 50  # Werkzeug discards what the app left unread; nothing holds it


def test_the_upload_queue_is_bounded_and_says_so(tmp_path, started):
    clip = make_clip(tmp_path / "clip.mp4", 2)
    dashboard = Dashboard(tmp_path, f"sqlite:///{tmp_path / 's.db'}", "--max-jobs", "2")
    started.append(dashboard)
    answers = [dashboard.callback("upload-job.data", {"upload-drop.contents": upload_contents(clip.read_bytes())},
                                  {"upload-drop.filename": f"clip{i}.mp4"})[1] for i in range(3)]
    assert "queued for analysis" in answers[0] and "queued for analysis" in answers[1]
    assert "the analysis queue is full (2 files waiting or being analysed, at most 2)" in answers[2]
    dashboard.stop()
    assert list(tmp_path.glob("emojimation-uploads-*")) == []  # shutdown removes what was left


def test_upload_job_keeps_the_store_password_off_command_lines_and_deletes_the_upload(
        tmp_path, started, postgres_server):
    from helpers_postgres import PASSWORD, assert_no_password

    store_url = postgres_server.new_database()  # postgresql://emojimation:<password>@127.0.0.1:PORT/test_N
    secrets = [PASSWORD, quote(PASSWORD, safe="")]
    clip = make_clip(tmp_path / "visit.mp4", 3)
    dashboard = Dashboard(tmp_path, store_url)  # EMOJIMATION_STORE, as the docs say
    started.append(dashboard)
    status, text = dashboard.callback("upload-job.data", {"upload-drop.contents": upload_contents(clip.read_bytes())},
                                      {"upload-drop.filename": "visit.mp4"})
    assert status == 200 and "queued for analysis" in text, text[:300]
    job_id = json.loads(text)["response"]["upload-job"]["data"]
    saved = wait_for(lambda: list(tmp_path.glob("emojimation-uploads-*/*/visit.mp4")), 30, "the saved upload")
    assert _mode(saved[0]) == 0o600 and _mode(saved[0].parent) == 0o700
    checked, pipeline_seen = 0, False
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # every process, again and again, for as long as the job runs
        checked += assert_nowhere_on_a_command_line(secrets)
        pipeline_seen = pipeline_seen or bool(processes_with("emojimation analyse"))
        status, page = dashboard.callback("upload-status.children@", {"upload-interval.n_intervals": 1},
                                          {"upload-job.data": job_id})
        assert_no_password(page)
        if "done" in page or "failed" in page or "without a result" in page:
            break
        time.sleep(0.3)
    assert pipeline_seen, "the analysis never ran while being watched"
    assert "visit.mp4: done." in page, page[:500]
    # The store says done a moment before `analyse` exits; then the job's folder goes with the job.
    wait_for(lambda: list(tmp_path.glob("emojimation-uploads-*/*")) == [], 60, "the upload deleted")
    assert not saved[0].exists()
    assert_nowhere_on_a_command_line(secrets)
    assert_no_password(dashboard.stop())  # nor in anything it printed
    assert checked > 100


def test_upload_jobs_die_with_the_dashboard(tmp_path, started):
    clip = make_clip(tmp_path / "long.mp4", 60)
    dashboard = Dashboard(tmp_path, f"sqlite:///{tmp_path / 's.db'}")
    started.append(dashboard)
    status, text = dashboard.callback("upload-job.data", {"upload-drop.contents": upload_contents(clip.read_bytes())},
                                      {"upload-drop.filename": "long.mp4"})
    assert "queued for analysis" in text
    marker = str(tmp_path)  # TMPDIR: every path of the job and its pipeline is under it
    wait_for(lambda: len(processes_with(marker)) >= 3, 120, "the analysis and its stages running")
    os.kill(dashboard.process.pid, signal.SIGKILL)  # no clean-up code runs
    dashboard.process.wait()
    wait_for(lambda: not processes_with(marker), 60, "the analysis to die with the dashboard")


# --- 7. the camera password, end to end ----------------------------------------------------------
class RtspServer:
    """GStreamer's RTSP server demanding basic auth; the credentials go by environment."""

    def __init__(self, clip: Path, user: str, password: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen([SYSTEM_PYTHON, str(SERVERS / "rtsp_server.py"), str(self.port), str(clip)],
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        env={**os.environ, "RTSP_CREDENTIALS": f"{user}:{password}"})
        line = self.process.stdout.readline().strip()
        if line != "ready":
            self.kill()
            raise AssertionError(f"RTSP server did not start: {line} {self.process.stderr.read()[-500:]}")

    def url(self, user: str, password: str) -> str:
        return f"rtsp://{user}:{quote(password, safe='')}@127.0.0.1:{self.port}/cam"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


class Monitor:
    def __init__(self, tmp_path: Path, config: Path) -> None:
        self.db = tmp_path / "monitor.db"
        self.marker = str(tmp_path)
        environment = {k: v for k, v in os.environ.items() if not k.startswith("EMOJIMATION_")}
        environment.update({"EMOJIMATION_HOME": str(tmp_path), "TMPDIR": str(tmp_path)})
        self.process = subprocess.Popen(
            [sys.executable, "-m", "emojimation", "monitor", "--config", str(config), "--store",
             f"sqlite:///{self.db}", "--status-every-s", "3600", "--backoff-max-s", "1", "--stall-s", "3"],
            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(self.process.stderr), daemon=True)
        self.reader.start()

    def camera(self, name: str) -> dict | None:
        if not self.db.exists():
            return None
        try:
            with Store(f"sqlite:///{self.db}", migrate=False) as store:
                sources = store.sources()
        except StoreError:  # the file exists, its tables not yet: the monitor is still creating them
            return None
        rows = sources[(sources.kind == "camera") & (sources.name == name)] if not sources.empty else sources
        return None if rows.empty else rows.iloc[0].to_dict()

    def stop(self) -> str:
        self.process.send_signal(signal.SIGTERM)
        try:
            out, _ = self.process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("monitor did not exit after SIGTERM")
        self.reader.join(5)
        return out + "".join(self.lines)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        for pid in processes_with(self.marker):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _dashboard_pages(dashboard: Dashboard, source_ids: list[int]) -> str:
    """What a browser would be shown: every page's layout and the callbacks that fill it in."""
    texts = []
    for path in ("/", "/events", "/upload", *(f"/source/{i}" for i in source_ids)):
        status, text = dashboard.callback("_pages_content.children", {"_pages_location.pathname": path,
                                                                       "_pages_location.search": ""})
        assert status == 200, (path, text[:300])
        texts.append(text)
    status, text = dashboard.callback("sources-table.children", {"sources-interval.n_intervals": 1})
    assert status == 200 and "door" in text, text[:300]
    texts.append(text)
    status, text = dashboard.callback("events-table.children", {"events-interval.n_intervals": 1})
    assert status == 200 and "401 Unauthorized" in text, text[:300]
    texts.append(text)
    for source_id in source_ids:
        status, text = dashboard.callback("timeline-graph.figure", {"timeline-interval.n_intervals": 1,
                                                                    "timeline-values.value": "smoothed"},
                                          {"timeline-source.data": source_id})
        assert status == 200, text[:300]
        texts.append(text)
    return "\n".join(texts)


def test_the_camera_password_reaches_the_camera_and_nothing_else(tmp_path, started):
    if not Path(SYSTEM_PYTHON).exists():
        raise AssertionError(f"{SYSTEM_PYTHON} missing: scripts/test.sh installs python3-gi and GStreamer")
    clip = make_clip(tmp_path / "camera.mp4", 120)
    server = RtspServer(clip, "viewer", CAMERA_PASSWORD)
    started.append(server)
    config = tmp_path / "monitor.toml"  # where the docs put camera URLs
    config.write_text(f'[[cameras]]\nname = "door"\nurl = "{server.url("viewer", CAMERA_PASSWORD)}"\n\n'
                      f'[[cameras]]\nname = "wrong"\nurl = "{server.url("viewer", "not-" + CAMERA_PASSWORD)}"\n')
    config.chmod(0o600)
    monitor = Monitor(tmp_path, config)
    started.append(monitor)
    checked = 0
    deadline = time.monotonic() + 120
    door = None
    while time.monotonic() < deadline:  # every process's argv, over and over, while the cameras connect
        checked += assert_nowhere_on_a_command_line(CAMERA_SECRETS)
        assert monitor.process.poll() is None, "".join(monitor.lines[-20:])
        door = monitor.camera("door")
        if door is not None and door["status"] == "live" and door["frames_analysed"] >= 20:
            break
        time.sleep(0.25)
    assert door is not None and door["status"] == "live" and door["frames_analysed"] >= 20, \
        f"camera never analysed with the password: {door}\n" + "".join(monitor.lines[-20:])
    # The server does demand the password: the camera with a wrong one is refused.
    wrong = monitor.camera("wrong")
    assert wrong is not None and wrong["status"] == "disconnected" and wrong["frames_analysed"] == 0
    assert checked > 200
    ingests = processes_with("-m ingest") or processes_with("emojimation ingest")
    assert ingests, "no camera ingest process found to check"
    # Every page the dashboard serves over this store, while the cameras run.
    dashboard = Dashboard(tmp_path, f"sqlite:///{monitor.db}")
    started.append(dashboard)
    with Store(f"sqlite:///{monitor.db}", migrate=False) as store:
        source_ids = [int(i) for i in store.sources()["id"]]
    pages = _dashboard_pages(dashboard, source_ids)
    assert_no_secret(pages, CAMERA_SECRETS, "a dashboard page")
    assert_no_secret(dashboard.stop(), CAMERA_SECRETS, "the dashboard's output")
    output = monitor.stop()
    assert "camera wrong: Server returned 401 Unauthorized" in output  # the reason is there, the URL is not
    assert_no_secret(output, CAMERA_SECRETS, "the monitor's log")
    text = store_text(monitor.db)
    assert "rtsp://viewer:***@127.0.0.1" in text  # the redacted URL is what the store keeps
    assert_no_secret(text, CAMERA_SECRETS, "the store")
