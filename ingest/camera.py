"""Live camera ingest: one camera per process, reconnecting for as long as the monitor runs.

ffmpeg reads the camera (RTSP over TCP or UDP, HTTP MJPEG or HLS, a V4L2 webcam, or a file
played in real time as a simulated camera), resamples to the monitor's frame rate and
writes YUV4MPEG to a pipe: the stream header carries the frame size, so no separate probe
(which costs a second per RTSP connect) is needed.

The newest frame wins. A reader thread keeps only the latest decoded frame; the sender
offers it downstream without blocking. A frame overwritten before it was taken, or refused
because the pipeline is full, is dropped. Every frame read gets a sequence number, so the
aggregator sees drops anywhere in the pipeline as gaps and counts them per camera.

Status changes (`live`, `disconnected`) travel in the stream itself, so the aggregator
records them as events in order with the camera's rows, whatever the deployment topology.
"""

from __future__ import annotations

import logging
import random
import re
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import ffmpeg
import numpy as np
import zmq

from core.config import IngestConfig
from core.errors import DataError
from core.messages import End, Frame, Start, Status, StatusEvent, encode, header
from core.runtime import StageIO, redact

logger = logging.getLogger(__name__)

_SOURCE_SIZE = re.compile(r"Stream #0:\d+.*?: Video: .*?(\d{2,5})x(\d{2,5})")
PREVIEW_MAX_SIDE = 640


def camera_uri(url: str) -> str:
    """How a camera is identified in the store: its URL without credentials."""
    return redact(url.strip())


def ffmpeg_camera_args(url: str, fps: float, max_side: int, rtsp_transport: str = "tcp", loop: bool = False,
                       timeout_s: float = 5.0) -> list[str]:
    """The ffmpeg command reading one camera to YUV4MPEG frames on stdout."""
    options: dict[str, object] = {}
    source = url.strip()
    if source.isdigit():  # a webcam index
        source = f"/dev/video{source}"
    if source.startswith("/dev/video"):
        options["f"] = "v4l2"
    elif source.startswith(("rtsp://", "rtsps://")):
        # No `-fflags nobuffer`: with it ffmpeg 5.1 never emitted a frame from gst-rtsp-server.
        # analyzeduration 0.5 s: ffmpeg's default 5 s probe made the first frame take 2.3 s here.
        options.update(rtsp_transport=rtsp_transport, timeout=int(timeout_s * 1_000_000), flags="low_delay",
                       analyzeduration=500_000)
    elif source.startswith(("http://", "https://")):
        options.update(rw_timeout=int(timeout_s * 1_000_000), analyzeduration=500_000)
    else:
        if not Path(source).is_file():
            raise DataError(f"{source}: camera source is not a URL (rtsp://, http(s)://), a webcam or a file")
        options["re"] = None  # play a file at its own rate: a simulated camera
        if loop:
            options["stream_loop"] = -1
    limit = f"min(1,{max_side}/max(iw,ih))" if max_side > 0 else "1"
    stream = (ffmpeg.input(source, **options).video
              .filter("fps", fps=fps)
              .filter("scale", f"trunc(iw*{limit}/2)*2", f"trunc(ih*{limit}/2)*2"))
    out = ffmpeg.output(stream, "pipe:", format="yuv4mpegpipe", pix_fmt="yuv420p")
    return ffmpeg.compile(out.global_args("-hide_banner", "-nostdin", "-nostats", "-loglevel", "info"),
                          overwrite_output=True)


@dataclass
class Latest:
    """The newest decoded frame, replaced by the reader, taken by the sender."""

    seq: int = 0
    image: np.ndarray | None = None
    capture_time: float = 0.0


