"""Stage processes forked from one that has already imported what every stage imports.

Why: each `python -m <stage>` spends about 0.3 s of CPU importing NumPy, OpenCV, ZeroMQ and the
stage's modules before it can do anything. A file run starts five or six of them at once on two
cores, so on a short clip that start-up is a large part of the wall time, and every restart of
a dead stage pays it again. The zygote pays it once: the supervisor starts it
(`python -m emojimation.zygote`), it imports `PRELOAD`, and then forks a child per request.
A child is still a separate OS process with its own arguments, environment, session and log,
running the stage's `__main__` exactly as `python -m <stage>` would, and it shows its stage's
command line to `ps` (setproctitle), so operators and scripts see the stages as before.

The zygote imports nothing that starts threads (forking a threaded process can deadlock the
child), and it stays single-threaded: one loop waits on requests and on SIGCHLD.

Protocol, one JSON object per line: requests on the zygote's stdin
`{"id": n, "argv": [...], "env": {...}, "log": path, or "" to share the zygote's stderr}`; replies on
its stdout `{"started": n, "pid": p}` (or `{"started": n, "error": "..."}`) and, when a child
ends, `{"exited": p, "returncode": r}` (negative: killed by that signal, as in subprocess). When
its stdin closes (the supervisor is gone or done), it exits, and its children, which die with
their parent, get SIGTERM.

`Zygote` is the supervisor's side: `start()` returns a `ForkedProcess`, which answers the part
of `subprocess.Popen`'s interface the supervisor uses (pid, poll, wait, send_signal, kill).
"""

from __future__ import annotations

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

logger = logging.getLogger(__name__)

# What every stage process imports (measured with `python -X importtime`: about 0.22 s, mostly
# OpenCV and NumPy) and nothing that starts a thread at import time.
PRELOAD = ("numpy", "cv2", "zmq", "ai_edge_litert.interpreter", "core.messages", "core.process", "core.runtime",
           "ingest.stage", "detector.stage", "classifier.stage", "aggregator.stage", "core.relay")
PR_SET_PDEATHSIG = 1
TITLE_ROOM = 1024  # bytes a stage's title may take in ps (its flags: addresses, a few settings)


# --- the zygote process --------------------------------------------------------------------------
def die_with_parent(expected_parent: int) -> None:
    """SIGTERM this process when its parent dies, however it dies (Linux), run right after a fork.

    If the parent died between the fork and the prctl call (a SIGKILL at that instant: seen
    under heavy load, when a restart and the kill coincide), no signal will ever come: the
    process's parent is already another one, so it exits at once instead of living on."""
    import ctypes

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
        for fd in closing:
            os.close(fd)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
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
        importlib.import_module(name)
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
                return
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                try:
                    pid = os.fork()
                except OSError as error:
                    reply({"started": request["id"], "error": str(error)})
                    continue
                if pid == 0:
                    _run_child(request, os.getppid(), [wake_read, wake_write])  # stdin, stdout: replaced
                reply({"started": request["id"], "pid": pid})
        reap()


# --- the supervisor's side ---------------------------------------------------------------------
class ForkedProcess:
    """A stage process the zygote forked: the part of subprocess.Popen the supervisor uses."""

    def __init__(self, pid: int, args: list[str]) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self._ended = threading.Event()

    def _exited(self, returncode: int) -> None:
        self.returncode = returncode
        self._ended.set()

    def poll(self) -> int | None:
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._ended.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        return self.returncode  # type: ignore[return-value]

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    """The supervisor's handle on its zygote process: start stage processes through it."""

    def __init__(self, env: dict[str, str], python: str = sys.executable) -> None:
        self.env = env
        self.python = python
        self.lock = threading.Lock()
        self.process: subprocess.Popen | None = None
        self.processes: dict[int, ForkedProcess] = {}
        self.starting: dict[int, tuple[threading.Event, list[Any]]] = {}
        self.next_id = 0

    def _ensure_running(self) -> subprocess.Popen:
        if self.process is not None and self.process.poll() is None:
            return self.process
        supervisor = os.getpid()
        # The blank argument is room: setproctitle can rewrite only the memory that held the
        # zygote's own command line, and a child's title is its stage's whole command line.
        self.process = subprocess.Popen([self.python, "-m", "emojimation.zygote", " " * TITLE_ROOM],
                                        stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, env={**self.env, "SPT_NOENV": "1"},
                                        start_new_session=True,
                                        preexec_fn=lambda: die_with_parent(supervisor))
        threading.Thread(target=self._read_replies, args=(self.process,), name="zygote-replies",
                         daemon=True).start()
        return self.process

    def start(self, args: list[str], env: dict[str, str], log_path: Path | None, timeout_s: float = 60.0
              ) -> ForkedProcess:
        """Fork a stage process running `args` (`python -m module ...`) with `env`, its output
        appended to `log_path` (None: stdout discarded, stderr shared with this process)."""
        with self.lock:
            zygote = self._ensure_running()
            self.next_id += 1
            request_id = self.next_id
            answered = threading.Event()
            answer: list[Any] = []
            self.starting[request_id] = (answered, answer)
            request = {"id": request_id, "argv": args[1:], "env": env,
                       "log": str(log_path) if log_path else ""}
            assert zygote.stdin is not None
            try:
                zygote.stdin.write(json.dumps(request).encode() + b"\n")
                zygote.stdin.flush()
            except (BrokenPipeError, OSError) as error:
                del self.starting[request_id]
                raise OSError(f"the stage-starting process is gone ({error})") from None
        if not answered.wait(timeout_s) or "pid" not in answer[0]:
            reason = answer[0].get("error", "no answer") if answer else f"no answer in {timeout_s:g} s"
            raise OSError(f"could not start {' '.join(args[1:3])}: {reason}")
        return answer[1]

    def _read_replies(self, zygote: subprocess.Popen) -> None:
        assert zygote.stdout is not None
        for line in zygote.stdout:
            message = json.loads(line)
            with self.lock:
                if "started" in message:
                    answered, answer = self.starting.pop(message["started"])
                    answer.append(message)
                    if "pid" in message:
                        process = ForkedProcess(message["pid"], [])
                        self.processes[message["pid"]] = process
                        answer.append(process)
                    answered.set()
                elif "exited" in message:
                    process = self.processes.pop(message["exited"], None)
                    if process is not None:
                        process._exited(message["returncode"])
        self._lost(zygote)

    def _lost(self, zygote: subprocess.Popen) -> None:
        """The zygote is gone (closed, or killed): its children were told to stop (SIGTERM, as
        their parent died); make sure they are gone and report them ended, so the supervisor
        sees each stage dead and can start it again through a new zygote."""
        zygote.wait()
        with self.lock:
            orphans, self.processes = self.processes, {}
            for answered, answer in self.starting.values():
                answered.set()
            self.starting.clear()
        for process in orphans.values():
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process._exited(-signal.SIGKILL)

    def close(self) -> None:
        """Stop the zygote (its stage processes should be stopped first)."""
        if self.process is None:
            return
        if self.process.stdin is not None:
            try:
                self.process.stdin.close()
            except OSError:
                pass
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


if __name__ == "__main__":
    serve()
