"""Starts the stage processes, watches them, and reports progress and results.

Each stage is a separate OS process (`python -m emojimation <stage> ...`) joined by
ZeroMQ. Every stage binds its output and connects to its upstreams' outputs, and all
report to the supervisor's status socket. A stage that dies or a pipeline that stalls ends
the run with a one-line error within seconds; every child is gone when `stop()` returns.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import zmq

from core.errors import EmojimationError, redact_url
from core.messages import MessageError, Status, StatusEvent, decode

logger = logging.getLogger(__name__)

STOP_GRACE_S = 4.0
PER_STAGE_ENVIRONMENT = {f"EMOJIMATION_{name}" for name in (
    "CONNECT", "BIND", "LISTEN", "PUSH", "STATUS", "METRICS_PORT", "CAMERA", "INPUTS", "NAME", "STREAM_PREFIX")}


class PipelineError(EmojimationError):
    """The pipeline itself failed (a stage died or stalled), as opposed to one bad input."""


def free_tcp_address() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{sock.getsockname()[1]}"


@dataclass
class Child:
    name: str
    args: list[str]
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)  # added to the supervisor's environment
    inherit_output: bool = False

    def last_log_line(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if " ERROR " in line or "Error" in line]
        return (errors or lines or [""])[-1].strip()[:300]


@dataclass
class StreamResult:
    index: int
    path: str
    status: str = "pending"  # pending | started | done | failed
    source_id: int | None = None
    expected_frames: int = 0
    frames_analysed: int = 0
    error: str = ""


@dataclass
class Addresses:
    ingest: str
    detectors: list[str]
    classifiers: list[str]
    status: str


class Supervisor:
    """Runs one set of stage processes; use as a context manager so children never leak."""

    def __init__(self, work_dir: Path | None = None, transport: str = "ipc") -> None:
        self.work_dir = Path(tempfile.mkdtemp(prefix="emojimation-")) if work_dir is None else work_dir
        self.owns_work_dir = work_dir is None
        self.transport = transport
        self.children: list[Child] = []
        self.context = zmq.Context()
        self.status_socket = self.context.socket(zmq.PULL)
        self.status_socket.setsockopt(zmq.LINGER, 0)
        self.status_address = self.address("status")
        self.status_socket.bind(self.status_address)
        # Addresses and ports are per stage: a deployment's EMOJIMATION_BIND or _METRICS_PORT in
        # this process's environment must not reach every child (they would all bind one port).
        inherited = {k: v for k, v in os.environ.items() if k not in PER_STAGE_ENVIRONMENT}
        self.env = {**inherited, "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1",
                    "PYTHONUNBUFFERED": "1"}

    def address(self, name: str) -> str:
        if self.transport == "tcp":
            return free_tcp_address()
        return f"ipc://{self.work_dir / name}.sock"

    def addresses(self, detectors: int, classifiers: int) -> Addresses:
        return Addresses(
            ingest=self.address("ingest"),
            detectors=[self.address(f"detector-{i}") for i in range(detectors)],
            classifiers=[self.address(f"classifier-{i}") for i in range(classifiers)],
            status=self.status_address,
        )

    def spawn(self, name: str, stage_args: list[str], env: dict[str, str] | None = None,
              inherit_output: bool = False) -> Child:
        """Start a stage process. Its log goes to a file in the work folder (read back for
        error messages), or with `inherit_output` to this process's stderr (long-running
        commands, where the operator reads the stages' logs)."""
        child = Child(name, [sys.executable, "-m", "emojimation", *stage_args], env=env or {},
                      inherit_output=inherit_output)
        self._start(child)
        self.children.append(child)
        logger.debug("started %s (pid %d): %s", name, child.process.pid, redact_url(" ".join(stage_args)))
        return child

    def _start(self, child: Child) -> None:
        environment = {**self.env, **child.env}
        if child.inherit_output:
            child.process = subprocess.Popen(child.args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                             env=environment, start_new_session=True, preexec_fn=_die_with_parent)
            return
        child.log_path = self.work_dir / f"{child.name}.log"
        with child.log_path.open("ab") as log:
            child.process = subprocess.Popen(child.args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             env=environment, start_new_session=True,
                                             preexec_fn=_die_with_parent)

    def respawn(self, child: Child) -> None:
        """Start a stage that died again, with the same arguments and addresses."""
        self._start(child)

    def dead_child(self, ignore: set[str] = frozenset()) -> Child | None:
        for child in self.children:
            if child.name not in ignore and child.process is not None and child.process.poll() is not None:
                return child
        return None

    def statuses(self, timeout_ms: int) -> list[Status]:
        """Status reports received within `timeout_ms` (malformed ones are logged and skipped)."""
        reports: list[Status] = []
        if not self.status_socket.poll(timeout_ms):
            return reports
        while True:
            try:
                frames = self.status_socket.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return reports
            try:
                message = decode(frames)
            except MessageError as error:
                logger.warning("ignored a malformed status report: %s", error)
                continue
            if isinstance(message, Status):
                reports.append(message)

    def stop(self) -> None:
        """SIGTERM every child, then SIGKILL what is left after the grace period."""
        for child in self.children:
            if child.process and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for child in self.children:
            if child.process is None:
                continue
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop in %.0f s; killing it", child.name, STOP_GRACE_S)
                child.process.kill()
                child.process.wait()

    def close(self) -> None:
        """Stop every child and remove the work folder; a second Ctrl-C or SIGTERM cannot cut
        this short (it would leave children and sockets behind)."""
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)} \
            if in_main_thread else {}
        try:
            self.stop()
            self.status_socket.close()
            self.context.term()
        finally:
            if self.owns_work_dir:
                shutil.rmtree(self.work_dir, ignore_errors=True)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def __enter__(self) -> "Supervisor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the supervisor dies, however it dies (Linux)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def describe_death(child: Child) -> str:
    code = child.process.returncode if child.process else None
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    detail = child.last_log_line()
    return f"{child.name} stopped unexpectedly ({how})" + (f": {detail}" if detail else "")


