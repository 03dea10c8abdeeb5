"""Deploy links (issue 6): stages started one by one, as on separate hosts, over tcp:// with
CurveZMQ; listen/push and the relay; refused peers; Prometheus metrics; JSON logs.

Every stage is a real `python -m emojimation <stage>` process with its own explicit
addresses. Readiness comes from the stages' own status reports on an ipc:// socket (which
also shows that local links stay plain while --curve-dir is set); results are read from the
SQLite store the aggregator writes.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import zmq
import zmq.auth
from prometheus_client.parser import text_string_to_metric_families

from bench.synthetic import compose_clip, require_shared_data, val_faces
from core.messages import Classified, End, MessageError, Start, Status, decode, encode
from core.store import Store
from emojimation.supervisor import free_tcp_address

STAGE_ENV = {"OMP_NUM_THREADS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}


# --- helpers -----------------------------------------------------------------------------------
def free_port() -> int:
    return int(free_tcp_address().rsplit(":", 1)[1])


def emojimation(*args: object, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emojimation", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **STAGE_ENV})


class Stages:
    """Stage processes started one at a time, a status inbox, and clean-up that always runs."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.processes: dict[str, subprocess.Popen] = {}
        self.context = zmq.Context()
        self.inbox = self.context.socket(zmq.PULL)
        self.inbox.setsockopt(zmq.LINGER, 0)
        self.status = f"ipc://{folder / 'status.sock'}"
        self.inbox.bind(self.status)
        self.reports: list[Status] = []

    def start(self, name: str, *args: object) -> subprocess.Popen:
        log = (self.folder / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "emojimation", *map(str, args), "--status", self.status, "--log-level", "INFO"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
            env={**os.environ, **STAGE_ENV, "EMOJIMATION_HOME": str(self.folder)})
        log.close()
        self.processes[name] = process
        return process

    def log(self, name: str) -> str:
        path = self.folder / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {name} (exit {p.poll()}):\n{self.log(name)[-1500:]}" for name, p in self.processes.items())

    def check_alive(self, allowed_to_exit: tuple[str, ...] = ("ingest",)) -> None:
        for name, process in self.processes.items():
            if name not in allowed_to_exit and process.poll() is not None:
                raise AssertionError(f"{name} exited with {process.returncode}\n{self.logs()}")

    def collect(self) -> None:
        while self.inbox.poll(0):
            try:
                message = decode(self.inbox.recv_multipart())
            except MessageError:
                continue
            if isinstance(message, Status):
                self.reports.append(message)

    def ready(self, stage: str) -> int:
        """How many processes of `stage` have reported ready."""
        self.collect()
        return len({r.detail.get("pid") for r in self.reports if r.stage == stage and r.event == "ready"})

    def wait_for(self, what: str, check: Callable[[], object], timeout: float = 40.0) -> object:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            self.check_alive()
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}")
            time.sleep(0.05)  # poll interval

    def wait_ready(self, **counts: int) -> None:
        for stage, count in counts.items():
            self.wait_for(f"{count} {stage} ready", lambda: self.ready(stage) >= count)

    def stop(self) -> None:
        if self.context.closed:
            return
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 8
        for process in self.processes.values():
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.inbox.close()
        self.context.term()


