"""The zygote that forks the stage processes (emojimation.zygote): a forked child is a stage
process as `python -m <module>` would start it (its arguments, environment, session, log, exit
status, command line in ps), and it does not outlive the zygote."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from emojimation.zygote import Zygote
from helpers_processes import ProcessMarker

CHILD = '''
import json, os, signal, sys, time
report = {"argv": sys.argv[1:], "name": __name__, "setting": os.environ.get("CHILD_SETTING"),
          "own_session": os.getsid(0) == os.getpid(), "title": open("/proc/self/cmdline", "rb").read().decode(),
          "signals": {name: repr(signal.getsignal(getattr(signal, name)))
                      for name in ("SIGPIPE", "SIGINT", "SIGTERM", "SIGCHLD", "SIGHUP")}}
print("to the log")
print("an error line", file=sys.stderr)
open(os.environ["CHILD_REPORT"], "w").write(json.dumps(report))
if sys.argv[1] == "wait":
    time.sleep(60)
sys.exit(int(sys.argv[2]))
'''


@pytest.fixture
def zygote(tmp_path):
    (tmp_path / "probe_child.py").write_text(CHILD)
    marker = ProcessMarker()
    started = Zygote(marker.env(PYTHONPATH=str(tmp_path)))
    yield started, marker
    started.close()
    marker.assert_none_left(what="by the zygote")


def test_a_forked_child_is_the_module_run_as_main(zygote, tmp_path):
    started, _ = zygote
    report, log = tmp_path / "report.json", tmp_path / "child.log"
    child = started.start([sys.executable, "-m", "probe_child", "exit", "3"],
                          {**os.environ, "CHILD_SETTING": "seen", "CHILD_REPORT": str(report)}, log)
    assert child.wait(30) == 3
    seen = json.loads(report.read_text())
    assert seen["argv"] == ["exit", "3"] and seen["name"] == "__main__" and seen["setting"] == "seen"
    assert seen["own_session"]
    assert seen["title"].rstrip("\0") == "python -m probe_child exit 3"
    assert log.read_text().splitlines() == ["to the log", "an error line"]
    # the signal settings `python -m` gives a process (SIGPIPE ignored, Ctrl-C as KeyboardInterrupt)
    direct = tmp_path / "direct.json"
    subprocess.run([sys.executable, "-m", "probe_child", "exit", "0"], cwd=tmp_path, check=True, capture_output=True,
                   env={**os.environ, "CHILD_REPORT": str(direct)})
    assert seen["signals"] == json.loads(direct.read_text())["signals"]


def test_kill_and_terminate_report_the_signal(zygote, tmp_path):
    started, marker = zygote
    environment = {**os.environ, "CHILD_REPORT": str(tmp_path / "report.json")}
    first = started.start([sys.executable, "-m", "probe_child", "wait", "0"], environment, tmp_path / "a.log")
    second = started.start([sys.executable, "-m", "probe_child", "wait", "0"], environment, tmp_path / "b.log")
    assert {first.pid, second.pid} <= {p.pid for p in marker.processes()}
    assert first.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        first.wait(0.2)
    first.kill()
    second.terminate()
    assert (first.wait(10), second.wait(10)) == (-signal.SIGKILL, -signal.SIGTERM)


def test_children_end_with_the_zygote(zygote, tmp_path):
    """SIGKILL the zygote: its children are told to stop (their parent-death signal), and the
    supervisor's side reports them ended, so it can start them again."""
    started, marker = zygote
    child = started.start([sys.executable, "-m", "probe_child", "wait", "0"],
                          {**os.environ, "CHILD_REPORT": str(tmp_path / "report.json")}, tmp_path / "c.log")
    deadline = time.monotonic() + 30
    while not (tmp_path / "report.json").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(started.server.process.pid, signal.SIGKILL)
    assert child.wait(10) is not None
    assert not marker.wait_gone(10)
    again = started.start([sys.executable, "-m", "probe_child", "exit", "0"],
                          {**os.environ, "CHILD_REPORT": str(tmp_path / "again.json")}, tmp_path / "d.log")
    assert again.wait(30) == 0  # a new zygote was started for it


def test_a_zygote_dying_during_a_start_is_an_error_then_replaced(zygote, tmp_path):
    """The zygote stopped, asked to start a stage, then killed: the start fails with OSError
    (the supervisor turns it into a restart or a one-line error), and the next start works
    through a new zygote."""
    import threading

    started, _ = zygote
    environment = {**os.environ, "CHILD_REPORT": str(tmp_path / "report.json")}
    assert started.start([sys.executable, "-m", "probe_child", "exit", "0"], environment, tmp_path / "a.log").wait(30) == 0
    first = started.server.process.pid
    os.kill(first, signal.SIGSTOP)
    failure: list[BaseException] = []

    def start() -> None:
        try:
            started.start([sys.executable, "-m", "probe_child", "exit", "0"], environment, tmp_path / "b.log")
        except OSError as error:
            failure.append(error)

    waiting = threading.Thread(target=start)
    waiting.start()
    time.sleep(0.5)
    os.kill(first, signal.SIGKILL)
    waiting.join(30)
    assert not waiting.is_alive() and len(failure) == 1 and "died" in str(failure[0]), failure
    assert started.start([sys.executable, "-m", "probe_child", "exit", "0"], environment, tmp_path / "c.log").wait(30) == 0
    assert started.server.process.pid != first
