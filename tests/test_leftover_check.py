"""The leftover-process check itself (tests/helpers_processes.py): it must see what it means to see.

Processes are left behind on purpose, as a broken supervisor or ingest would leave them: a
grandchild orphaned by its exited parent, with a command line that names nothing of ours
(`sleep`), and a running ffmpeg. The check must list them and fail; a process with another
test's marker, or none, must not count.
"""

from __future__ import annotations

import subprocess

import pytest

from helpers_processes import ProcessMarker, marked_processes


def orphan(command: str, env: dict[str, str]) -> int:
    """Start `command` in the background of a shell that exits at once: the command is left
    running, re-parented away from the test. Returns its pid."""
    shell = subprocess.run(["sh", "-c", f"{command} >/dev/null 2>&1 </dev/null & echo $!"], env=env,
                           capture_output=True, text=True, timeout=30, check=True)
    return int(shell.stdout.strip())


def test_the_check_fails_on_processes_left_on_purpose(process_marker):
    sleeper = orphan("sleep 300", process_marker.env())
    encoder = orphan("ffmpeg -nostdin -v error -re -f lavfi -i testsrc=size=64x64:rate=5 -f null -",
                     process_marker.env())
    other = ProcessMarker()
    unrelated = orphan("sleep 300", other.env())  # another test's process: not this test's business
    try:
        found = {p.pid: p for p in process_marker.processes()}
        assert set(found) == {sleeper, encoder}
        assert found[sleeper].comm == "sleep" and found[encoder].comm == "ffmpeg"
        with pytest.raises(AssertionError) as failed:
            process_marker.assert_none_left(grace_s=1.0)
        assert f"pid {sleeper} " in str(failed.value) and f"pid {encoder} " in str(failed.value)
        assert "2 process(es) left behind" in str(failed.value)
        # A failing check kills what it found, so the failing test leaks nothing.
        assert process_marker.wait_gone(10.0) == []
        assert [p.pid for p in marked_processes(other.value)] == [unrelated]
    finally:
        other.kill_all()
    assert other.wait_gone(10.0) == []


def test_the_check_passes_once_the_processes_are_gone(process_marker):
    process = subprocess.Popen(["sleep", "300"], env=process_marker.env())
    assert [p.pid for p in process_marker.processes()] == [process.pid]
    process.terminate()
    process.wait(10)
    process_marker.assert_none_left(grace_s=0.0)  # reaped: nothing left, no grace needed
