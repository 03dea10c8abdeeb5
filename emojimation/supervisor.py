"""Starts the stage processes, watches them, and reports progress and results.

Each stage is a separate OS process (`python -m <stage> ...`, started from its typed config by
`spawn`; emojimation.topology says which) joined by ZeroMQ. Every stage binds its output and connects to its upstreams' outputs, and all
report to the supervisor's status socket. A stage that dies, or hangs (no heartbeat: it is
killed first), is started again with the same addresses, within a restart budget with backoff
(`RestartBudget`); restarts and hangs are events in the store (`record_event`). Every child is
gone when `stop()` returns.
"""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from core.errors import EmojimationError, database_errors
from core.messages import Status, StatusEvent
from core.process import stage_command
from core.runtime import receive_waiting
from core.store import Store
from emojimation.zygote import ForkedProcess, Zygote, stage_environment

logger = logging.getLogger(__name__)

STOP_GRACE_S = 4.0
STARTUP_GRACE_S = 60.0  # a stage's first report may take this long (a Keras model loads TensorFlow)
RESTART_LIMIT = 5  # restarts of one stage within RESTART_WINDOW_S before the supervisor gives up
RESTART_WINDOW_S = 60.0


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
    process: ForkedProcess | None = None
    log_path: Path | None = None
    env: dict[str, str] = field(default_factory=dict)  # added to the supervisor's environment
    inherit_output: bool = False
    last_seen: float = 0.0  # monotonic time of its start or its latest status report (heartbeats included)
    reported: bool = False  # has it sent any report since it was (re)started?
    restarts: int = 0  # times it was started again

    def last_log_line(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        errors = [line for line in lines if " ERROR " in line or "Error" in line]
        return (errors or lines or [""])[-1].strip()[:300]


class Supervisor:
    """Runs one set of stage processes; use as a context manager so children never leak."""

    def __init__(self, work_dir: Path | None = None, transport: str = "ipc", zygote: Zygote | None = None) -> None:
        """`zygote`: one started early (`Zygote.warm`) so its imports overlap the caller's own
        preparation; the supervisor closes it with itself. Default: a new one, started on the
        first spawn."""
        self.work_dir = Path(tempfile.mkdtemp(prefix="emojimation-")) if work_dir is None else work_dir
        self.owns_work_dir = work_dir is None
        self.transport = transport
        self.children: list[Child] = []
        self.context = zmq.Context()
        self.status_socket = self.context.socket(zmq.PULL)
        self.status_socket.setsockopt(zmq.LINGER, 0)
        self.status_address = self.address("status")
        self.status_socket.bind(self.status_address)
        self.env = stage_environment()
        self.zygote = zygote or Zygote(self.env)

    def address(self, name: str) -> str:
        if self.transport == "tcp":
            return free_tcp_address()
        return f"ipc://{self.work_dir / name}.sock"

    def spawn(self, name: str, module: str, config: Any, inherit_output: bool = False,
              log_level: str = "WARNING") -> Child:
        """Start `python -m module` with `config` (secrets go by environment: core.process).
        Its log goes to a file in the work folder (read back for error messages), or with
        `inherit_output` to this process's stderr (long-running commands, where the operator
        reads the stages' logs)."""
        argv, env = stage_command(module, config)
        child = Child(name, [sys.executable, *argv, "--log-level", log_level], env=env, inherit_output=inherit_output)
        try:
            self._start(child)
        except OSError as error:
            raise PipelineError(str(error)) from None
        self.children.append(child)
        logger.debug("started %s (pid %d): %s", name, child.process.pid, " ".join(argv))
        return child

    def _start(self, child: Child) -> None:
        """Fork the child from the zygote (emojimation.zygote says why), its output appended to
        its log file in the work folder, or with `inherit_output` to this process's stderr."""
        child.last_seen, child.reported = time.monotonic(), False
        child.log_path = None if child.inherit_output else self.work_dir / f"{child.name}.log"
        child.process = self.zygote.start(child.args, {**self.env, **child.env}, child.log_path)

    def respawn(self, child: Child) -> None:
        """Start a stage that died again, with the same arguments and addresses (it learns how
        many times it was restarted, a metric)."""
        child.restarts += 1
        child.env = {**child.env, "EMOJIMATION_RESTARTS": str(child.restarts)}
        try:
            self._start(child)
        except OSError as error:  # it stays dead: the next check restarts it again, within the budget
            logger.warning("could not restart %s: %s", child.name, error)

    def kill_hung(self, timeout_s: float) -> list[Child]:
        """SIGKILL the children silent for `timeout_s` (see hung_children) and reap them; returns them."""
        hung = self.hung_children(timeout_s)
        for child in hung:
            logger.error("%s sent no status for %.0f s (hung); killing it", child.name,
                         time.monotonic() - child.last_seen)
            child.process.kill()
            child.process.wait(5)
        return hung

    def statuses(self, timeout_ms: int) -> list[Status]:
        """Status reports received within `timeout_ms` (malformed ones are logged and skipped)."""
        reports: list[Status] = []
        for message in receive_waiting(self.status_socket, timeout_ms,
                                       lambda error: logger.warning("ignored a malformed status report: %s", error)):
            if isinstance(message, Status):
                self._seen(message)
                if message.event != StatusEvent.HEARTBEAT:  # liveness only: consumed here
                    reports.append(message)
        return reports

    def _seen(self, report: Status) -> None:
        pid = report.detail.get("pid")
        for child in self.children:
            if child.process is not None and child.process.pid == pid:
                child.last_seen, child.reported = time.monotonic(), True

    def hung_children(self, timeout_s: float, startup_s: float = STARTUP_GRACE_S) -> list[Child]:
        """Running children that have sent no report for `timeout_s` (or, before their first
        report, for `startup_s`: loading a model takes a while): stopped, deadlocked or blocked."""
        now = time.monotonic()
        return [child for child in self.children
                if child.process is not None and child.process.poll() is None
                and now - child.last_seen > (timeout_s if child.reported else max(timeout_s, startup_s))]

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
                try:
                    child.process.wait(STOP_GRACE_S)
                except subprocess.TimeoutExpired:  # its exit was never reported (the zygote is stuck)
                    logger.error("%s (pid %d) did not report its end after SIGKILL", child.name, child.process.pid)

    def close(self) -> None:
        """Stop every child and remove the work folder; a second Ctrl-C or SIGTERM cannot cut
        this short (it would leave children and sockets behind)."""
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)} \
            if in_main_thread else {}
        try:
            self.stop()
            self.zygote.close()
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


