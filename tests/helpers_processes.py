"""Which processes a test started, found by a marker in their environment, not by command line.

A test runs a command with `EMOJIMATION_TEST_MARKER=<uuid>` in its environment (`marker.env()`).
Every process started under it inherits the variable: the supervisor, each stage however it is
started (`python -m emojimation <stage>`, `python -m <stage>`, ...), the ffmpeg an ingest runs,
and anything those start in turn. Scanning /proc/*/environ for the marker finds them all, even
after they were orphaned and re-parented, whatever their command line says.

`/proc/PID/environ` is the environment the process was started with; a zombie's reads as empty
(it has exited: only its exit status waits to be collected), and processes this user may not
read are skipped. The test process itself never counts.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

MARKER_VARIABLE = "EMOJIMATION_TEST_MARKER"


@dataclass(frozen=True)
class MarkedProcess:
    pid: int
    ppid: int
    comm: str  # the executable's short name (`python3`, `ffmpeg`, `sleep`): from /proc/PID/comm
    argv: tuple[str, ...]

    def __str__(self) -> str:
        return f"pid {self.pid} (parent {self.ppid}, {self.comm}): {' '.join(self.argv)[:200]}"


def _read_process(pid: int) -> tuple[bytes, MarkedProcess] | None:
    folder = Path("/proc") / str(pid)
    try:
        environ = (folder / "environ").read_bytes()
        stat = (folder / "stat").read_text()
        comm = (folder / "comm").read_text().strip()
        argv = tuple(part.decode(errors="replace") for part in (folder / "cmdline").read_bytes().split(b"\0") if part)
        if len(argv) == 1:  # a forked stage's title (emojimation.zygote) is one string: split it
            argv = tuple(argv[0].split())
    except OSError:  # gone meanwhile, or not ours to read
        return None
    ppid = int(stat.rsplit(")", 1)[1].split()[1])
    return environ, MarkedProcess(pid, ppid, comm, argv)


def marked_processes(marker: str) -> list[MarkedProcess]:
    """Every live process (but this one) whose environment holds EMOJIMATION_TEST_MARKER=marker."""
    wanted = f"{MARKER_VARIABLE}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        read = _read_process(int(entry))
        if read is not None and wanted in read[0].split(b"\0"):
            found.append(read[1])
    return sorted(found, key=lambda process: process.pid)


class ProcessMarker:
    """One test's marker: put `env()` in the environment of what the test starts, then check
    that nothing carrying it is left (`assert_none_left`)."""

    def __init__(self) -> None:
        self.value = uuid.uuid4().hex

    def env(self, base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
        return {**(os.environ if base is None else base), MARKER_VARIABLE: self.value, **extra}

    def processes(self) -> list[MarkedProcess]:
        return marked_processes(self.value)

    def wait_gone(self, timeout_s: float) -> list[MarkedProcess]:
        """Poll until no marked process is left or `timeout_s` passed; returns what is left."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = self.processes()
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.1)

    def kill_all(self) -> list[MarkedProcess]:
        """SIGKILL every marked process (clean-up); returns what was found."""
        left = self.processes()
        for process in left:
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left

    def assert_none_left(self, grace_s: float = 10.0, what: str = "") -> None:
        """Fail, listing them, if marked processes are still alive `grace_s` after the call.

        Call it once the command under test has exited (the positive signal); the grace only
        lets children that were told to stop finish exiting on a loaded machine. Whatever is
        left is killed before the assertion is raised, so a failing test leaks nothing."""
        left = self.wait_gone(grace_s)
        if left:
            self.kill_all()
            listing = "\n  ".join(str(process) for process in left)
            raise AssertionError(f"{len(left)} process(es) left behind{' ' + what if what else ''} "
                                 f"{grace_s:g} s after the command ended:\n  {listing}")


def stage_processes(processes: list[MarkedProcess], stage: str) -> list[MarkedProcess]:
    """The processes among `processes` that run `stage` (e.g. "detector"), whether it was
    started as `python -m emojimation detector ...` or as `python -m detector ...`: the stage's
    name is one whole argument either way. Only for picking a process to act on; leftover
    checks never look at command lines."""
    return [p for p in processes if p.comm.startswith("python") and stage in p.argv[1:4]]


def wait_for_status(socket, event, reports: list, timeout_s: float = 60.0, check=lambda: None):
    """The next Status report `event` on a stage's status `socket` (a zmq PULL); every report
    read is appended to `reports`; `check()` runs between polls (e.g. to assert a process is
    still alive)."""
    from core.messages import decode

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if socket.poll(200):
            report = decode(socket.recv_multipart())
            reports.append(report)
            if report.event == event:
                return report
        check()
    raise AssertionError(f"no {event} report in {timeout_s} s; got {[r.event for r in reports]}")


def copy_sqlite_store(database: Path, folder: Path) -> str:
    """The URL of a private copy of an SQLite store, with its WAL files (a test may write to it)."""
    import shutil

    copy = folder / "store.db"
    for suffix in ("", "-wal", "-shm"):
        source = Path(str(database) + suffix)
        if source.exists():
            shutil.copy(source, Path(str(copy) + suffix))
    return f"sqlite:///{copy}"