@pytest.fixture
def stages(tmp_path):
    running = Stages(tmp_path)
    yield running
    running.stop()  # also after a failure: no process outlives its test


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def metric(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels` (0 if none)."""
    return sum(value for (sample, sample_labels), value in samples.items()
               if sample == name and set(labels.items()) <= set(sample_labels))


def finished_sources(db: Path) -> list[dict]:
    if not db.exists():
        return []
    try:
        with Store(f"sqlite:///{db}", migrate=False) as store:
            return [row for _, row in store.sources().iterrows() if row["status"] == "done"]
    except Exception:  # the aggregator is still creating the schema
        return []


# --- fixtures: a short clip and a keys folder ------------------------------------------------
@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """40 frames (4 s at 10 fps) and 240 frames (8 s at 30 fps), faces with an empty stretch."""
    require_shared_data()
    folder = tmp_path_factory.mktemp("clips")
    faces = [face for face, _, _ in val_faces(1, seed=11)[:3]]
    compose_clip(folder / "short.mp4", [faces[0], None, faces[1], faces[2]], [0] * 4, seconds_per_face=1.0,
                 fps=10.0, face_px=150)
    compose_clip(folder / "long.mp4", [faces[0], faces[1], None, faces[2]], [0] * 4, seconds_per_face=2.0,
                 fps=30.0, face_px=150)
    return {"short": (folder / "short.mp4", 40), "long": (folder / "long.mp4", 240)}


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("keys") / "keys"
    result = emojimation("keys", "generate", folder)
    assert result.returncode == 0, result.stderr
    return folder


# --- keys and configuration errors --------------------------------------------------------------
def test_keys_generate_layout_permissions_and_no_overwrite(tmp_path):
    folder = tmp_path / "keys"
    result = emojimation("keys", "generate", folder, "--name", "camera-host")
    assert result.returncode == 0, result.stderr
    for pair in ("server", "client", "camera-host"):
        public, secret = zmq.auth.load_certificate(str(folder / f"{pair}.key_secret"))
        assert zmq.auth.load_certificate(str(folder / f"{pair}.key"))[0] == public and secret
        assert stat.S_IMODE((folder / f"{pair}.key_secret").stat().st_mode) == 0o600
        assert secret.decode() not in result.stdout  # never printed
    assert sorted(p.name for p in (folder / "authorized").iterdir()) == ["camera-host.key", "client.key"]
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    again = emojimation("keys", "generate", folder)
    assert again.returncode == 0 and "kept existing server keys" in again.stdout
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("case", ["missing folder", "missing client key"])
def test_bad_keys_folder_is_a_one_line_error(tmp_path, keys, case):
    folder = tmp_path / "nope"
    if case == "missing client key":
        folder.mkdir()
        for name in ("server.key", "server.key_secret"):
            (folder / name).write_bytes((keys / name).read_bytes())
    result = emojimation("relay", "--connect", free_tcp_address(), "--bind", free_tcp_address(),
                         "--curve-dir", folder)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emojimation: error: curve_dir"), result.stderr
    assert ("no such folder" if case == "missing folder" else "client.key_secret is missing") in lines[0]


# --- (a) + (c): separately started stages analyse a clip over Curve -------------------------
def test_bind_connect_stages_over_curve_analyse_the_clip(stages, clips, keys, tmp_path):
    clip, frames = clips["short"]
    db = tmp_path / "results.db"
    ingest, detector, classifier = free_tcp_address(), free_tcp_address(), free_tcp_address()
    curve = ("--curve-dir", keys)
    stages.start("aggregator", "aggregator", "--connect", classifier, "--store", f"sqlite:///{db}", *curve)
    stages.start("classifier", "classifier", "--connect", detector, "--bind", classifier, *curve)
    stages.start("detector", "detector", "--connect", ingest, "--bind", detector, *curve)
    stages.wait_ready(aggregator=1, classifier=1, detector=1)
    stages.start("ingest", "ingest", "--bind", ingest, "--every-frame", "--inputs", clip, *curve)
    done = stages.wait_for("the clip stored as done", lambda: finished_sources(db))
    assert len(done) == 1 and done[0]["uri"] == str(clip.resolve())
    assert done[0]["frames_analysed"] == frames
    assert 0 < done[0]["frames_with_faces"] < frames  # the empty second is analysed too
    assert stages.processes["ingest"].wait(10) == 0


def test_listen_push_relay_metrics_and_json_logs(stages, clips, keys, tmp_path):
    """ingest -bind-> detector -push-> relay -bind-> 2 classifiers -push-> aggregator (listens),
    all tcp:// with Curve; every stage's /metrics is scraped before and after the run."""
    clip, frames = clips["long"]
    db = tmp_path / "results.db"
    ingest, relay_in, relay_out, aggregator = (free_tcp_address() for _ in range(4))
    ports = {name: free_port() for name in ("ingest", "detector", "relay", "classifier-0", "classifier-1",
                                            "aggregator")}
    curve = ("--curve-dir", keys)

    def metrics(name: str) -> tuple[str, int, str, str]:
        return "--metrics-port", ports[name], "--log-format", "json"

    stages.start("aggregator", "aggregator", "--listen", aggregator, "--store", f"sqlite:///{db}", *curve,
                 *metrics("aggregator"))
    for i in range(2):
        stages.start(f"classifier-{i}", "classifier", "--connect", relay_out, "--push", aggregator, *curve,
                     *metrics(f"classifier-{i}"))
    stages.start("relay", "relay", "--listen", relay_in, "--bind", relay_out, *curve, *metrics("relay"))
    # Ingest starts before the detector: with nobody to take its frames it is held at zero.
    stages.start("ingest", "ingest", "--bind", ingest, "--every-frame", "--inputs", clip, *curve,
                 *metrics("ingest"))
    stages.wait_ready(aggregator=1, classifier=2, relay=1, ingest=1)
    before = {name: scrape(port) for name, port in ports.items() if name != "detector"}
    assert metric(before["ingest"], "emojimation_frames_out_total", stage="ingest") == 0
    stages.start("detector", "detector", "--connect", ingest, "--push", relay_in, *curve, *metrics("detector"))
    stages.wait_ready(detector=1)
    before["detector"] = scrape(ports["detector"])

    def ingest_moved() -> dict | None:  # scraped while ingest still runs (it exits once all is sent)
        samples = scrape(ports["ingest"])
        return samples if metric(samples, "emojimation_frames_out_total", stage="ingest") > 0 else None

    during = stages.wait_for("ingest sending frames", ingest_moved, timeout=60)
    assert metric(during, "emojimation_messages_sent_total") > 0

    done = stages.wait_for("the clip stored as done", lambda: finished_sources(db), timeout=60)
    assert len(done) == 1 and done[0]["frames_analysed"] == frames
    after = {name: scrape(port) for name, port in ports.items() if name != "ingest"}

    def moved(name: str, metric_name: str) -> float:
        return metric(after[name], metric_name) - metric(before[name], metric_name)

    assert moved("detector", "emojimation_frames_in_total") == frames
    assert moved("detector", "emojimation_frames_out_total") == frames
    assert moved("relay", "emojimation_frames_in_total") == frames
    assert moved("relay", "emojimation_messages_sent_total") == frames + 2  # Start, frames, End
    per_classifier = [moved(f"classifier-{i}", "emojimation_frames_in_total") for i in range(2)]
    assert sum(per_classifier) == frames and all(n > 0 for n in per_classifier), per_classifier
    for i in range(2):
        assert moved(f"classifier-{i}", "emojimation_batch_size_count") > 0
        assert moved(f"classifier-{i}", "emojimation_inference_seconds_count") > 0
        assert ("emojimation_queue_depth", (("stage", "classifier"),)) in after[f"classifier-{i}"]
    assert moved("aggregator", "emojimation_frames_in_total") == frames
    assert moved("aggregator", "emojimation_capture_to_stored_seconds_count") == done[0]["faces"] > 0
    for name, samples in after.items():
        assert metric(samples, "emojimation_rejected_peers_total") == 0, name
        assert metric(samples, "emojimation_malformed_messages_total") == 0, name
        assert all(labels and dict(labels).get("stage") for (sample, labels) in samples
                   if sample.startswith("emojimation_")), name
    assert stages.processes["ingest"].wait(10) == 0

    stages.stop()  # the logs are complete once the stages have exited
    for name in ports:  # --log-format json: every line of every stage is one JSON object
        entries = [json.loads(line) for line in stages.log(name).splitlines() if line.strip()]
        assert entries and all(set(e) >= {"time", "level", "stage", "logger", "message"} for e in entries), name
        assert {e["stage"] for e in entries} == {name.split("-")[0]}
    aggregator_log = [json.loads(line) for line in stages.log("aggregator").splitlines() if line.strip()]
    assert any("done" in e["message"] for e in aggregator_log)


# --- (b) peers without a key, or with a key that is not authorised, are refused ---------------
def _classified_stream(stream: str, uri: str, count: int) -> list[list[bytes]]:
    rng = np.random.default_rng(0)
    now = time.time()
    messages = [Start(stream=stream, seq=0, capture_time=now, kind="video", uri=uri, name=uri, source_fps=10.0,
                      width=640, height=360, expected_frames=count, options={"fps": None})]
    for i in range(count):
        probs = rng.dirichlet(np.ones(7), size=1).astype(np.float32)
        messages.append(Classified(stream=stream, seq=i + 1, source_time=i / 10, capture_time=now, frame_index=i,
                                   boxes=np.array([[100, 80, 120, 120]], np.float32),
                                   scores=np.array([0.9], np.float32), crops=np.zeros((1, 48, 48), np.uint8),
                                   probs=probs))
    messages.append(End(stream=stream, seq=count + 1, frames_sent=count))
    return [encode(m) for m in messages]


def _peer(context: zmq.Context, address: str, pair: Path | None, server_key: Path,
          kind: int = zmq.PUSH) -> zmq.Socket:
    sock = context.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if pair is not None:
        public, secret = zmq.auth.load_certificate(str(pair))
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_serverkey = zmq.auth.load_certificate(str(server_key))[0]
    sock.connect(address)
    return sock


def test_peers_without_an_authorised_key_are_refused_and_counted(stages, keys, tmp_path):
    db = tmp_path / "results.db"
    address, port = free_tcp_address(), free_port()
    stages.start("aggregator", "aggregator", "--listen", address, "--store", f"sqlite:///{db}",
                 "--curve-dir", keys, "--metrics-port", port)
    stages.wait_ready(aggregator=1)
    other = tmp_path / "other-keys"  # a valid key pair, but from another folder: not authorised here
    assert emojimation("keys", "generate", other).returncode == 0
    context = zmq.Context()
    try:
        plain = _peer(context, address, None, keys / "server.key")
        rogue = _peer(context, address, other / "client.key_secret", keys / "server.key")
        # An authorised client pair that trusts another server key: it must not talk to this one either.
        misled = _peer(context, address, keys / "client.key_secret", other / "server.key")
        for sock, name in ((plain, "plain"), (rogue, "unauthorised"), (misled, "wrong-server")):
            # A refused peer's connection may be gone before its first send, and a PUSH socket
            # without one blocks: give each send a second (the refusal is counted at the handshake).
            sock.setsockopt(zmq.SNDTIMEO, 1000)
            for frames in _classified_stream(f"{name}/0", f"rogue://{name}", 3):
                try:
                    sock.send_multipart(frames)
                except zmq.Again:
                    break

        def refused() -> dict | None:
            samples = scrape(port)
            return samples if (metric(samples, "emojimation_rejected_peers_total", reason="handshake") >= 1 and
                               metric(samples, "emojimation_rejected_peers_total", reason="unauthorized") >= 1) \
                else None

        stages.wait_for("both peers refused", refused)
        good = _peer(context, address, keys / "client.key_secret", keys / "server.key")
        for frames in _classified_stream("good/0", "good://authorised", 3):
            good.send_multipart(frames)
        done = stages.wait_for("the authorised stream stored", lambda: finished_sources(db))
    finally:
        context.destroy(linger=0)
    with Store(f"sqlite:///{db}", migrate=False) as store:
        sources = store.sources()
    assert sources["uri"].tolist() == ["good://authorised"]  # nothing from the refused peers
    assert done[0]["frames_analysed"] == 3
    samples = scrape(port)
    assert metric(samples, "emojimation_messages_received_total", stage="aggregator") == 5  # the good stream only
    log = stages.log("aggregator")
    assert "refused" in log and "not in the authorized folder" in log
    for folder in (keys, other):  # no key material in the log, public or secret
        for pair in ("server", "client"):
            public, secret = zmq.auth.load_certificate(str(folder / f"{pair}.key_secret"))
            assert public.decode() not in log and secret.decode() not in log


def test_a_bound_push_socket_refuses_peers_without_an_authorised_key(stages, clips, keys, tmp_path):
    """The other direction: ingest's output is a bound PUSH (a Curve server). Pullers with no key,
    an unauthorised key or the wrong server key are refused and get nothing, not one frame;
    an authorised puller then gets the whole stream."""
    clip, frames = clips["short"]
    address, port = free_tcp_address(), free_port()
    stages.start("ingest", "ingest", "--bind", address, "--every-frame", "--inputs", clip, "--curve-dir", keys,
                 "--metrics-port", port)
    stages.wait_ready(ingest=1)
    other = tmp_path / "other-keys"
    assert emojimation("keys", "generate", other).returncode == 0
    context = zmq.Context()
    try:
        refused_peers = {
            "plain": _peer(context, address, None, keys / "server.key", zmq.PULL),
            "unauthorised": _peer(context, address, other / "client.key_secret", keys / "server.key", zmq.PULL),
            "wrong-server": _peer(context, address, keys / "client.key_secret", other / "server.key", zmq.PULL),
        }

        def refused() -> dict | None:
            try:
                samples = scrape(port)
            except OSError:  # ingest exits once its stream is sent
                received = {name: sock.poll(0) for name, sock in refused_peers.items()}
                raise AssertionError(f"ingest ended before refusing the pullers; received something: {received}")
            return samples if (metric(samples, "emojimation_rejected_peers_total", reason="handshake") >= 1 and
                               metric(samples, "emojimation_rejected_peers_total", reason="unauthorized") >= 1) \
                else None

        stages.wait_for("the pullers refused", refused)
        assert metric(scrape(port), "emojimation_frames_out_total", stage="ingest") == 0  # held, nothing sent
        good = _peer(context, address, keys / "client.key_secret", keys / "server.key", zmq.PULL)
        received = []
        stages.wait_for("the whole stream at the authorised puller",
                        lambda: (good.poll(50) and received.append(decode(good.recv_multipart())))
                        or (received and isinstance(received[-1], End)), timeout=60)
        # The positive signal came first (the stream went out, to the authorised puller): now the
        # refused pullers' silence means they were given nothing.
        assert [type(m).__name__ for m in received] == ["Start"] + ["Frame"] * frames + ["End"]
        for name, sock in refused_peers.items():
            assert not sock.poll(500), f"the {name} puller received a message"
    finally:
        context.destroy(linger=0)
    assert stages.processes["ingest"].wait(30) == 0
    log = stages.log("ingest")
    assert "refused" in log and "not in the authorized folder" in log


def test_relay_forwards_messages_unchanged_and_drops_malformed_ones(stages, tmp_path):
    source, sink, port = f"ipc://{tmp_path / 'in.sock'}", f"ipc://{tmp_path / 'out.sock'}", free_port()
    stages.start("relay", "relay", "--listen", source, "--bind", sink, "--metrics-port", port)
    stages.wait_ready(relay=1)
    valid = _classified_stream("s/0", "file:///clip.mp4", 2)
    context = zmq.Context()
    try:
        push, pull = context.socket(zmq.PUSH), context.socket(zmq.PULL)
        push.connect(source)
        pull.connect(sink)
        push.send_multipart(valid[0])
        push.send_multipart([b"not an emojimation message", b"{}"])
        for frames in valid[1:]:
            push.send_multipart(frames)
        received = []
        stages.wait_for("the valid messages relayed",
                        lambda: (pull.poll(50) and received.append(pull.recv_multipart())) or len(received) == len(valid))
        for socket in (push, pull):
            socket.close(linger=0)
    finally:
        context.term()
    assert received == valid  # byte for byte, in order
    samples = scrape(port)
    assert metric(samples, "emojimation_malformed_messages_total", stage="relay") == 1
    assert metric(samples, "emojimation_dropped_total", stage="relay", reason="malformed") == 1
    assert metric(samples, "emojimation_frames_out_total", stage="relay") == 2
    assert metric(samples, "emojimation_messages_sent_total", stage="relay") == len(valid)


def test_a_bound_pub_socket_gives_plain_subscribers_nothing(stages, keys, tmp_path):
    """The aggregator's results PUB (what `monitor --preview` reads) goes through the same
    security layer as every other socket: with keys, a plain subscriber is refused (counted) and
    receives nothing, while an authorised one receives every tracked frame."""
    db = tmp_path / "results.db"
    listen, results, port = free_tcp_address(), free_tcp_address(), free_port()
    stages.start("aggregator", "aggregator", "--listen", listen, "--results-bind", results,
                 "--store", f"sqlite:///{db}", "--curve-dir", keys, "--metrics-port", port)
    stages.wait_ready(aggregator=1)
    context = zmq.Context()
    try:
        subscribers = {}
        for name, pair in (("plain", None), ("authorised", keys / "client.key_secret")):
            sock = _peer(context, results, pair, keys / "server.key", zmq.SUB)
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            subscribers[name] = sock
        stages.wait_for("the plain subscriber refused", lambda: metric(
            scrape(port), "emojimation_rejected_peers_total", reason="handshake") >= 1)
        time.sleep(0.5)  # the authorised subscription reaches the PUB (no positive signal for it exists)
        pusher = _peer(context, listen, keys / "client.key_secret", keys / "server.key")
        for frames in _classified_stream("pub/0", "pub://clip", 5):
            pusher.send_multipart(frames)
        tracked = []
        stages.wait_for("tracked frames at the authorised subscriber",
                        lambda: (subscribers["authorised"].poll(50)
                                 and tracked.append(decode(subscribers["authorised"].recv_multipart())))
                        or len(tracked) == 5)
        assert [m.seq for m in tracked] == [1, 2, 3, 4, 5]
        assert not subscribers["plain"].poll(500), "the plain subscriber received a message"
    finally:
        context.destroy(linger=0)


def test_a_plain_bind_beyond_loopback_needs_insecure(tmp_path):
    """Without keys, binding a tcp:// address other than loopback is a usage error (exit 2, one
    line); `--insecure` allows it with one warning line."""
    port = free_port()
    refused = emojimation("relay", "--listen", f"tcp://0.0.0.0:{port}", "--bind", free_tcp_address())
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "--insecure" in lines[0] and "Traceback" not in refused.stderr, refused.stderr
    relay = subprocess.Popen([sys.executable, "-m", "core.relay", "--listen", f"tcp://0.0.0.0:{port}", "--bind",
                              free_tcp_address(), "--insecure", "--log-level", "INFO"],
                             stderr=subprocess.PIPE, text=True, env={**os.environ, **STAGE_ENV})
    try:
        warning = relay.stderr.readline()
        assert "--insecure" in warning and "without encryption" in warning, warning
        assert relay.poll() is None
    finally:
        relay.terminate()
        relay.wait(10)
