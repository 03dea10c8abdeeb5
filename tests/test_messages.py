"""The wire form of every message, and what a stage does with malformed input on a real socket."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from core.messages import (
    PROTOCOL_VERSION, Classified, End, Faces, Frame, MessageError, Start, Status, decode, encode,
)


def sample_messages():
    rng = np.random.default_rng(0)
    return [
        Start(stream="in/0", seq=0, capture_time=1.5, kind="video", uri="a.mp4", name="a", source_fps=25.0,
              width=640, height=360, expected_frames=12, options={"fps": 10}),
        Frame(stream="in/0", seq=1, source_time=0.04, capture_time=2.0, frame_index=1, scale=2.0,
              image=rng.integers(0, 255, (36, 64, 3), dtype=np.uint8)),
        Faces(stream="in/0", seq=2, frame_index=3, boxes=rng.random((2, 4), dtype=np.float32),
              scores=np.array([0.9, 0.8], np.float32), crops=rng.integers(0, 255, (2, 48, 48), dtype=np.uint8)),
        Classified(stream="cam", seq=5, frame_index=9, boxes=np.zeros((1, 4), np.float32),
                   scores=np.ones(1, np.float32), crops=np.zeros((1, 48, 48), np.uint8),
                   probs=np.full((1, 7), 1 / 7, np.float32)),
        Faces(stream="in/1", seq=7, frame_index=0),  # a frame with no face
        End(stream="in/0", seq=13, frames_sent=12, error=""),
        Status(stream="", seq=0, stage="detector", event="ready", detail={"pid": 12}),
    ]


@pytest.mark.parametrize("message", sample_messages(), ids=lambda m: type(m).__name__)
def test_round_trip_keeps_every_field(message):
    decoded = decode(encode(message))
    assert type(decoded) is type(message)
    for name, value in vars(message).items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(getattr(decoded, name), value)
            assert getattr(decoded, name).dtype == value.dtype or value.size == 0
        else:
            assert getattr(decoded, name) == value, name


def test_payloads_are_raw_bytes_not_pickle():
    frames = encode(sample_messages()[1])
    assert b"pickle" not in b"".join(frames) and frames[2][1:9] == struct.pack("!3I", 36, 64, 3)[:8]
    assert len(frames[2]) == 1 + 12 + 36 * 64 * 3


def _corrupt_variants():
    good = encode(sample_messages()[2])
    wrong_version = bytearray(good[0])
    wrong_version[2] = PROTOCOL_VERSION + 1
    unknown_type = bytearray(good[0])
    unknown_type[3] = 99
    return {
        "too few frames": good[:1],
        "bad magic": [b"XX" + good[0][2:], *good[1:]],
        "wrong version": [bytes(wrong_version), *good[1:]],
        "unknown type": [bytes(unknown_type), *good[1:]],
        "bad json": [good[0], b"{not json", *good[2:]],
        "json not an object": [good[0], b"[1, 2]", *good[2:]],
        "missing array": good[:-1],
        "truncated array": [*good[:-1], good[-1][:-5]],
        "wrong crop shape": [*good[:-1], encode(Frame(stream="x", seq=1, image=np.zeros((2, 2, 3), np.uint8)))[2]],
        "arrays disagree": [good[0], good[1], good[2], encode(Faces(stream="x", seq=1))[3], good[4]],
        "unexpected field": [good[0], json.dumps({"frame_index": 1, "error": "", "bogus": 1}).encode(), *good[2:]],
        "wrong field type": [good[0], json.dumps({"frame_index": None, "error": ""}).encode(), *good[2:]],
        "bool for int": [good[0], json.dumps({"frame_index": True, "error": ""}).encode(), *good[2:]],
        "deeply nested json": [good[0], b"[" * 100_000, *good[2:]],
        "huge shape": [*good[:-1], struct.pack("!B", 3) + struct.pack("!3I", 2**31, 2**31, 4)],
    }


@pytest.mark.parametrize("name", list(_corrupt_variants()))
def test_malformed_messages_raise_one_typed_error(name):
    with pytest.raises(MessageError) as error:
        decode(_corrupt_variants()[name])
    assert "\n" not in str(error.value)


def test_wrong_version_has_its_own_reason():
    with pytest.raises(MessageError) as error:
        decode(_corrupt_variants()["wrong version"])
    assert error.value.reason == "version"


def test_detector_process_drops_malformed_messages_counts_them_and_keeps_running(tmp_path):
    """A real detector process: garbage in is counted and dropped, the next good frame is answered."""
    context = zmq.Context()
    upstream = context.socket(zmq.PUSH)
    port_in = upstream.bind_to_random_port("tcp://127.0.0.1")
    downstream = context.socket(zmq.PULL)
    status = context.socket(zmq.PULL)
    port_status = status.bind_to_random_port("tcp://127.0.0.1")
    out_address = f"ipc://{tmp_path}/detector-out.sock"
    process = subprocess.Popen(
        [sys.executable, "-m", "emojimation", "detector", "--connect", f"tcp://127.0.0.1:{port_in}",
         "--bind", out_address, "--status", f"tcp://127.0.0.1:{port_status}", "--detector", "haar"],
        stderr=subprocess.PIPE, text=True)
    try:
        downstream.connect(out_address)
        assert status.poll(30_000), "detector never reported ready"
        assert decode(status.recv_multipart()).event == "ready"
        upstream.send_multipart([b"garbage"])
        upstream.send_multipart(_corrupt_variants()["wrong version"])
        frame = Frame(stream="t", seq=1, frame_index=0, image=np.full((120, 160, 3), 128, np.uint8))
        upstream.send_multipart(encode(frame))
        assert downstream.poll(20_000), "no answer to a valid frame after malformed ones"
        answer = decode(downstream.recv_multipart())
        assert isinstance(answer, Faces) and answer.seq == 1 and len(answer.boxes) == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        reports = []
        while status.poll(2000):
            reports.append(decode(status.recv_multipart()))
        stopped = [r for r in reports if r.event == "stopped"][-1]
        assert stopped.detail["dropped"] == 2
        assert stopped.detail["drop_reasons"] == {"malformed": 1, "version": 1}
        assert "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
        for sock in (upstream, downstream, status):
            sock.close(linger=0)
        context.term()
