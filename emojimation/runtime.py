"""What every stage process shares: logging, stop signals, sockets, counters, status reports."""

from __future__ import annotations

import faulthandler
import logging
import os
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import zmq

from emojimation.messages import Message, MessageError, Status, decode, encode

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(name)-24s %(levelname)-7s %(message)s"
HIGH_WATER_MARK = 64  # messages queued per socket before a sender blocks (files) or drops (cameras)
_CREDENTIALS = re.compile(r"(\w+://)[^/@\s]+@")


def redact(text: str) -> str:
    """Strip user:password from URLs: credentials are never logged."""
    return _CREDENTIALS.sub(r"\1***@", text)


def setup_logging(level: str = "INFO", process_name: str = "") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format=LOG_FORMAT, stream=sys.stderr)
    for noisy in ("tensorflow", "absl", "keras", "h5py", "matplotlib", "werkzeug"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    faulthandler.enable()
    if process_name:
        try:
            import setproctitle  # optional: nicer `ps` output

            setproctitle.setproctitle(process_name)
        except ImportError:
            pass


def stop_event_on_signals() -> threading.Event:
    """SIGINT/SIGTERM set the returned event; stage loops poll it and exit cleanly."""
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


@dataclass
class Counters:
    """Per-stage counts, exposed as metrics by the deploy issue and reported in status messages."""

    received: int = 0
    sent: int = 0
    dropped: int = 0
    errors: int = 0
    drop_reasons: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.dropped += 1
        self.drop_reasons[reason] = self.drop_reasons.get(reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {"received": self.received, "sent": self.sent, "dropped": self.dropped, "errors": self.errors,
                "drop_reasons": dict(self.drop_reasons)}


class StageIO:
    """A stage's sockets: PULL from upstream outputs, PUSH on its own bound output, PUSH status."""

    def __init__(self, stage: str, connect: list[str], bind: str, status: str) -> None:
        self.stage = stage
        self.context = zmq.Context()
        self.counters = Counters()
        self.input: zmq.Socket | None = None
        self.output: zmq.Socket | None = None
        self.status: zmq.Socket | None = None
        if connect:
            self.input = self.context.socket(zmq.PULL)
            self.input.setsockopt(zmq.RCVHWM, HIGH_WATER_MARK)
            self.input.setsockopt(zmq.LINGER, 0)
            for address in connect:
                self.input.connect(address)
        if bind:
            self.output = self.context.socket(zmq.PUSH)
            self.output.setsockopt(zmq.SNDHWM, HIGH_WATER_MARK)
            self.output.setsockopt(zmq.LINGER, 2000)
            self.output.setsockopt(zmq.SNDTIMEO, 200)
            try:
                self.output.bind(bind)
            except zmq.ZMQError as error:
                raise OSError(f"{stage}: cannot bind {bind} ({error})") from None
        if status:
            self.status = self.context.socket(zmq.PUSH)
            self.status.setsockopt(zmq.LINGER, 2000)
            self.status.setsockopt(zmq.SNDHWM, 1000)
            self.status.connect(status)

    def receive(self, timeout_ms: int = 200) -> Message | None:
        """The next valid message, or None on timeout; malformed input is counted and dropped."""
        if self.input is None or not self.input.poll(timeout_ms):
            return None
        frames = self.input.recv_multipart(copy=True)
        self.counters.received += 1
        try:
            return decode(frames)
        except MessageError as error:
            self.counters.drop(error.reason)
            logger.warning("%s: dropped a malformed message: %s", self.stage, error)
            return None

    def send(self, message: Message, stop: threading.Event | None = None) -> bool:
        """Send, blocking while downstream is full (nothing lost); False if stopped meanwhile."""
        assert self.output is not None, f"{self.stage} has no output socket"
        frames = encode(message)
        while True:
            try:
                self.output.send_multipart(frames, copy=False)
                self.counters.sent += 1
                return True
            except zmq.Again:
                if stop is not None and stop.is_set():
                    return False

    def report(self, event: str, stream: str = "", **detail: Any) -> None:
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
        for sock in (self.input, self.output, self.status):
            if sock is not None:
                sock.close(linger=-1 if deliver and sock is self.output else None)
        self.context.term()
