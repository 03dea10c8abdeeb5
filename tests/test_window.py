"""Ingest's resend window (ingest/window.py) over real ZeroMQ sockets: it holds at most
`max_bytes` of messages not yet acknowledged, and an ack lets the next ones go."""

from __future__ import annotations

import threading
import time

import numpy as np
import zmq

from core.messages import Frame, FrameGroup, Start, decode
from core.runtime import StageIO
from ingest.window import Window


def test_the_window_holds_at_most_its_bytes_until_acknowledged(tmp_path):
    out, acks = f"ipc://{tmp_path}/out", f"ipc://{tmp_path}/acks"
    io = StageIO("ingest", [], out, "", acks=acks, acks_role="bind")
    stop = threading.Event()
    frame_bytes = 64 * 64 * 3
    window = Window(io, size=1000, resend_after_s=600, stop=stop, max_bytes=int(3.5 * frame_bytes))
    context = zmq.Context()
    receiver = context.socket(zmq.PULL)
    receiver.connect(out)
    aggregator = StageIO("aggregator", [], "", "", acks=acks, acks_role="connect")
    sent: list[int] = []

    def send_all() -> None:
        window.send(Start(stream="s", seq=0))
        for seq in range(1, 9):
            window.send(Frame(stream="s", seq=seq, frame_index=seq - 1, image=np.zeros((64, 64, 3), np.uint8)))
            sent.append(seq)

    sender = threading.Thread(target=send_all, daemon=True)
    try:
        sender.start()
        time.sleep(1.0)
        assert sent == [1, 2, 3], sent  # the fourth frame would pass 3.5 frames' bytes
        assert window.pending_bytes <= 3.5 * frame_bytes
        aggregator.ack("s", 2)  # Start and frames 1-2 stored: room for two more
        deadline = time.monotonic() + 5
        while len(sent) < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        assert sent == [1, 2, 3, 4, 5], sent
        aggregator.ack("s", 5)  # (an ack past what was sent would mean "already stored": skipped, as on --resume)
        sender.join(5)
        assert sent == list(range(1, 9))
        assert receiver.poll(2000)
        received = []
        while receiver.poll(500):
            received.append(decode(receiver.recv_multipart()))
        assert [m.seq for m in received] == list(range(9))
    finally:
        stop.set()
        sender.join(5)
        receiver.close(0)
        context.term()
        aggregator.close()
        io.close()


def test_a_frame_group_is_kept_until_its_last_frame_is_stored(tmp_path):
    out, acks = f"ipc://{tmp_path}/out", f"ipc://{tmp_path}/acks"
    io = StageIO("ingest", [], out, "", acks=acks, acks_role="bind")
    stop = threading.Event()
    window = Window(io, size=100, resend_after_s=600, stop=stop)
    context = zmq.Context()
    receiver = context.socket(zmq.PULL)
    receiver.connect(out)
    aggregator = StageIO("aggregator", [], "", "", acks=acks, acks_role="connect")
    try:
        window.send(Start(stream="s", seq=0))
        window.send(FrameGroup(stream="s", seq=1, images=np.zeros((3, 8, 8, 3), np.uint8),
                               frame_indices=np.arange(3), source_times=np.zeros(3)))
        assert io.counters.frames_out == 3
        aggregator.ack("s", 2)  # two of its three frames stored: the group stays
        deadline = time.monotonic() + 5
        while (("s", 0) in window.pending) and time.monotonic() < deadline:
            window.pump(50)
        assert list(window.pending) == [("s", 1)]
        aggregator.ack("s", 3)
        while window.pending and time.monotonic() < deadline:
            window.pump(50)
        assert not window.pending and window.pending_bytes == 0
        # On a resumed stream, a group is skipped only when all its frames are stored.
        assert window.skipped(FrameGroup(stream="s", seq=2, images=np.zeros((2, 8, 8, 3), np.uint8),
                                         frame_indices=np.arange(2), source_times=np.zeros(2)))
        assert not window.skipped(FrameGroup(stream="s", seq=3, images=np.zeros((2, 8, 8, 3), np.uint8),
                                             frame_indices=np.arange(2), source_times=np.zeros(2)))
    finally:
        stop.set()
        receiver.close(0)
        context.term()
        aggregator.close()
        io.close()
