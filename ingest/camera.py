"""Live camera ingest: one camera per process, reconnecting for as long as the monitor runs.

The camera is read IN THIS PROCESS with PyAV (the `av` package: FFmpeg's libraries behind a
well-kept Python binding), not by an `ffmpeg` child process. The reason is the camera's
password: a child's command line (`/proc/PID/cmdline`, `ps`) is readable by every local user
for as long as it runs, and ffmpeg takes its input URL, credentials included, only on its
command line (the RTSP demuxer has no separate user/password option, `-headers` is argv too,
and exec'ing any wrapper puts the URL back into argv). The URL reaches this process through
its environment (EMOJIMATION_CAMERA, readable by its owner only) and goes to `av.open`
directly, so it is in no process's argv. Measured against the ffmpeg child on a 640x360 30 fps
H.264 RTSP camera read at 5 fps, three runs each on 2 vCPUs: first frame after 0.56-0.65 s
(ffmpeg: 0.77-1.01 s), 2.2-2.4 % of a core in steady state (ffmpeg + its reader: 2.4-2.8 %),
116 MB peak memory in one process (79 MB + 75 MB in two): only the kept frames are converted,
by swscale straight to BGR at the output size, and no YUV4MPEG pipe is copied. OpenCV's
in-process FFmpeg reader (`cv2.VideoCapture`) was the other candidate: it reports every
failure as "no frame", so a wrong password and a dead camera look the same; PyAV raises
FFmpeg's own error ("Server returned 401 Unauthorized").

PyAV reads RTSP (over TCP or UDP), HTTP MJPEG or HLS, a V4L2 webcam, or a file played in real
time as a simulated camera (looping if asked). One frame is kept per 1/fps slot (like ffmpeg's
fps filter, without duplicates): by arrival time for a live camera, by timestamp for a file;
frames are scaled so the longer side is at most max_side.

The newest frame wins. A reader thread keeps only the latest decoded frame; the sender
offers it downstream without blocking. A frame overwritten before it was taken, or refused
because the pipeline is full, is dropped (counted: reasons `overwritten` and `pipeline-full`,
and in total in this ingest's stopped report, which the monitor's summary shows per camera).
The monitor keeps every link's queue small (MonitorConfig.queue_messages), so an overloaded
pipeline refuses frames here instead of queueing them. Every frame read gets a sequence
number, so the aggregator sees drops anywhere in the pipeline as gaps and counts them per camera.

Status changes (`live`, `disconnected`) travel in the stream itself, so the aggregator
records them as events in order with the camera's rows, whatever the deployment topology.
Every reason shown or logged is FFmpeg's message without the URL, redacted again anyway.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np
import zmq

from core.config import IngestConfig
from core.errors import DataError, redact_url
from core.messages import End, Frame, Start, Status, StatusEvent, encode, header
from core.runtime import StageIO

logger = logging.getLogger(__name__)

PREVIEW_MAX_SIDE = 640


def camera_uri(url: str) -> str:
    """How a camera is identified in the store: its URL without credentials."""
    return redact_url(url.strip())


@dataclass
class CameraSource:
    """How PyAV opens one camera: the URL (credentials included: never logged), the demuxer
    (None = by the URL), its options, and for files real-time pacing and looping."""

    url: str
    format: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    realtime: bool = False
    loop: bool = False


def camera_source(url: str, rtsp_transport: str = "tcp", loop: bool = False, timeout_s: float = 5.0
                  ) -> CameraSource:
    """The PyAV input for a camera URL, a webcam (index or /dev/videoN) or a file."""
    source = url.strip()
    if source.isdigit():  # a webcam index
        source = f"/dev/video{source}"
    if source.startswith("/dev/video"):
        return CameraSource(source, format="v4l2")
    if source.startswith(("rtsp://", "rtsps://")):
        # No `fflags nobuffer`: with it ffmpeg 5.1 never emitted a frame from gst-rtsp-server.
        # analyzeduration 0.5 s: ffmpeg's default 5 s probe made the first frame take 2.3 s here.
        return CameraSource(source, options={"rtsp_transport": rtsp_transport,
                                             "timeout": str(int(timeout_s * 1_000_000)), "flags": "low_delay",
                                             "analyzeduration": "500000"})
    if source.startswith(("http://", "https://")):
        return CameraSource(source, options={"rw_timeout": str(int(timeout_s * 1_000_000)),
                                             "analyzeduration": "500000"})
    if not Path(source).is_file():
        raise DataError(f"{redact_url(source)}: camera source is not a URL (rtsp://, http(s)://), a webcam or a file")
    return CameraSource(source, realtime=True, loop=loop)  # a simulated camera


def output_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The frame size sent on: the longer side at most max_side, both sides even."""
    limit = min(1.0, max_side / max(width, height)) if max_side > 0 else 1.0
    return max(2, int(width * limit / 2) * 2), max(2, int(height * limit / 2) * 2)


