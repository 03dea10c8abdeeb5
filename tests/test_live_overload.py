"""An overloaded monitor drops stale frames at the front instead of queueing them.

The parts over real sockets: a link's queue bound (`queue_messages`, both ends) and the
classifier's live stale drop. Then real processes: `emojimation monitor` with several looping
file cameras at 30 fps, far more than this machine's pipeline analyses (every frame fully
detected), so it must drop. Checked: every camera's drops are counted, also at its ingest (the
pipeline was full: every link's queue is small), the latency stays bounded, and the monitor
stops cleanly. The latency bound is generous (a loaded two-core machine is slow); the measured
figures are bench/bench_monitor.py's.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import zmq

from bench.synthetic import compose_clip, require_shared_data
from classifier.stage import run as run_classifier
from core.config import ClassifierConfig, DetectorConfig, IngestConfig, MonitorConfig
from core.messages import Classified, Faces, Frame, Status, StatusEvent, decode, encode
from core.preprocess import INPUT_SIZE
from core.runtime import StageIO
from emojimation.monitor import Monitor, MonitorPlan
from helpers_processes import wait_for_status
from test_monitor import HANG_S, MonitorProcess, detectable_faces, processes, wait_for  # noqa: F401 (fixture)


CAMERAS = 8
FPS = 30.0
RUN_S = 10.0  # after every camera has stored rows
P95_BOUND_MS = 3000.0  # generous: unbounded queues reached 6.4 s at 2x capacity (issue 15)


@pytest.fixture(scope="module")
def fast_clip(tmp_path_factory):
    """A 30 fps clip of detectable faces (a camera at 30 fps needs a source at least that fast)."""
    require_shared_data()
    path = tmp_path_factory.mktemp("overload-clip") / "faces30.mp4"
    faces = detectable_faces(None, 2)
    compose_clip(path, faces, [0] * len(faces), seconds_per_face=3.0, fps=FPS, face_px=170)
    return path


def frames_accepted(queue_messages: int, address: str) -> int:
    """Frames (640x360) a camera ingest's output takes before refusing, to a detector's input
    that reads nothing: each end of the link queues `queue_messages`."""
    ingest = StageIO.from_config("ingest", IngestConfig(bind=address, queue_messages=queue_messages), inputs=False,
                                 acks_role="")
    detector = StageIO.from_config("detector", DetectorConfig(connect=[address], queue_messages=queue_messages),
                                   outputs=False)
    try:
        frame = Frame(stream="cam", seq=1, capture_time=time.time(), image=np.zeros((360, 640, 3), np.uint8))
        time.sleep(0.3)  # connected
        accepted = 0
        while accepted < 1000:
            if not ingest.offer(frame):
                time.sleep(0.2)  # whatever is in flight settles into the receiver's queue
                if not ingest.offer(frame):
                    break
            accepted += 1
        return accepted
    finally:
        ingest.close()
        detector.close()


def test_the_queue_bound_holds_on_both_ends_of_a_link(tmp_path):
    small = frames_accepted(1, f"ipc://{tmp_path}/small.sock")
    files = frames_accepted(IngestConfig.queue_messages, f"ipc://{tmp_path}/files.sock")
    assert 2 <= small <= 4, small  # sender 1, receiver 1, and what is in flight between them
    assert files >= 2 * IngestConfig.queue_messages, files


def test_the_monitor_gives_every_stage_a_small_queue_and_the_classifier_a_max_age():
    config = MonitorConfig(sources=["cam=/dev/video0"])
    topology = Monitor(MonitorPlan(config, []), supervisor=None, stop=threading.Event()).topology()
    assert topology.shared.queue_messages == config.queue_messages == 1
    assert topology.classifier.max_age_s == topology.detector.max_age_s == topology.aggregator.max_age_s == config.max_age_s > 0
    assert topology.aggregator.reorder_window_s == 0.0  # one detector, one classifier: every link is FIFO
    assert ClassifierConfig().max_age_s == 0.0 and IngestConfig().queue_messages == 64  # file runs: as before


def test_the_classifier_drops_stale_faces_in_live_runs(tmp_path):
    """A Faces captured longer ago than max_age_s is dropped (counted as stale); a fresh one is classified."""
    context = zmq.Context()
    upstream, status = context.socket(zmq.PUSH), context.socket(zmq.PULL)
    upstream.bind(f"ipc://{tmp_path}/detector.sock")
    status.bind(f"ipc://{tmp_path}/status.sock")
    downstream = context.socket(zmq.PULL)
    config = ClassifierConfig(connect=[f"ipc://{tmp_path}/detector.sock"], bind=f"ipc://{tmp_path}/classifier.sock",
                              status=f"ipc://{tmp_path}/status.sock", max_age_s=0.5, queue_messages=1)
    stop = threading.Event()
    worker = threading.Thread(target=run_classifier, args=(config, stop), daemon=True)
    reports: list[Status] = []

    def next_report(event: StatusEvent) -> Status:
        return wait_for_status(status, event, reports)

    try:
        worker.start()
        next_report(StatusEvent.READY)
        downstream.connect(config.bind)
        crops = np.full((1, INPUT_SIZE, INPUT_SIZE), 128, np.uint8)
        boxes = np.asarray([[10, 10, 50, 50]], np.float32)
        scores = np.asarray([0.9], np.float32)
        for seq, age in ((1, 5.0), (2, 0.0)):
            upstream.send_multipart(encode(Faces(stream="cam", seq=seq, capture_time=time.time() - age,
                                                 frame_index=seq - 1, boxes=boxes, scores=scores, crops=crops)))
        assert downstream.poll(30_000)
        result = decode(downstream.recv_multipart())
        assert isinstance(result, Classified) and result.seq == 2
        assert not downstream.poll(500)  # the stale one never comes
        stop.set()
        stopped = next_report(StatusEvent.STOPPED)
        assert stopped.detail["drop_reasons"] == {"stale": 1}
    finally:
        stop.set()
        worker.join(10)
        for sock in (upstream, status, downstream):
            sock.close(0)
        context.term()


def test_an_overloaded_monitor_drops_at_the_front_and_latency_stays_bounded(fast_clip, tmp_path, processes):
    names = [f"cam{i}" for i in range(CAMERAS)]
    monitor = MonitorProcess(tmp_path, *(f"{name}={fast_clip}" for name in names), "--loop", "--fps", str(FPS),
                             "--detect-every", "1", "--json")
    processes.append(monitor)
    monitor.wait_ready()
    wait_for(lambda: all(monitor.face_count(name) > 0 for name in names), HANG_S, "face rows from every camera")
    # Overloaded for a while: bounded queues keep the latency from growing with the run's length.
    time.sleep(RUN_S)
    assert monitor.process.poll() is None, "\n".join(monitor.lines[-20:])
    monitor.stop()  # also checks that no process it started is left
    assert monitor.process.returncode == 0, "\n".join(monitor.lines[-20:])

    summary = {camera["name"]: camera for camera in json.loads(monitor.stdout)["cameras"]}
    assert sorted(summary) == names
    for name, camera in summary.items():
        stored = monitor.camera(name)
        assert camera["frames_analysed"] == stored["frames_analysed"] > 0, (name, camera)
        # Dropped and counted per camera, in the summary and in the camera's row ...
        assert camera["frames_dropped"] == stored["frames_dropped"] > 0, (name, camera)
        # ... and at the front: the camera's ingest found the pipeline full.
        assert camera["frames_dropped_at_ingest"] > 0, (name, camera)
        assert camera["latency_p95_ms"] is not None and camera["latency_p95_ms"] < P95_BOUND_MS, (name, camera)
    total_analysed = sum(c["frames_analysed"] for c in summary.values())
    total_dropped = sum(c["frames_dropped"] for c in summary.values())
    at_ingest = sum(c["frames_dropped_at_ingest"] for c in summary.values())
    print(f"{CAMERAS} cameras x {FPS:g} fps: {total_analysed} analysed, {total_dropped} dropped "
          f"({100 * total_dropped / (total_analysed + total_dropped):.0f} %; {at_ingest} at ingest), p95 "
          + ", ".join(f"{c['latency_p95_ms']:.0f}" for c in summary.values()) + " ms")