@dataclass
class RestartBudget:
    """At most `limit` restarts per stage within `window_s`, each waiting twice as long as the
    one before (from `first_delay_s` up to `max_delay_s`), so a crash loop neither spins nor
    goes on for ever."""

    limit: int = RESTART_LIMIT
    window_s: float = RESTART_WINDOW_S
    first_delay_s: float = 0.25
    max_delay_s: float = 5.0
    history: dict[str, deque[float]] = field(default_factory=dict)

    def spend(self, name: str, now: float) -> float | None:
        """The delay before restarting `name`, or None if its budget is spent."""
        history = self.history.setdefault(name, deque())
        while history and now - history[0] > self.window_s:
            history.popleft()
        if len(history) >= self.limit:
            return None
        history.append(now)
        return min(self.max_delay_s, self.first_delay_s * 2 ** (len(history) - 1))

    def clear(self, name: str) -> None:
        self.history.pop(name, None)


def record_event(store_url: str, kind: str, message: str, source_id: int | None = None,
                 data: dict[str, Any] | None = None) -> None:
    """Restarts, hangs and resumes are events in the store (the dashboard's events page lists
    them); a store that cannot take one costs a warning, never the run."""
    try:
        with Store(store_url) as store:
            store.add_event(source_id, kind, message, data)
    except (EmojimationError, OSError, *database_errors()) as error:
        logger.warning("could not record the %s event: %s", kind, error)


def describe_death(child: Child) -> str:
    code = child.process.returncode if child.process else None
    how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
    if child.process is not None and child.process.cause:
        how = child.process.cause
    detail = child.last_log_line()
    return f"{child.name} stopped unexpectedly ({how})" + (f": {detail}" if detail else "")
