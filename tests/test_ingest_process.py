"""An ingest process from the outside: how a dead camera is retried (the backoff's growth and
cap), and that nothing it started outlives it when it is killed (the ffmpeg that decodes a file).

Each ingest is a real `python -m ingest` process with a real ZeroMQ output the test pulls from.
Everything it starts carries the test's marker in its environment (tests/helpers_processes.py).
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from core.messages import Frame, FrameGroup, Start, decode
from ingest.camera import backoff_delay

PROJECT_ROOT = Path(__file__).resolve().parents[1]
HANG_S = 120.0  # every wait: only a hang fails, never a slow machine


class Ingest:
    """`python -m ingest ...` with its output pulled by the test and its stderr collected."""

    def __init__(self, tmp_path: Path, marker, *args: str) -> None:
        self.context = zmq.Context()
        self.output = self.context.socket(zmq.PULL)
        self.output.setsockopt(zmq.LINGER, 0)
        self.output.setsockopt(zmq.RCVHWM, 2)  # take little: a test that stops pulling holds ingest back
        address = f"ipc://{tmp_path / 'ingest-out.sock'}"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "ingest", "--bind", address, *args], cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env=marker.env(EMOJIMATION_HOME=str(tmp_path), PYTHONUNBUFFERED="1"))
        self.output.connect(address)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.process.stderr:
            self.lines.append(line.rstrip())

    def receive(self, timeout_s: float = HANG_S):
        """The next message ingest sends (fails if none comes, or ingest exits first)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.output.poll(200):
                return decode(self.output.recv_multipart())
            assert self.process.poll() is None, "ingest exited:\n" + "\n".join(self.lines[-20:])
        raise AssertionError(f"nothing from ingest in {timeout_s:g} s:\n" + "\n".join(self.lines[-20:]))

    def wait_for_lines(self, pattern: str, count: int, timeout_s: float = HANG_S) -> list[re.Match]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = [m for line in list(self.lines) if (m := re.search(pattern, line))]
            if len(found) >= count:
                return found[:count]
            assert self.process.poll() is None, "ingest exited:\n" + "\n".join(self.lines[-20:])
            time.sleep(0.1)
        raise AssertionError(f"{count} lines matching {pattern!r} not logged in {timeout_s:g} s:\n"
                             + "\n".join(self.lines[-20:]))

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.output.close(linger=0)
        self.context.term()


@pytest.fixture
def ingests():
    started: list[Ingest] = []
    yield started
    for ingest in started:
        ingest.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- a dead camera: reconnect delays grow, with jitter, up to the cap --------------------------
def test_backoff_delay_doubles_per_failure_with_jitter_and_stops_at_the_cap():
    random.seed(21)  # reproducible; the bounds below hold for any draw
    first, cap = 0.5, 30.0
    for failures in range(1, 13):
        step = min(cap, first * 2 ** (failures - 1))  # 0.5, 1, 2, ... 16, then 30 for ever
        delays = [backoff_delay(failures, first, cap) for _ in range(400)]
        assert step / 2 <= min(delays) and max(delays) <= step, (failures, min(delays), max(delays))
        # Jitter spreads the delays over the whole range, so cameras that drop together spread out.
        assert min(delays) < 0.6 * step and max(delays) > 0.9 * step, failures
    assert max(backoff_delay(1000, first, cap) for _ in range(100)) <= cap  # no overflow far out


def test_a_dead_camera_is_retried_with_growing_then_capped_delays(tmp_path, ingests, process_marker):
    """A real camera ingest on a URL where nothing listens: it keeps retrying, and the delays it
    chooses (logged with one decimal) follow 0.4, 0.8, 1.6, 1.6, ... s, each 50-100 % jittered."""
    first, cap = 0.4, 1.6
    url = f"http://127.0.0.1:{free_port()}/camera.mjpg"  # connection refused at once
    ingest = Ingest(tmp_path, process_marker, "--camera", url, "--name", "dead", "--backoff-s", str(first),
                    "--backoff-max-s", str(cap), "--stall-s", "3", "--log-level", "WARNING")
    ingests.append(ingest)
    assert isinstance(ingest.receive(), Start)  # the stream begins before the camera is reached
    matches = ingest.wait_for_lines(r"camera dead: .*reconnecting in (\d+\.\d) s", 7)
    delays = [float(m.group(1)) for m in matches]
    for failures, delay in enumerate(delays, start=1):
        step = min(cap, first * 2 ** (failures - 1))
        assert step / 2 - 0.05 <= delay <= step + 0.05, (failures, delays)  # 0.05: the log's rounding
    assert delays[0] < delays[2]  # grew: 0.2-0.4 s, then 0.8-1.6 s
    assert all(delay <= cap + 0.05 for delay in delays[3:])  # and stopped growing at the cap
    ingest.process.send_signal(signal.SIGTERM)
    assert ingest.process.wait(HANG_S) == 0
    process_marker.assert_none_left(what="by the camera ingest")


