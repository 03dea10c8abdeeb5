"""Messages with impossible numbers (NaN, infinite, negative sizes, probabilities outside 0..1)
are dropped and counted like malformed ones, and no stage exits on them."""

from __future__ import annotations

import math
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from core.messages import Classified, End, Faces, Frame, MessageError, Start, Status, StatusEvent, decode, encode
from helpers_processes import wait_for_status

ROOT = Path(__file__).resolve().parents[1]


def classified(**changes) -> Classified:
    message = Classified(stream="s", seq=1, source_time=0.1, capture_time=time.time(), frame_index=0,
                         boxes=np.array([[10, 20, 30, 30]], np.float32), scores=np.array([0.9], np.float32),
                         crops=np.zeros((1, 48, 48), np.uint8),
                         probs=np.full((1, 7), 1 / 7, np.float32))
    for name, value in changes.items():
        setattr(message, name, value)
    return message


@pytest.mark.parametrize("changes, why", [
    ({"boxes": np.array([[np.nan, 20, 30, 30]], np.float32)}, "boxes has values that are not finite"),
    ({"boxes": np.array([[10, 20, -30, 30]], np.float32)}, "negative size"),
    ({"scores": np.array([np.inf], np.float32)}, "scores has values that are not finite"),
    ({"probs": np.full((1, 7), np.nan, np.float32)}, "probs has values that are not finite"),
    ({"probs": np.full((1, 7), 2.0, np.float32)}, "outside 0..1"),
    ({"source_time": math.nan}, "time is not finite"),
    ({"capture_time": math.inf}, "time is not finite"),
    ({"seq": -3}, "negative sequence number"),
])
def test_out_of_range_values_are_refused_on_decode(changes, why):
    frames = encode(classified(**changes))
    with pytest.raises(MessageError, match=why) as caught:
        decode(frames)
    assert caught.value.reason == "out-of-range"


def test_other_message_kinds_are_checked_too():
    with pytest.raises(MessageError, match="scale"):
        decode(encode(Frame(stream="s", seq=1, scale=math.nan, image=np.zeros((4, 4, 3), np.uint8))))
    with pytest.raises(MessageError, match="fps"):
        decode(encode(Start(stream="s", seq=0, source_fps=-1.0)))
    with pytest.raises(MessageError, match="negative size"):
        decode(encode(Faces(stream="s", seq=1, boxes=np.array([[0, 0, 5, -1]], np.float32),
                            scores=np.ones(1, np.float32), crops=np.zeros((1, 48, 48), np.uint8))))


def test_valid_messages_still_decode():
    message = decode(encode(classified()))
    assert isinstance(message, Classified) and message.boxes.tolist() == [[10, 20, 30, 30]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_aggregator_counts_a_nan_message_and_keeps_storing(tmp_path):
    """A real aggregator process: a NaN Classified between two good frames is counted as
    malformed, the process keeps running, and both good frames reach the store."""
    db = tmp_path / "results.db"
    listen = f"tcp://127.0.0.1:{free_port()}"
    context = zmq.Context()
    status = context.socket(zmq.PULL)
    status_address = f"ipc://{tmp_path}/status.sock"
    status.bind(status_address)
    aggregator = subprocess.Popen(
        [sys.executable, "-m", "aggregator", "--listen", listen, "--store", f"sqlite:///{db}",
         "--status", status_address, "--log-level", "INFO"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    push = context.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    reports: list[Status] = []

    def alive() -> None:
        assert aggregator.poll() is None, aggregator.stderr.read().decode()[-2000:]

    def wait_for(event: StatusEvent, timeout_s: float = 60.0) -> Status:
        return wait_for_status(status, event, reports, timeout_s, alive)

    try:
        wait_for(StatusEvent.READY)
        push.connect(listen)
        push.send_multipart(encode(Start(stream="s", seq=0, capture_time=time.time(), uri="/clip.mp4",
                                         name="clip", source_fps=10.0, expected_frames=3)))
        good = [classified(seq=seq, frame_index=seq - 1, source_time=seq / 10) for seq in (1, 2, 3)]
        bad = classified(seq=2, frame_index=1, boxes=np.array([[np.nan, 0, 10, 10]], np.float32))
        for message in (good[0], bad, good[1], good[2]):
            push.send_multipart(encode(message))
        push.send_multipart(encode(End(stream="s", seq=4, frames_sent=3)))
        done = wait_for(StatusEvent.DONE)
        assert done.detail["frames_analysed"] == 3
        assert aggregator.poll() is None, "the aggregator exited after a NaN message"
        aggregator.send_signal(signal.SIGTERM)
        stopped = wait_for(StatusEvent.STOPPED)
        assert stopped.detail["malformed"] == 1
        assert stopped.detail["drop_reasons"] == {"out-of-range": 1}
        assert aggregator.wait(30) == 0
    finally:
        if aggregator.poll() is None:
            aggregator.kill()
            aggregator.wait()
        push.close(0)
        status.close(0)
        context.term()
    with sqlite3.connect(db) as connection:
        frames = sorted(row[0] for row in connection.execute("SELECT DISTINCT frame FROM faces"))
    assert frames == [0, 1, 2]
