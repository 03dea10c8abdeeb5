"""`emojimation dashboard` as a user runs it: a real process, real sockets on loopback only."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from email.message import Message
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def dashboard_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "emojimation", "dashboard", *args]


def run_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("EMOJIMATION_DASHBOARD_AUTH", "EMOJIMATION_STORE")}
    return {**env, "EMOJIMATION_HOME": str(tmp_path / "home")}


def start_dashboard(tmp_path: Path, *args: str) -> tuple[subprocess.Popen[str], str]:
    """Start the command with --port 0 and return (process, URL it printed)."""
    process = subprocess.Popen(dashboard_command("--port", "0", "--store", f"sqlite:///{tmp_path / 'store.db'}", *args),
                               cwd=PROJECT_ROOT, env=run_env(tmp_path), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()  # the URL line, printed once the socket is bound ("" if it died)
    if "http://" not in line:
        process.kill()
        pytest.fail(f"dashboard did not start: {line!r} {process.stderr.read() if process.stderr else ''}")
    url = line.split("http://", 1)[1].split()[0]
    return process, f"http://{url}"


def stop(process: subprocess.Popen[str]) -> int:
    process.send_signal(signal.SIGINT)
    try:
        return process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, Message, str]:
    request = urllib.request.Request(url)
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()


def test_dcl001_non_loopback_bind_without_auth_refuses(tmp_path):
    result = subprocess.run(dashboard_command("--host", "0.0.0.0", "--store", f"sqlite:///{tmp_path / 's.db'}"),
                            cwd=PROJECT_ROOT, env=run_env(tmp_path), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emojimation: error: --host 0.0.0.0")
    assert "--auth" in lines[0] and "--no-auth" in lines[0]
    assert not (tmp_path / "s.db").exists()  # refused before touching anything


def test_dcl002_malformed_auth_is_a_usage_error(tmp_path):
    result = subprocess.run(dashboard_command("--auth", "nopassword"), cwd=PROJECT_ROOT, env=run_env(tmp_path),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "emojimation: error: --auth must be USER:PASSWORD with a non-empty user and password"]


def test_dcl003_serves_on_loopback_and_stops_on_ctrl_c(tmp_path):
    process, url = start_dashboard(tmp_path)
    try:
        assert url.startswith("http://127.0.0.1:")
        status, _, body = get(url + "/")
        assert status == 200 and "<title>Emojimation" in body
    finally:
        assert stop(process) == 0
    assert "Emojimation dashboard stopped" in process.stdout.read()


def test_dcl004_with_auth_every_request_needs_the_credentials(tmp_path):
    process, url = start_dashboard(tmp_path, "--auth", "ann:s3cret:x")
    try:
        for path in ("/", "/source/1", "/_dash-layout", "/_dash-dependencies", "/assets/style.css"):
            status, headers, _ = get(url + path)
            assert status == 401, path
            assert headers.get("WWW-Authenticate", "").startswith("Basic realm=")
        assert get(url + "/", ("ann", "wrong"))[0] == 401
        assert get(url + "/", ("bob", "s3cret:x"))[0] == 401
        status, _, body = get(url + "/", ("ann", "s3cret:x"))
        assert status == 200 and "Emojimation" in body
        assert get(url + "/_dash-layout", ("ann", "s3cret:x"))[0] == 200
    finally:
        assert stop(process) == 0


def test_dcl005_auth_from_the_environment(tmp_path):
    env = {**run_env(tmp_path), "EMOJIMATION_DASHBOARD_AUTH": "ann:pw"}
    process = subprocess.Popen(dashboard_command("--port", "0", "--store", f"sqlite:///{tmp_path / 'e.db'}",
                                                 "--host", "127.0.0.1"),
                               cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert "basic auth on" in line
        url = "http://" + line.split("http://", 1)[1].split()[0]
        assert get(url + "/")[0] == 401
        assert get(url + "/", ("ann", "pw"))[0] == 200
    finally:
        assert stop(process) == 0


def test_dcl006_the_cli_module_stays_import_light():
    """`emojimation.cli` imports `dashboard.cli` for every command: it must not pull in Dash or pandas."""
    code = ("import sys, dashboard.cli; "
            "heavy = [m for m in ('dash', 'flask', 'plotly', 'pandas', 'numpy') if m in sys.modules]; "
            "print(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def non_loopback_ipv4() -> str | None:
    """An address of this machine on a real interface (None without one). Connecting a UDP socket
    sends nothing: it only makes the kernel pick the outgoing interface."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: any routable address will do
            address = probe.getsockname()[0]
    except OSError:
        return None
    return None if address.startswith("127.") else address


def post_json(url: str, body: dict, auth: tuple[str, str] | None = None) -> tuple[int, Message, str]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    if auth is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()


def test_dcl007_a_callback_post_without_credentials_is_refused_on_a_non_loopback_bind(tmp_path):
    """Bound to every interface with --auth, the callback endpoint (where the app deletes sources)
    refuses a POST without the right credentials, and it does nothing. The same POST with them
    deletes the source: the refused request was a real, working callback."""
    from core.store import Store

    with Store(f"sqlite:///{tmp_path / 'store.db'}") as store:
        doomed = store.create_source("video", "/clips/doomed.mp4", "doomed.mp4", "analysing")
        store.finish_source(doomed)
    process, printed = start_dashboard(tmp_path, "--host", "0.0.0.0", "--auth", "ann:s3cret")
    try:
        assert printed.startswith("http://0.0.0.0:")
        # Reach it as another machine would: through a real interface, if this machine has one
        # (the socket bound to 0.0.0.0 is the same either way).
        url = printed.replace("0.0.0.0", non_loopback_ipv4() or "127.0.0.1")
        credentials = ("ann", "s3cret")
        status, _, text = get(url + "/_dash-dependencies", credentials)
        assert status == 200
        delete = next(d for d in json.loads(text)
                      if any(i["id"] == "sources-confirm" and i["property"] == "submit_n_clicks" for i in d["inputs"]))
        outputs = [dict(zip(("id", "property"), part.rsplit(".", 1)))
                   for part in delete["output"].strip(".").split("...")]
        body = {"output": delete["output"], "outputs": outputs,
                "inputs": [{"id": "sources-confirm", "property": "submit_n_clicks", "value": 1}],
                "state": [{"id": "sources-pending-delete", "property": "data", "value": doomed}],
                "changedPropIds": ["sources-confirm.submit_n_clicks"]}

        for auth in (None, ("ann", "wrong"), ("mallory", "s3cret")):
            status, headers, _ = post_json(url + "/_dash-update-component", body, auth)
            assert status == 401, auth
            assert headers.get("WWW-Authenticate", "").startswith("Basic realm=")
        with Store(f"sqlite:///{tmp_path / 'store.db'}") as store:
            assert store.sources()["id"].tolist() == [doomed]  # refused means nothing happened

        status, _, text = post_json(url + "/_dash-update-component", body, credentials)
        assert status == 200, text
        assert "Deleted doomed.mp4" in text
        with Store(f"sqlite:///{tmp_path / 'store.db'}") as store:
            assert store.sources().empty
    finally:
        assert stop(process) == 0