def stage_args(stage: str, connect: list[str], bind: str, status: str, extra: dict[str, Any]) -> list[str]:
    """CLI arguments that start `stage` with these addresses and options."""
    args = [stage]
    for address in connect:
        args += ["--connect", address]
    if bind:
        args += ["--bind", bind]
    args += ["--status", status]
    for key, value in extra.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            if value:
                args.append(flag)
        elif isinstance(value, list):
            args += [flag, *map(str, value)] if value else []
        elif value not in (None, ""):
            args += [flag, str(value)]
    return args


@dataclass
class FileRun:
    """One `analyse` run over files: the stage processes, results per input, progress."""

    supervisor: Supervisor
    inputs: list[str]
    options: dict[str, Any]
    on_progress: Callable[[int], None] = lambda frames: None
    results: list[StreamResult] = field(default_factory=list)
    by_stream: dict[str, StreamResult] = field(default_factory=dict)
    ingest_done: bool = False
    last_progress: float = 0.0

    def start(self) -> None:
        opts = self.options
        links = self.supervisor.addresses(opts["detector_workers"], opts["workers"])
        self.results = [StreamResult(i, path) for i, path in enumerate(self.inputs)]
        spawn = self.supervisor.spawn
        spawn("aggregator", stage_args("aggregator", links.classifiers, "", links.status,
                                       {"thumbnails": opts["thumbnails"]}),
              env={"EMOJIMATION_STORE": opts["store"]} if opts["store"] else None)  # not argv: URLs hold passwords
        for i, address in enumerate(links.classifiers):
            spawn(f"classifier-{i}", stage_args("classifier", links.detectors, address, links.status,
                                                {"model": opts["model"], "threads": opts.get("classifier_threads", 1)}))
        for i, address in enumerate(links.detectors):
            spawn(f"detector-{i}", stage_args("detector", [links.ingest], address, links.status,
                                              {"detector": opts["detector"]}))
        # Ingest starts at once too: it decodes and queues frames (blocking at the high-water
        # mark) while the classifier is still loading TensorFlow, instead of after it.
        fps_args = {"every_frame": True} if opts["every_frame"] else {"fps": opts["fps"]}
        spawn("ingest", stage_args("ingest", [], links.ingest, links.status,
                                   {**fps_args, "max_side": opts["max_side"], "stream_prefix": "in",
                                    "inputs": self.inputs}))

    def _apply(self, report: Status) -> None:
        """Fold one status report into the run's state."""
        if report.event != "progress":
            self.last_progress = time.monotonic()
        if report.event == StatusEvent.FINISHED and report.stage == "ingest":
            self.ingest_done = True
        result = self.by_stream.get(report.stream)
        if result is None:
            return
        if report.event == StatusEvent.INPUT_STARTED:
            result.expected_frames = int(report.detail.get("expected_frames", 0))
            if result.status == "pending":  # the aggregator's "done" may arrive first
                result.status = "started"
        elif report.event == StatusEvent.INPUT_FAILED:
            result.status, result.error = "failed", report.detail.get("error", "failed")
        elif report.event in (StatusEvent.PROGRESS, StatusEvent.DONE):
            advanced = int(report.detail.get("frames_analysed", 0)) - result.frames_analysed
            result.frames_analysed += advanced
            result.source_id = report.detail.get("source_id", result.source_id)
            if advanced:
                self.last_progress = time.monotonic()
                self.on_progress(advanced)
            if report.event == StatusEvent.DONE:
                result.status = "done"
        elif report.event == StatusEvent.FAILED:
            result.status, result.error = "failed", report.detail.get("error", "failed")
            result.source_id = report.detail.get("source_id", result.source_id)

    def wait(self, stall_timeout_s: float = 60.0) -> list[StreamResult]:
        self.by_stream = {f"in/{r.index}": r for r in self.results}
        self.ingest_done = False
        self.last_progress = time.monotonic()
        ingest = next(c for c in self.supervisor.children if c.name == "ingest")
        while True:
            for report in self.supervisor.statuses(200):
                self._apply(report)
            if self.ingest_done and all(r.status in ("done", "failed") for r in self.results):
                return self.results
            dead = self.supervisor.dead_child(ignore={"ingest"})
            if dead is not None:
                raise PipelineError(describe_death(dead))
            if ingest.process.poll() is not None and not self.ingest_done:
                for report in self.supervisor.statuses(500):  # it reports "finished" just before exiting
                    self._apply(report)
                if not self.ingest_done:
                    raise PipelineError(describe_death(ingest))
            if time.monotonic() - self.last_progress > stall_timeout_s:
                raise PipelineError(f"no progress for {stall_timeout_s:.0f} s; the pipeline is stuck")
