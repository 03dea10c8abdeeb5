"""Stage processes forked from one that has already imported what every stage imports.

Why: each `python -m <stage>` spends about 0.3 s of CPU importing NumPy, OpenCV, ZeroMQ and the
stage's modules before it can do anything. A file run starts five or six of them at once on two
cores, so on a short clip that start-up is a large part of the wall time, and every restart of
a dead stage pays it again. The zygote pays it once: the supervisor starts it
(`python -m emojimation.zygote`), it imports `PRELOAD`, and then forks a child per request.
A child is still a separate OS process with its own arguments, environment, session, signal
settings and log, running the stage's `__main__` as `python -m <stage>` would, and `ps` shows
it as `python -m <stage> <flags>` (setproctitle; one string, so `/proc/PID/cmdline` holds no
NUL-separated arguments). What it does not get anew: the working folder and
`/proc/PID/environ` are the zygote's (its `os.environ` is its own), and environment settings
read when a library loads (OMP_NUM_THREADS for NumPy's BLAS) are the zygote's.

The zygote imports nothing that starts threads (forking a threaded process can deadlock the
child: with OMP_NUM_THREADS=1, which `Zygote` sets unless told otherwise, NumPy's BLAS starts
none), and it stays single-threaded: one loop waits on requests and on SIGCHLD.

Protocol, one JSON object per line: requests on the zygote's stdin
`{"id": n, "argv": [...], "env": {...}, "log": path, or "" to share the zygote's stderr}`;
replies on its stdout `{"started": n, "pid": p}` (or `{"started": n, "error": "..."}`) and,
when a child ends, `{"exited": p, "returncode": r}` (negative: killed by that signal, as in
subprocess). When its stdin closes (the supervisor is gone or done), it exits, and its
children, which die with their parent, get SIGTERM.

`Zygote` is the supervisor's side: `start()` returns a `ForkedProcess`, which answers the part
of `subprocess.Popen`'s interface the supervisor uses (pid, poll, wait, send_signal, kill),
signalling through a pidfd, so a signal never reaches a later process that reuses the pid.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import logging
import os
import runpy
import selectors
import signal
import subprocess
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

# What every stage process imports (measured with `python -X importtime`: about 0.22 s, mostly
# OpenCV and NumPy) and nothing that starts a thread at import time.
PRELOAD = ("numpy", "cv2", "zmq", "ai_edge_litert.interpreter", "core.messages", "core.process", "core.runtime",
           "ingest.stage", "detector.stage", "classifier.stage", "aggregator.stage")
PR_SET_PDEATHSIG = 1
TITLE_ROOM = 1024  # bytes a stage's title may take in ps (its flags: addresses, a few settings)
LOST_WITH_ZYGOTE = "its zygote (the process that forks the stages) died"
# Addresses and ports are per stage: a deployment's EMOJIMATION_BIND or _METRICS_PORT in the
# supervisor's environment must not reach every child (they would all bind one port).
PER_STAGE_ENVIRONMENT = {f"EMOJIMATION_{name}" for name in (
    "CONNECT", "BIND", "LISTEN", "PUSH", "STATUS", "METRICS_PORT", "CAMERA", "INPUTS", "NAME", "STREAM_PREFIX",
    "ACKS", "RESTARTS", "RUN", "RESUME_COMMAND")}


def stage_environment() -> dict[str, str]:
    """The environment every stage process starts from: this process's, without the per-stage
    settings, with quiet TensorFlow, one OpenMP thread and unbuffered output."""
    inherited = {k: v for k, v in os.environ.items() if k not in PER_STAGE_ENVIRONMENT}
    return {**inherited, "TF_CPP_MIN_LOG_LEVEL": "2", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


# --- the zygote process --------------------------------------------------------------------------
def die_with_parent(expected_parent: int) -> None:
    """SIGTERM this process when its parent dies, however it dies (Linux), run right after a fork.

    If the parent died between the fork and the prctl call (a SIGKILL at that instant: seen
    under heavy load, when a restart and the kill coincide), no signal will ever come: the
    process's parent is already another one, so it exits at once instead of living on."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass
    if os.getppid() != expected_parent:
        os._exit(1)


