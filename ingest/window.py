"""At-least-once delivery for file runs: messages sent but not yet stored, and sending them again.

A detector, classifier or aggregator that dies loses the messages it held. Ingest therefore
keeps every message it sent (at most `size` messages and `max_bytes` bytes) until the aggregator
acknowledges that its stream is stored up to it (`Ack`, cumulative per stream). A restarted
stage says hello (an Ack of stream ""): ingest then sends again every open stream's Start (a
new aggregator knows no stream) and everything not yet stored; the aggregator drops the
duplicates by (stream, seq). Resending is driven by restarts, not by a timer, so a pipeline
that is merely slow is never flooded with copies; only when nothing at all was stored for
`resend_after_s` (a loss no restart explains) is everything pending sent again, and then after
twice as long each time. An ack for a Start that is further on (a restarted aggregator or
`--resume` found rows already stored) makes ingest skip the frames already stored.

Without an acknowledgement link (`io.acks` None: cameras, or a stage run alone) messages are
only sent, as before.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from core.messages import Ack, End, FrameGroup, Message, Start, StatusEvent, encode
from core.runtime import StageIO, frames_carried

logger = logging.getLogger(__name__)


@dataclass
class _Pending:
    frames: list[bytes]
    carries_frames: int  # video frames in the message (a FrameGroup's several), for the counters
    last_seq: int  # the message is stored once its stream is acknowledged up to here

    @property
    def size(self) -> int:
        return sum(len(frame) for frame in self.frames)


class Window:
    """Sends messages, keeps them until stored, and sends them again when they are not."""

    def __init__(self, io: StageIO, size: int, resend_after_s: float, stop: threading.Event,
                 max_bytes: int = 1 << 62) -> None:
        self.io = io
        self.size = max(1, size)
        self.max_bytes = max_bytes
        self.pending_bytes = 0
        self.resend_after_s = resend_after_s
        self.stop = stop
        self.pending: dict[tuple[str, int], _Pending] = {}
        self.starts: dict[str, list[bytes]] = {}  # open streams' Start, for a new aggregator
        self.stored: dict[str, int] = {}  # per stream: stored up to this seq
        self.ends: dict[str, int] = {}  # per stream: its End's seq, once sent
        self.progress_at = time.monotonic()  # when an ack last advanced (or everything was last sent again)
        self.wait_s = resend_after_s

    @property
    def enabled(self) -> bool:
        return self.io.acks is not None

    def skipped(self, message: Message) -> bool:
        """A frame or End the store already holds (found by a resumed stream's first ack)."""
        last = message.last_seq if isinstance(message, FrameGroup) else message.seq
        if isinstance(message, Start) or last > self.stored.get(message.stream, -1):
            return False  # (a group stored in part is sent whole: its frames' boxes depend on each other)
        if isinstance(message, End):
            self._complete(message.stream)
        elif last // 500 > (message.seq - 1) // 500:  # every 500th frame: decoding a long stored prefix again is progress too
            self.io.report(StatusEvent.SKIPPING, message.stream, seq=message.seq)
        return True

    def send(self, message: Message) -> bool:
        """Send (blocking while the window is full or downstream is busy); False if stopped."""
        if not self.enabled:
            return self.io.send(message, self.stop)
        if self.skipped(message):
            return True
        frames = encode(message)
        item = _Pending(frames, frames_carried(message),
                        message.last_seq if isinstance(message, FrameGroup) else message.seq)
        while self.pending and (len(self.pending) >= self.size or self.pending_bytes + item.size > self.max_bytes) \
                and not self.stop.is_set():
            self.pump(100)
        key = (message.stream, message.seq)
        if isinstance(message, Start):
            self.starts[message.stream] = frames
            self.stored.pop(message.stream, None)
        elif isinstance(message, End):
            self.ends[message.stream] = message.seq
        self._keep(key, item)
        if not self.io.send_raw(frames, item.carries_frames, self.stop):
            return False
        self.pump(0)
        return True

    def drain(self) -> bool:
        """Wait until every message sent is stored; False if stopped first."""
        while self.enabled and self.pending and not self.stop.is_set():
            self.pump(100)
        return not self.pending or not self.enabled

    def pump(self, timeout_ms: int) -> None:
        """Take the acks that came; send everything pending again after a restart, or when
        nothing was stored for a long time."""
        for ack in self.io.acknowledgements(timeout_ms):
            self._acknowledged(ack)
        if self.pending and time.monotonic() - self.progress_at >= self.wait_s:
            logger.warning("nothing stored for %.0f s: sending %d message(s) again", self.wait_s, len(self.pending))
            self._resend_all()
            self.wait_s *= 2

    def _resend_all(self) -> None:
        for key in sorted(self.pending):  # each stream's Start (seq 0) before its frames
            item = self.pending[key]
            if self.io.send_raw(item.frames, item.carries_frames, self.stop):
                self.io.counters.resent += item.carries_frames
        self.progress_at = time.monotonic()

    def _acknowledged(self, ack: Ack) -> None:
        if not ack.stream:  # a stage restarted: what it held is lost, and a new aggregator knows no stream
            logger.warning("a stage restarted: sending %d open stream(s) and %d message(s) again",
                           len(self.starts), len(self.pending))
            for stream, frames in self.starts.items():
                if (stream, 0) not in self.pending:
                    self._keep((stream, 0), _Pending(frames, 0, 0))
            self._resend_all()
            return
        if ack.stream not in self.starts or ack.seq <= self.stored.get(ack.stream, -1):
            return
        self.stored[ack.stream] = ack.seq
        self.progress_at = time.monotonic()
        self.wait_s = self.resend_after_s
        for key in [key for key, item in self.pending.items() if key[0] == ack.stream and item.last_seq <= ack.seq]:
            self._forget(key)
        if ack.seq >= self.ends.get(ack.stream, 1 << 62):  # the whole stream is stored
            self._complete(ack.stream)

    def _complete(self, stream: str) -> None:
        self.starts.pop(stream, None)
        self.ends.pop(stream, None)
        for key in [key for key in self.pending if key[0] == stream]:
            self._forget(key)

    def _keep(self, key: tuple[str, int], item: _Pending) -> None:
        self._forget(key)  # a message sent again replaces its older copy
        self.pending[key] = item
        self.pending_bytes += item.size

    def _forget(self, key: tuple[str, int]) -> None:
        item = self.pending.pop(key, None)
        if item is not None:
            self.pending_bytes -= item.size