def ffmpeg_reason(error: BaseException) -> str:
    """FFmpeg's message for a failure, without the URL it names (and redacted anyway)."""
    if isinstance(error, av.ExitError):
        return "no data before the timeout"
    if isinstance(error, av.FFmpegError):
        return redact_url(str(error.strerror or type(error).__name__))
    return redact_url(str(error).split(": '", 1)[0] or type(error).__name__)


@dataclass
class Latest:
    """The newest decoded frame, replaced by the reader, taken by the sender."""

    seq: int = 0
    image: np.ndarray | None = None
    capture_time: float = 0.0


class FrameSlots:
    """Keeps the first frame of each 1/fps slot of stream time; a timestamp that goes back (a
    camera restarting its clock, a looped file) starts the slots again."""

    def __init__(self, fps: float) -> None:
        self.fps = fps
        self.origin: float | None = None
        self.last_slot = -1
        self.last_time = -math.inf

    def keep(self, time_s: float) -> bool:
        if self.origin is None or time_s < self.last_time:
            self.origin, self.last_slot = time_s, -1
        self.last_time = time_s
        slot = math.floor((time_s - self.origin) * self.fps + 1e-6)
        if slot <= self.last_slot:
            return False
        self.last_slot = slot
        return True


class CameraSession:
    """One connection to the camera: a reader thread decodes until the camera stops sending,
    the read times out, or `close()`."""

    def __init__(self, source: CameraSource, fps: float, max_side: int, timeout_s: float) -> None:
        self.source = source
        self.fps = fps
        self.max_side = max_side
        self.timeout_s = timeout_s
        self.source_size: tuple[int, int] | None = None
        self.condition = threading.Condition()
        self.latest = Latest()
        self.frames_read = 0
        self.ended = False
        self.error = ""
        self.closing = threading.Event()

    def read_frames(self, next_seq: "SeqCounter") -> None:
        """Reader thread: decode, keep one frame per 1/fps slot, convert it, publish it."""
        try:
            while not self.closing.is_set():
                self._play(next_seq)
                if not self.source.loop:
                    break
        except (av.FFmpegError, OSError, ValueError, IndexError) as error:
            if not self.closing.is_set():
                self.error = "no video stream" if isinstance(error, IndexError) else ffmpeg_reason(error)
        finally:
            with self.condition:
                self.ended = True
                self.condition.notify()

    def _play(self, next_seq: "SeqCounter") -> None:
        slots = FrameSlots(self.fps)
        started_at, first_time = time.monotonic(), None
        # A file is paced and sampled by its timestamps; a live camera by arrival (RTSP frames
        # may come without a timestamp, and arrival is what "5 frames a second" means live).
        with av.open(self.source.url, format=self.source.format, options=dict(self.source.options),
                     timeout=(self.timeout_s, self.timeout_s)) as container:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                if self.closing.is_set():
                    return
                live = not self.source.realtime or frame.time is None
                stamp = time.monotonic() - started_at if live else frame.time
                if not live:  # a file as a camera: frames at their own pace
                    if first_time is None:
                        first_time = stamp
                    wait = started_at + (stamp - first_time) - time.monotonic()
                    if wait > 0 and self.closing.wait(wait):
                        return
                if not slots.keep(stamp):
                    continue
                self.source_size = (frame.width, frame.height)
                width, height = output_size(frame.width, frame.height, self.max_side)
                image = frame.to_ndarray(format="bgr24", width=width, height=height,
                                         interpolation="AREA" if width < frame.width else None)
                with self.condition:
                    self.latest = Latest(next_seq.take(), image, time.time())
                    self.frames_read += 1
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
        """Why the camera stopped: FFmpeg's error (credentials removed), or the stream's end."""
        return self.error or "stream ended"

    def close(self) -> None:
        """Stop reading. A read blocked in FFmpeg returns within the session's timeout; the
        thread then closes the connection by itself."""
        self.closing.set()


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
            io.security.bind(self.preview, config.preview_bind)  # Curve, size limit, bind policy: as every socket

    def run(self) -> int:
        source = camera_source(self.config.camera, self.config.rtsp_transport, self.config.loop, self.config.stall_s)
        # A camera is identified by its name (unique per monitor; two names may show one URL).
        start = Start(stream=self.stream, seq=0, capture_time=self.started, kind="camera",
                      uri=self.name, name=self.name, source_fps=self.config.fps,
                      options={"fps": self.config.fps, "live": True, "url": camera_uri(self.config.camera)})
        if not self.io.send(start, self.stop):
            return 0
        self.io.report(StatusEvent.READY, self.stream, camera=self.name)
        failures = 0
        while not self.stop.is_set():
            reason, frames = self._session(source)
            if self.stop.is_set():
                break
            failures = 1 if frames else failures + 1
            self.io.metrics.reconnects.inc()
            delay = backoff_delay(failures, self.config.backoff_s, self.config.backoff_max_s)
            if self.status == "disconnected":
                logger.warning("camera %s: %s; reconnecting in %.1f s", self.name, reason, delay)
            self._set_status("disconnected", f"{reason}; reconnecting in {delay:.1f} s", retry_in_s=round(delay, 2))
            self._wait(delay)
        self._set_status("disconnected", "monitor stopped")
        self.io.send(End(stream=self.stream, seq=self.seq.value + 1, frames_sent=self.frames_sent), self.stop)
        self.io.report(StatusEvent.STOPPED, self.stream, frames_sent=self.frames_sent, frames_dropped=self.dropped,
                       **self.io.counters.as_dict())
        return 0

    def _wait(self, seconds: float) -> None:
        """Sleep between reconnects, still beating: a camera that is down is not a hung stage."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set() and (left := deadline - time.monotonic()) > 0:
            self.io.beat()
            self.stop.wait(min(left, 1.0))

    def _session(self, source: CameraSource) -> tuple[str, int]:
        """Read the camera until it fails or stalls; returns (why it ended, frames sent)."""
        session = CameraSession(source, self.config.fps, self.config.max_side, self.config.stall_s)
        reader = threading.Thread(target=session.read_frames, args=(self.seq,), name="camera-reader", daemon=True)
        reader.start()
        last_seq = self.seq.value
        sent = 0
        reason = ""
        last_frame_at = time.monotonic()
        try:
            while not self.stop.is_set():
                self.io.beat()
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
                for _ in range(latest.seq - last_seq - 1):  # read, then replaced by a newer one before sent
                    self.io.counters.drop("overwritten")
                self.dropped += latest.seq - last_seq - 1
                last_seq = latest.seq
                if self.status != "live":
                    height, width = latest.image.shape[:2]
                    self._set_status("live", f"receiving {width}x{height} frames",
                                     width=width, height=height)
                if self._send(session, latest):
                    sent += 1
                else:  # the pipeline is full (every link is small in the monitor): drop here, at the front
                    self.io.counters.drop("pipeline-full")
                    self.dropped += 1
        finally:
            session.close()
            reader.join(timeout=0.5)  # a read blocked in FFmpeg ends by its own timeout
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