def _run_child(request: dict[str, Any], zygote_pid: int, closing: list[int]) -> None:
    """In the forked child: become the stage process the request describes, run it, exit."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for fd in closing:
            os.close(fd)
        # The signal settings `python -m` starts with: SIGPIPE ignored (a closed socket or pipe
        # is an error to handle, not death), Ctrl-C as KeyboardInterrupt, the rest by default.
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        os.setsid()  # its own session: a Ctrl-C at the terminal reaches the supervisor, not the stages
        die_with_parent(zygote_pid)
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        if request.get("log"):
            log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.close(log)
        else:  # inherit_output: stderr is the zygote's (the supervisor's); stdout goes nowhere
            os.dup2(null, 1)
        os.close(null)
        os.environ.clear()
        os.environ.update(request["env"])
        argv = [str(part) for part in request["argv"]]
        module = argv[argv.index("-m") + 1]
        # Shown by ps as one string, "python -m <stage> <flags>" (no secrets: core.process keeps
        # them out of argv).
        from setproctitle import setproctitle

        setproctitle(" ".join(["python", *argv]))
        sys.argv = [module, *argv[argv.index("-m") + 2:]]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
        if not isinstance(stop.code, (int, type(None))):
            print(stop.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - the child's last act is to report and exit
        traceback.print_exc()
    finally:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)


def serve() -> None:
    """The zygote's loop: fork a child per request line on stdin, report starts and exits on stdout."""
    # setproctitle finds the command line's memory through the environment as the process
    # started, so its first call is here, before anything changes the environment (SPT_NOENV,
    # set by Zygote, keeps that environment block as it is: readable in /proc/PID/environ).
    from setproctitle import setproctitle

    setproctitle("python -m emojimation.zygote")
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError as error:  # the stage that needs it says so itself, as it would unforked
            print(f"emojimation.zygote: not preloaded: {name} ({error})", file=sys.stderr, flush=True)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so SIGCHLD writes to the wakeup fd
    requests, replies = sys.stdin.fileno(), sys.stdout.fileno()
    selector = selectors.DefaultSelector()
    selector.register(requests, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    pending = b""

    def reply(message: dict[str, Any]) -> None:
        os.write(replies, json.dumps(message).encode() + b"\n")

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            reply({"exited": pid, "returncode": os.waitstatus_to_exitcode(status)})

    while True:
        for key, _ in selector.select():
            if key.fd == wake_read:
                os.read(wake_read, 4096)
                continue
            chunk = os.read(requests, 1 << 16)
            if not chunk:  # the supervisor closed us: done (our children get SIGTERM as we exit)
                sys.stderr.flush()
                os._exit(0)  # no interpreter teardown (0.1 s of freeing modules): the supervisor waits for it
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                zygote_pid = os.getpid()  # taken before the fork: the child checks its parent against it
                try:
                    pid = os.fork()
                except OSError as error:
                    reply({"started": request["id"], "error": str(error)})
                    continue
                if pid == 0:  # stdin and stdout are replaced in the child; these are closed
                    _run_child(request, zygote_pid, [wake_read, wake_write, selector.fileno()])
                reply({"started": request["id"], "pid": pid})
        reap()


# --- the supervisor's side ---------------------------------------------------------------------
class ForkedProcess:
    """A stage process the zygote forked: the part of subprocess.Popen the supervisor uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.cause = ""  # why it ended, when not by its own exit or a signal sent to it
        self._ended = threading.Event()
        self._lock = threading.Lock()
        try:  # a handle on this very process: its pid may be reused once it has been reaped
            self._pidfd: int | None = os.pidfd_open(pid)
        except OSError:  # already gone (its exit report follows)
            self._pidfd = None

    def _exited(self, returncode: int, cause: str = "") -> None:
        with self._lock:
            self.returncode, self.cause = returncode, cause
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
        self._ended.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired([f"pid {self.pid}"], timeout or 0.0)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        with self._lock:
            if self.returncode is not None or self._pidfd is None:
                return
            try:
                signal.pidfd_send_signal(self._pidfd, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class _Server:
    """One zygote process and the children it started (a new one replaces a dead one)."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process
        self.lock = threading.Lock()  # guards the two maps below (the reply reader writes them)
        self.starting: dict[int, tuple[threading.Event, list[Any]]] = {}  # request id -> (answered, answer)
        self.children: dict[int, ForkedProcess] = {}  # pid -> process, until its exit is reported
        self.reader = threading.Thread(target=self._read_replies, name="zygote-replies", daemon=True)
        self.reader.start()

    def _read_replies(self) -> None:
        assert self.process.stdout is not None
        try:
            for line in self.process.stdout:
                try:
                    message = json.loads(line)
                except ValueError:
                    continue
                with self.lock:
                    if "started" in message:
                        self._started(message)
                    elif "exited" in message:
                        process = self.children.pop(message["exited"], None)
                        if process is not None:
                            process._exited(message["returncode"])
        finally:
            self._lost()

    def _started(self, message: dict[str, Any]) -> None:
        process = ForkedProcess(message["pid"]) if "pid" in message else None
        if process is not None:
            self.children[process.pid] = process
        pending = self.starting.pop(message["started"], None)
        if pending is None:  # its caller gave up waiting: nobody supervises it
            if process is not None:
                process.kill()
            return
        answered, answer = pending
        answer.extend([message, process])
        answered.set()

    def _lost(self) -> None:
        """The zygote is gone (closed, or killed): its children were told to stop (SIGTERM, as
        their parent died); make sure they are gone and report them ended, so the supervisor
        sees each stage dead and can start it again through a new zygote."""
        self.process.wait()
        with self.lock:
            orphans, self.children = self.children, {}
            for answered, _ in self.starting.values():
                answered.set()
            self.starting.clear()
        for process in orphans.values():
            process.kill()
            process._exited(-signal.SIGKILL, LOST_WITH_ZYGOTE)


class Zygote:
    """The supervisor's handle on its zygote process: start stage processes through it."""

    def __init__(self, env: dict[str, str], python: str = sys.executable) -> None:
        self.env = {"OMP_NUM_THREADS": "1", **env, "SPT_NOENV": "1"}
        self.python = python
        self.lock = threading.Lock()  # one start at a time; taken before a _Server's own lock
        self.server: _Server | None = None
        self.next_id = 0

    def _running(self) -> _Server:
        if self.server is not None and self.server.process.poll() is None:
            return self.server
        if self.server is not None:  # its children are reported ended before a new one starts
            self.server.reader.join(10)
        supervisor = os.getpid()
        # The blank argument is room: setproctitle can rewrite only the memory that held the
        # zygote's own command line, and a child's title is its stage's whole command line.
        process = subprocess.Popen([self.python, "-m", "emojimation.zygote", " " * TITLE_ROOM],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=self.env,
                                   start_new_session=True, preexec_fn=lambda: die_with_parent(supervisor))
        self.server = _Server(process)
        return self.server

    def __enter__(self) -> "Zygote":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def warm(self) -> "Zygote":
        """Start the zygote process now, without waiting for its imports (about 0.5 s of CPU),
        so that they run on the other core while the caller probes its inputs and imports its
        own modules; the first `start` then finds it ready or nearly so."""
        with self.lock:
            self._running()
        return self

    def start(self, args: list[str], env: dict[str, str], log_path: Path | None, timeout_s: float = 60.0
              ) -> ForkedProcess:
        """Fork a stage process running `args` (`python -m module ...`) with `env`, its output
        appended to `log_path` (None: stdout discarded, stderr shared with this process).
        Raises OSError if it cannot be started."""
        answered, answer = threading.Event(), []
        with self.lock:
            server = self._running()
            self.next_id += 1
            request_id = self.next_id
            with server.lock:
                server.starting[request_id] = (answered, answer)
            request = {"id": request_id, "argv": args[1:], "env": env, "log": str(log_path) if log_path else ""}
            try:
                assert server.process.stdin is not None
                server.process.stdin.write(json.dumps(request).encode() + b"\n")
                server.process.stdin.flush()
            except OSError as error:
                with server.lock:
                    server.starting.pop(request_id, None)
                raise OSError(f"the stage-starting process is gone ({error})") from None
        if not answered.wait(timeout_s):
            with server.lock:  # a later answer kills what it started (_Server._started)
                server.starting.pop(request_id, None)
        if len(answer) == 2 and answer[1] is not None:
            return answer[1]
        reason = answer[0].get("error", "") if answer else ""
        raise OSError(f"could not start {' '.join(args[1:3])}: "
                      f"{reason or ('the stage-starting process died' if answered.is_set() else f'no answer in {timeout_s:g} s')}")

    def close(self) -> None:
        """Stop the zygote (its stage processes should be stopped first)."""
        server = self.server
        if server is None:
            return
        if self.next_id == 0 and server.process.poll() is None:
            server.process.kill()  # it never started a stage: no need to wait for its imports to end
        if server.process.stdin is not None:
            try:
                server.process.stdin.close()
            except OSError:
                pass
        try:
            server.process.wait(5)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
        server.reader.join(10)


if __name__ == "__main__":
    serve()
