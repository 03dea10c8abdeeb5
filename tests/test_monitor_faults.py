"""Monitor fault tolerance with real processes: a hung stage is noticed by its silence and
restarted, and one camera's trouble never stops the others."""

from __future__ import annotations

import os
import shutil
import signal
import time

from helpers_processes import stage_processes
from test_monitor import MonitorProcess, clips, processes, wait_for  # noqa: F401 (fixtures)


def stage_pid(monitor: MonitorProcess, stage: str) -> int:
    """The pid of the monitor's (first) running `stage` process."""
    found = stage_processes(monitor.tag.processes(), stage)
    assert found, f"no running {stage} process of this monitor"
    return found[0].pid


def test_a_stopped_classifier_is_killed_and_rows_resume(clips, tmp_path, processes):
    """SIGSTOP (a hang, not an exit): the classifier's heartbeats stop, the monitor kills and
    restarts it, and the camera's rows flow again within 15 s of the heartbeat timeout's default."""
    monitor = MonitorProcess(tmp_path, f"lobby={clips['faces']}", "--loop")
    processes.append(monitor)
    monitor.wait_ready()
    wait_for(lambda: monitor.face_count("lobby") > 0, 60, "face rows")
    hung = stage_pid(monitor, "classifier")
    os.kill(hung, signal.SIGSTOP)
    stopped_at = time.time()
    try:
        wait_for(lambda: monitor.face_count("lobby", after=stopped_at + 1.0) > 0, 60,
                 "rows after the classifier hung")
        resumed_after = time.time() - stopped_at
    finally:
        try:
            os.kill(hung, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert any("classifier-0 sent no status" in line and "hung" in line for line in monitor.lines), monitor.lines[-15:]
    assert stage_pid(monitor, "classifier") != hung
    assert resumed_after < 60  # generous: the target (15 s) is measured in bench, not asserted here
    with monitor.store() as store:
        events = store.events()
    assert (events.kind == "stage-hung").any(), events.tail()
    assert monitor.process.poll() is None
    monitor.stop()


def test_a_removed_camera_file_blocks_no_other_camera(clips, tmp_path, processes):
    """Two looping file cameras; one file is deleted: that camera is marked disconnected while
    the other keeps writing rows, and the monitor keeps running."""
    doomed = tmp_path / "doomed.mp4"
    shutil.copy(clips["faces"], doomed)
    monitor = MonitorProcess(tmp_path, f"hall={clips['faces']}", f"gone={doomed}", "--loop")
    processes.append(monitor)
    monitor.wait_ready()
    wait_for(lambda: monitor.face_count("hall") > 0 and monitor.face_count("gone") > 0, 60, "rows from both cameras")
    doomed.unlink()
    # The camera's ffmpeg reaches the end of the (open) file, loops, and fails to reopen it.
    wait_for(lambda: (monitor.camera("gone") or {}).get("status") == "disconnected", 90,
             "the removed camera marked disconnected")
    marked_at = time.time()
    wait_for(lambda: monitor.face_count("hall", after=marked_at) > 0, 30, "rows from the other camera afterwards")
    assert monitor.process.poll() is None
    monitor.stop()