class CameraSession:
    """One ffmpeg run: reads frames until the camera stops sending or `close()`."""

    def __init__(self, args: list[str]) -> None:
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self.source_size: tuple[int, int] | None = None
        self.condition = threading.Condition()
        self.latest = Latest()
        self.frames_read = 0
        self.ended = False
        self.error_reader = threading.Thread(target=self._read_errors, daemon=True)
        self.error_reader.start()

    def _read_errors(self) -> None:
        for raw in self.process.stderr:
            line = raw.decode(errors="replace").strip()
            if not line:
                continue
            if self.source_size is None and (match := _SOURCE_SIZE.search(line)):
                self.source_size = (int(match.group(1)), int(match.group(2)))
            self.lines = (self.lines + [line])[-20:]

    def read_frames(self, next_seq: "SeqCounter") -> None:
        """Reader thread: parse YUV4MPEG and keep the newest frame."""
        stdout = self.process.stdout
        try:
            header = stdout.readline().decode(errors="replace").split()
            if not header or header[0] != "YUV4MPEG2":
                return
            width = next(int(h[1:]) for h in header if h.startswith("W"))
            height = next(int(h[1:]) for h in header if h.startswith("H"))
            size = width * height * 3 // 2
            while True:
                marker = stdout.readline()
                if not marker.startswith(b"FRAME"):
                    return
                raw = stdout.read(size)
                if len(raw) < size:
                    return
                image = cv2.cvtColor(np.frombuffer(raw, np.uint8).reshape(height * 3 // 2, width),
                                     cv2.COLOR_YUV2BGR_I420)
                with self.condition:
                    self.latest = Latest(next_seq.take(), image, time.time())
                    self.frames_read += 1
                    self.condition.notify()
        except (OSError, ValueError, StopIteration):
            return
        finally:
            with self.condition:
                self.ended = True
                self.condition.notify()

    def take(self, after_seq: int, timeout_s: float) -> Latest | None:
        """The newest frame newer than `after_seq`, waiting up to `timeout_s`; None on timeout or end."""
        deadline = time.monotonic() + timeout_s
        with self.condition:
            while self.latest.seq <= after_seq and not self.ended:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self.condition.wait(remaining)
            return self.latest if self.latest.seq > after_seq else None

    def reason(self) -> str:
        """Why the camera stopped, from ffmpeg's last meaningful line (credentials removed)."""
        try:
            code = self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            code = None
        self.error_reader.join(timeout=1)
        useful = [line for line in self.lines if not line.startswith(("Input #", "Output #", "Stream", "Duration",
                                                                     "Metadata", "encoder", "Press", "["))]
        detail = useful[-1] if useful else (self.lines[-1] if self.lines else "")
        if code is not None and code != 0:
            return redact(detail or f"ffmpeg exited with code {code}")
        return redact(detail) if detail and code is not None else "stream ended"

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.error_reader.join(timeout=2)


class SeqCounter:
    """Sequence numbers for one camera stream: every frame read gets the next one."""

    def __init__(self) -> None:
        self.value = 0
        self.lock = threading.Lock()

    def take(self) -> int:
        with self.lock:
            self.value += 1
            return self.value


def backoff_delay(failures: int, first_s: float, max_s: float) -> float:
    """Exponential backoff with jitter (50-100 % of the step), capped: cameras that drop together
    do not all reconnect in the same instant."""
    step = min(max_s, first_s * (2 ** max(0, failures - 1)))
    return step * (0.5 + random.random() / 2)


class CameraIngest:
    """Streams one camera as Start, Status/Frame..., End (at stop), reconnecting with backoff."""

    def __init__(self, config: IngestConfig, io: StageIO, stop: threading.Event) -> None:
        self.config = config
        self.io = io
        self.stop = stop
        # Unique per ingest run: a restarted ingest (new Start, seq from 1) must never be taken
        # for the tail of its previous run, whose End may still be on the way.
        self.stream = f"{config.stream_prefix}/{config.name or 'camera'}#{int(time.time() * 1000):x}"
        self.name = config.name or camera_uri(config.camera)
        self.seq = SeqCounter()
        self.started = time.time()
        self.status = "connecting"
        self.frames_sent = 0
        self.dropped = 0
        self.preview: zmq.Socket | None = None
        if config.preview_bind:
            self.preview = io.context.socket(zmq.PUB)
            self.preview.setsockopt(zmq.SNDHWM, 2)
            self.preview.setsockopt(zmq.LINGER, 0)
            self.preview.bind(config.preview_bind)

    def run(self) -> int:
        args = ffmpeg_camera_args(self.config.camera, self.config.fps, self.config.max_side,
                                  self.config.rtsp_transport, self.config.loop, self.config.stall_s)
        # A camera is identified by its name (unique per monitor; two names may show one URL).
        start = Start(stream=self.stream, seq=0, capture_time=self.started, kind="camera",
                      uri=self.name, name=self.name, source_fps=self.config.fps,
                      options={"fps": self.config.fps, "live": True, "url": camera_uri(self.config.camera)})
        if not self.io.send(start, self.stop):
            return 0
        self.io.report(StatusEvent.READY, self.stream, camera=self.name)
        failures = 0
        while not self.stop.is_set():
            reason, frames = self._session(args)
            if self.stop.is_set():
                break
            failures = 1 if frames else failures + 1
            self.io.metrics.reconnects.inc()
            delay = backoff_delay(failures, self.config.backoff_s, self.config.backoff_max_s)
            if self.status == "disconnected":
                logger.warning("camera %s: %s; reconnecting in %.1f s", self.name, reason, delay)
            self._set_status("disconnected", f"{reason}; reconnecting in {delay:.1f} s", retry_in_s=round(delay, 2))
            self.stop.wait(delay)
        self._set_status("disconnected", "monitor stopped")
        self.io.send(End(stream=self.stream, seq=self.seq.value + 1, frames_sent=self.frames_sent), self.stop)
        self.io.report(StatusEvent.STOPPED, self.stream, frames_sent=self.frames_sent, frames_dropped=self.dropped,
                       **self.io.counters.as_dict())
        return 0

    def _session(self, args: list[str]) -> tuple[str, int]:
        """Run ffmpeg until the camera fails or stalls; returns (why it ended, frames sent)."""
        session = CameraSession(args)
        reader = threading.Thread(target=session.read_frames, args=(self.seq,), daemon=True)
        reader.start()
        last_seq = self.seq.value
        sent = 0
        reason = ""
        last_frame_at = time.monotonic()
        try:
            while not self.stop.is_set():
                latest = session.take(last_seq, min(self.config.stall_s, 0.25))
                if latest is None:
                    if session.ended:
                        reason = session.reason()
                        break
                    if time.monotonic() - last_frame_at > self.config.stall_s:
                        reason = f"no frame for {self.config.stall_s:g} s"
                        break
                    continue
                last_frame_at = time.monotonic()
                self.dropped += latest.seq - last_seq - 1
                last_seq = latest.seq
                if self.status != "live":
                    height, width = latest.image.shape[:2]
                    self._set_status("live", f"receiving {width}x{height} frames",
                                     width=width, height=height)
                if self._send(session, latest):
                    sent += 1
                else:
                    self.dropped += 1
        finally:
            session.close()
            reader.join(timeout=2)
        return reason or "stopped", sent

    def _send(self, session: CameraSession, latest: Latest) -> bool:
        image = latest.image
        scale = 1.0
        if session.source_size and session.source_size[0] > image.shape[1]:
            scale = session.source_size[0] / image.shape[1]
        frame = Frame(stream=self.stream, seq=latest.seq, source_time=latest.capture_time - self.started,
                      capture_time=latest.capture_time, frame_index=latest.seq - 1, scale=scale, image=image)
        if self.preview is not None:
            self._publish_preview(frame)
        if self.io.offer(frame):
            self.frames_sent += 1
            return True
        return False

    def _publish_preview(self, frame: Frame) -> None:
        image = frame.image
        shrink = max(image.shape[:2]) / PREVIEW_MAX_SIDE
        if shrink > 1:
            image = cv2.resize(image, (int(image.shape[1] / shrink) // 2 * 2, int(image.shape[0] / shrink) // 2 * 2),
                               interpolation=cv2.INTER_AREA)
        preview = Frame(**header(frame), frame_index=frame.frame_index,
                        scale=frame.scale * frame.image.shape[1] / image.shape[1], image=image)
        try:
            self.preview.send_multipart(encode(preview), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass

    def _set_status(self, status: str, message: str, **detail: object) -> None:
        if status == self.status:
            return
        self.status = status
        report = Status(stream=self.stream, seq=0, capture_time=time.time(), stage="ingest", event=StatusEvent.CAMERA_STATUS,
                        detail={"status": status, "message": message, "camera": self.name, **detail})
        self.io.send(report, self.stop)
        self.io.report(StatusEvent.CAMERA_STATUS, self.stream, status=status, message=message, camera=self.name)
        (logger.warning if status == "disconnected" else logger.info)("camera %s: %s (%s)", self.name, status, message)


def run_camera(config: IngestConfig, io: StageIO, stop: threading.Event) -> int:
    """Entry for `emojimation ingest --camera URL`: runs until stopped."""
    try:
        return CameraIngest(config, io, stop).run()
    except DataError as error:
        logger.error("%s", error)
        io.report(StatusEvent.INPUT_FAILED, error=str(error))
        return 1
