"""What every stage process shares: logging, stop signals, sockets, counters, status reports.

Links (`StageIO.from_config`, the StageLinks settings): a stage's input PULL socket connects to
`connect` and/or binds `listen`; its output PUSH socket binds `bind` and/or connects to `push`;
each queues at most `queue_messages` messages per link and side (64; the monitor's are small).
With `curve_dir`, every tcp:// endpoint is CurveZMQ-encrypted and authenticated
(core.security). With `metrics_port`, the stage serves Prometheus metrics
(core.metrics; stages update them through `io.metrics`).
"""

from __future__ import annotations

import datetime
import faulthandler
import json
import logging
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import zmq

from core.messages import Ack, Faces, Frame, FrameGroup, Message, MessageError, Status, StatusEvent, decode, encode
from core.metrics import Counters, StageMetrics
from core.security import LinkSecurity

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(name)-24s %(levelname)-7s %(message)s"
# Messages queued per socket before a sender blocks (files) or drops (cameras): StageIO's default;
# a stage's config sets its own (StageLinks.queue_messages; the monitor's is small: MonitorConfig).
HIGH_WATER_MARK = 64
# A stage's loop reports it is alive this often; the supervisor restarts a stage silent for
# much longer (MonitorConfig.heartbeat_timeout_s), so a hung process is noticed, not only a dead one.
HEARTBEAT_EVERY_S = 2.0


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, stage, logger, message."""

    def __init__(self, stage: str) -> None:
        super().__init__()
        self.stage = stage

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "stage": self.stage,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


_NATIVE_LEVELS = {"INFO": logging.INFO, "WARNING": logging.WARNING, "ERROR": logging.ERROR}


def _native_stderr_as_log_records() -> None:
    """JSON logs: lines that native code writes straight to file descriptor 2 (LiteRT prints
    one at start-up) become log records of the "stderr" logger, so every line stays JSON.
    Python's own sys.stderr (log records, the CLI's final error line, crash dumps) keeps the
    real descriptor, so nothing is lost when the process exits."""
    real = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = open(real, "w", buffering=1, encoding="utf-8", errors="replace")
    native = logging.getLogger("stderr")

    def forward() -> None:
        with open(read_end, "rb") as pipe:
            for raw in pipe:
                line = raw.decode(errors="replace").strip()
                if line:
                    prefix = line.split(":", 1)[0].strip().upper()
                    native.log(_NATIVE_LEVELS.get(prefix, logging.WARNING), "%s", line)

    threading.Thread(target=forward, name="native-stderr", daemon=True).start()


def setup_logging(level: str = "INFO", process_name: str = "", log_format: str = "text") -> None:
    """Log to stderr as text, or with `log_format="json"` as one JSON object per line (the
    stage is the last part of `process_name`, e.g. "detector" for "emojimation.detector")."""
    if log_format == "json":
        _native_stderr_as_log_records()
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(process_name.rsplit(".", 1)[-1] if process_name else ""))
    else:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=[handler], force=True)
    for noisy in ("tensorflow", "absl", "keras", "h5py", "matplotlib", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    faulthandler.enable(sys.stderr)


# The read end of the pipe Python writes a byte to when a signal arrives (signal.set_wakeup_fd):
# StageIO.receive waits on it beside its input, so a stop ends a wait at once instead of at its
# timeout (a file run's stages then exit about 0.2 s sooner). -1: not set up.
_signal_wakeup = -1


def stop_event_on_signals() -> threading.Event:
    """SIGINT/SIGTERM set the returned event; stage loops poll it and exit cleanly."""
    global _signal_wakeup
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    if _signal_wakeup < 0:
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        _signal_wakeup = wake_read
    return stop


def _forget_signals() -> None:
    """Empty the signal wake-up pipe."""
    try:
        while os.read(_signal_wakeup, 512):
            pass
    except BlockingIOError:
        pass


def receive_waiting(sock: zmq.Socket, timeout_ms: int, malformed: Callable[[MessageError], None]) -> list[Message]:
    """Every message waiting on `sock`, after waiting up to `timeout_ms` for the first; what
    cannot be decoded goes to `malformed` (side channels: status reports, acknowledgements)."""
    received: list[Message] = []
    if not sock.poll(timeout_ms):
        return received
    while True:
        try:
            frames = sock.recv_multipart(flags=zmq.NOBLOCK)
        except zmq.Again:
            return received
        try:
            received.append(decode(frames))
        except MessageError as error:
            malformed(error)


def frames_carried(message: Message) -> int:
    """How many video frames a message stands for (the frames_in/out counters)."""
    if isinstance(message, FrameGroup):
        return len(message.images)
    return 1 if isinstance(message, (Frame, Faces)) else 0


class StageIO:
    """A stage's sockets: PULL input (connects to `connect`, binds `listen`), PUSH output (binds
    `bind`, connects to `push`), PUSH status; Curve on tcp:// with `curve_dir`; metrics."""

    def __init__(self, stage: str, connect: list[str], bind: str, status: str, *, listen: str = "",
                 push: list[str] | tuple[str, ...] = (), curve_dir: str = "", metrics_port: int = 0,
                 metrics_host: str = "127.0.0.1", insecure: bool = False, acks: str = "",
                 acks_role: str = "", restarts: int = 0, queue_messages: int = HIGH_WATER_MARK) -> None:
        self.stage = stage
        self.context = zmq.Context()
        self.counters = Counters(restarts=restarts)
        self.metrics = StageMetrics(stage, self.counters)
        self.input: zmq.Socket | None = None
        self.output: zmq.Socket | None = None
        self.status: zmq.Socket | None = None
        self.acks: zmq.Socket | None = None  # file runs: ingest's PULL (bound), the aggregator's PUSH
        self.security: LinkSecurity | None = None
        self.last_beat = 0.0
        self._poller: zmq.Poller | None = None  # the input and the signal wake-up (_input_ready)
        try:
            self.security = LinkSecurity(self.context, stage, curve_dir, on_refused=self.counters.reject,
                                         insecure=insecure)
            if connect or listen:
                self.input = self.context.socket(zmq.PULL)
                # Both ends of a link queue (the sender's SNDHWM and this RCVHWM), and so do the
                # kernel's socket buffers (for ipc:// not settable through ZeroMQ: about 200 KB, a
                # fraction of a frame but dozens of small Faces). So live stages also drop by age
                # (the detector's and the classifier's max_age_s), which no buffer escapes.
                self.input.setsockopt(zmq.RCVHWM, queue_messages)
                self.input.setsockopt(zmq.LINGER, 0)
                if listen:
                    self.security.bind(self.input, listen)
                for address in connect:
                    self.security.connect(self.input, address)
            if bind or push:
                self.output = self.context.socket(zmq.PUSH)
                self.output.setsockopt(zmq.SNDHWM, queue_messages)
                self.output.setsockopt(zmq.LINGER, 2000)
                self.output.setsockopt(zmq.SNDTIMEO, 200)
                if bind:
                    self.security.bind(self.output, bind)
                for address in push:
                    self.security.connect(self.output, address)
            if acks and acks_role:
                self.acks = self.context.socket(zmq.PULL if acks_role == "bind" else zmq.PUSH)
                self.acks.setsockopt(zmq.LINGER, 1000)
                self.acks.setsockopt(zmq.SNDHWM if acks_role == "connect" else zmq.RCVHWM, 100_000)
                (self.security.bind if acks_role == "bind" else self.security.connect)(self.acks, acks)
            if status:
                self.status = self.context.socket(zmq.PUSH)
                self.status.setsockopt(zmq.LINGER, 2000)
                self.status.setsockopt(zmq.SNDHWM, 1000)
                self.security.connect(self.status, status)
            self.security.start()
            if self.acks is not None and acks_role == "connect" and restarts:
                self.ack("", 0)  # hello: what this stage held before it was restarted is lost
            if metrics_port:
                self.metrics.serve(metrics_host, metrics_port)
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_config(cls, stage: str, links: Any, inputs: bool = True, outputs: bool = True,
                    acks_role: str = "connect") -> "StageIO":
        """A stage's sockets from its config (a StageLinks); `inputs`/`outputs` False for a stage
        without an input (ingest) or an output (aggregator); with `links.acks` (a file run), the
        acknowledgement link: ingest binds it (`acks_role="bind"`), every other stage connects."""
        return cls(stage, links.connect if inputs else [], links.bind if outputs else "", links.status,
                   listen=links.listen if inputs else "", push=links.push if outputs else [],
                   curve_dir=links.curve_dir, metrics_port=links.metrics_port, metrics_host=links.metrics_host,
                   insecure=links.insecure, acks=links.acks, acks_role=acks_role, restarts=links.restarts,
                   queue_messages=links.queue_messages)

    def _count_sent(self, message: Message) -> None:
        self.counters.sent += 1
        self.counters.frames_out += frames_carried(message)

    def beat(self) -> None:
        """Report that this stage's loop is alive, at most every HEARTBEAT_EVERY_S. Called from
        the loop itself (every receive and send does), never from a thread of its own: a loop
        blocked on a database or a deadlock then goes silent and is restarted."""
        now = time.monotonic()
        if now - self.last_beat >= HEARTBEAT_EVERY_S:
            self.last_beat = now
            self.report(StatusEvent.HEARTBEAT)

    def _input_ready(self, timeout_ms: int) -> bool:
        """Wait up to `timeout_ms` for input; a signal arriving meanwhile (a stop) ends the wait
        at once. Signals from before the wait are forgotten first: the loop has checked its stop
        event since, and a stale wake-up would cut a stopping stage's last drain short."""
        if self.input is None:
            return False
        if _signal_wakeup < 0:
            return bool(self.input.poll(timeout_ms))
        if self._poller is None:
            self._poller = zmq.Poller()
            self._poller.register(self.input, zmq.POLLIN)
            self._poller.register(_signal_wakeup, zmq.POLLIN)
        _forget_signals()
        return self.input in dict(self._poller.poll(timeout_ms))

    def receive(self, timeout_ms: int = 200) -> Message | None:
        """The next valid message, or None on timeout; malformed input is counted and dropped."""
        self.beat()
        if not self._input_ready(timeout_ms):
            return None
        frames = self.input.recv_multipart(copy=False)  # arrays view the received buffers (no copy)
        self.counters.received += 1
        try:
            message = decode([frame.buffer for frame in frames])
        except MessageError as error:
            self.counters.malformed += 1
            self.counters.drop(error.reason)
            logger.warning("%s: dropped a malformed message: %s", self.stage, error)
            return None
        self.counters.frames_in += frames_carried(message)
        return message

    def receive_raw(self, timeout_ms: int = 200) -> list[zmq.Frame] | None:
        """The next message's frames undecoded (for the relay), or None on timeout."""
        self.beat()
        if not self._input_ready(timeout_ms):
            return None
        frames = self.input.recv_multipart(copy=False)
        self.counters.received += 1
        return frames

    def send_raw(self, frames: list[Any], carries_frame: bool | int, stop: threading.Event | None = None) -> bool:
        """Forward frames as they came, blocking while downstream is full; False if stopped meanwhile.
        `carries_frame`: whether (or how many) video frames the message carries, for the counters."""
        assert self.output is not None, f"{self.stage} has no output socket"
        while True:
            self.beat()  # blocked by a full downstream is alive, not hung
            try:
                self.output.send_multipart(frames, copy=False)
                break
            except zmq.Again:
                if stop is not None and stop.is_set():
                    return False
        self.counters.sent += 1
        self.counters.frames_out += int(carries_frame)
        return True

    def send(self, message: Message, stop: threading.Event | None = None) -> bool:
        """Send, blocking while downstream is full (nothing lost); False if stopped meanwhile."""
        assert self.output is not None, f"{self.stage} has no output socket"
        frames = encode(message)
        while True:
            self.beat()  # blocked by a full downstream is alive, not hung
            try:
                self.output.send_multipart(frames, copy=False)
                self._count_sent(message)
                return True
            except zmq.Again:
                if stop is not None and stop.is_set():
                    return False

    def offer(self, message: Message) -> bool:
        """Send only if downstream has room (live sources: a full pipeline drops, never lags)."""
        assert self.output is not None, f"{self.stage} has no output socket"
        self.beat()
        try:
            self.output.send_multipart(encode(message), flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        self._count_sent(message)
        return True

    def ack(self, stream: str, seq: int) -> None:
        """Tell ingest that `stream` is stored up to `seq` (a lost ack is covered by the next);
        stream "" is a restarted stage's hello."""
        if self.acks is None:
            return
        try:
            self.acks.send_multipart(encode(Ack(stream=stream, seq=seq)), flags=zmq.NOBLOCK)
        except zmq.Again:
            logger.debug("acknowledgement queue full; dropped one")

    def acknowledgements(self, timeout_ms: int) -> list[Ack]:
        """Acks received within `timeout_ms` (ingest's side of the link)."""
        self.beat()
        if self.acks is None:
            return []

        def malformed(error: MessageError) -> None:
            self.counters.malformed += 1
            self.counters.drop(error.reason)

        return [m for m in receive_waiting(self.acks, timeout_ms, malformed) if isinstance(m, Ack)]

    def report(self, event: StatusEvent, stream: str = "", **detail: Any) -> None:
        if self.status is None:
            return
        message = Status(stream=stream, seq=0, capture_time=time.time(), stage=self.stage, event=event,
                         detail={"pid": os.getpid(), **detail})
        try:
            self.status.send_multipart(encode(message), flags=zmq.NOBLOCK)
        except zmq.Again:
            logger.debug("status queue full; dropped a %s report", event)

    def close(self, deliver: bool = False) -> None:
        """Close sockets. With `deliver`, wait until every queued output message is handed on
        (a finished file ingest must not lose its tail); otherwise give up after the linger."""
        if self.security is not None:
            self.security.stop_watching()
        for sock in (self.input, self.output, self.status, self.acks):
            if sock is not None:
                sock.close(linger=-1 if deliver and sock is self.output else None)
        if self.security is not None:
            self.security.close()
        self.context.term()
        self.metrics.close()


@contextmanager
def running(io: StageIO, ready: dict[str, Any] | None = None, final: Callable[[], dict[str, Any]] = dict,
            deliver: Callable[[], bool] = lambda: False) -> Iterator[StageIO]:
    """The skeleton every stage's loop runs in: report ready, run the body, then, however it
    ends, report stopped with the final counters and close the sockets. `final` adds the
    stage's own totals to the stopped report; `deliver()` says whether queued output must be
    handed on before closing (a file ingest that finished)."""
    try:
        io.report(StatusEvent.READY, **(ready or {}))
        yield io
    finally:
        io.report(StatusEvent.STOPPED, **final(), **io.counters.as_dict())
        io.close(deliver=deliver())