# --- killed: nothing it started is left -------------------------------------------------------
@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """60 s of 25 fps test pattern: far longer than the test lets ingest run."""
    clip = tmp_path_factory.mktemp("ingest-clip") / "long.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
                    "-t", "60", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", str(clip)],
                   check=True, timeout=HANG_S)
    return clip


@pytest.mark.parametrize("mode", ["file", "camera"])
def test_nothing_is_left_when_ingest_is_killed(tmp_path, ingests, process_marker, long_clip, mode):
    """SIGKILL cannot be caught: whatever decodes for ingest must go with it. A file is decoded
    by an ffmpeg child (which must die once ingest stops reading its pipe); a camera, here the
    clip played as a simulated one, is read in the process itself."""
    args = ("--inputs", str(long_clip), "--every-frame") if mode == "file" else \
        ("--camera", str(long_clip), "--name", "sim", "--loop")
    ingest = Ingest(tmp_path, process_marker, *args, "--log-level", "WARNING")
    ingests.append(ingest)
    assert isinstance(ingest.receive(), Start)
    while not isinstance(ingest.receive(), Frame):  # a camera's status changes travel in the stream too
        pass
    # Decoding is under way; the test now stops pulling, so ingest and its decoder are held mid-stream.
    running = process_marker.processes()
    assert ingest.process.pid in [p.pid for p in running]
    if mode == "file":
        assert "ffmpeg" in [p.comm for p in running if p.ppid == ingest.process.pid], [str(p) for p in running]
    os.kill(ingest.process.pid, signal.SIGKILL)
    assert ingest.process.wait(HANG_S) == -signal.SIGKILL
    process_marker.assert_none_left(grace_s=30.0, what=f"by the {mode} ingest killed with SIGKILL")


# --- pixels: file frames travel as I420 -----------------------------------------------------
@pytest.mark.parametrize("size, encoded, pixels", [("320x240", "yuv420p", "i420"), ("321x241", "yuv444p", "bgr")])
def test_file_frames_travel_as_i420_and_convert_to_ffmpegs_own_bgr(tmp_path, ingests, process_marker, size, encoded,
                                                                    pixels):
    """A file's frames leave ingest as planar I420 (half the bytes of BGR; ffmpeg skips its BGR
    conversion) when the frame size is even, else as BGR; converted back, the picture is the BGR
    ffmpeg itself decodes (a BT.601 clip: the two conversions agree to a level or two)."""
    clip = tmp_path / "pattern.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-f", "lavfi", "-i", f"testsrc=size={size}:rate=10",
                    "-t", "1", "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", encoded, str(clip)],
                   check=True, timeout=HANG_S)
    width, height = (int(v) for v in size.split("x"))
    ffmpeg_bgr = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-i", str(clip), "-frames:v", "1", "-f",
                                 "rawvideo", "-pix_fmt", "bgr24", "-"], capture_output=True, check=True).stdout
    want = np.frombuffer(ffmpeg_bgr, np.uint8).reshape(height, width, 3)
    ingest = Ingest(tmp_path, process_marker, "--inputs", str(clip), "--every-frame", "--log-level", "WARNING")
    ingests.append(ingest)
    assert isinstance(ingest.receive(), Start)
    message = ingest.receive()
    frame = message.frames()[0] if isinstance(message, FrameGroup) else message
    assert frame.pixels == pixels
    assert frame.image.shape == ((height * 3 // 2, width, 1) if pixels == "i420" else (height, width, 3))
    got = frame.bgr()
    assert got.shape == (height, width, 3)
    difference = np.abs(got.astype(int) - want.astype(int))
    assert np.median(difference) <= 1 and np.percentile(difference, 99) <= 6, (difference.mean(), difference.max())
