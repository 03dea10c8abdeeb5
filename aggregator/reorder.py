"""Per-stream re-ordering by sequence number: each stream's messages leave in the order sent.

Detector and classifier workers race, so a stream's messages arrive in any order, and some
arrive before their stream's Start. A message is held until every earlier one has come; a file
stream waits for every gap (nothing may be lost), a live stream waits for a missing message
only `window_s` after a later message of the stream arrived (it was dropped as stale upstream)
and then skips it: no message is held longer than `window_s`, however many gaps come in a row
(waiting for each gap afresh once the one before was skipped let latency grow without bound
when an overloaded pipeline dropped more than one frame per window). A stream's End carries
the sequence number after its last frame, so releasing the End closes the stream.

Pure logic: no store, no sockets. Dropped messages go to the `drop` callback with a reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from core.messages import End, Message

logger = logging.getLogger(__name__)

MAX_REORDER = 20_000  # messages held waiting for a gap; beyond it the gap is given up as lost
MAX_EARLY = 2_000  # messages held per stream waiting for its Start


@dataclass
class _Order:
    live: bool
    next_seq: int = 1
    waiting: dict[int, Message] = field(default_factory=dict)
    arrived: dict[int, float] = field(default_factory=dict)  # live: when each waiting message came


@dataclass
class Skipped:
    """A live stream's gap given up on: how many messages were skipped, and what that let out."""

    stream: str
    frames: int
    released: list[Message]


class Reorder:
    """Holds each open stream's messages until they are due; `push` and `open` return what is."""

    def __init__(self, window_s: float, drop: Callable[[str, Message], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s = window_s
        self.drop = drop
        self.clock = clock
        self.streams: dict[str, _Order] = {}
        self.early: dict[str, dict[int, Message]] = {}  # messages that beat their stream's Start

    @property
    def held(self) -> int:
        """Messages waiting, for a gap to fill or for their stream's Start."""
        return sum(len(order.waiting) for order in self.streams.values()) + sum(map(len, self.early.values()))

    def open(self, stream: str, live: bool, next_seq: int = 1) -> list[Message]:
        """Start ordering a stream (its Start came) at `next_seq` (after the frames already stored,
        when a stream carries on: earlier ones are duplicates); returns its early messages now due."""
        self.streams[stream] = _Order(live, next_seq)
        released: list[Message] = []
        for _seq, message in sorted(self.early.pop(stream, {}).items()):
            released += self.push(message)
        return released

    def close(self, stream: str) -> None:
        """Forget a stream and whatever it still held (its later messages count as early again)."""
        self.streams.pop(stream, None)

    def push(self, message: Message) -> list[Message]:
        """The messages due now, in sequence order; empty while a gap before `message` is open."""
        order = self.streams.get(message.stream)
        if order is None:
            early = self.early.setdefault(message.stream, {})
            early[message.seq] = message
            if len(early) > MAX_EARLY:  # a Start that never comes (e.g. sent to a dead aggregator)
                self.drop("no-start", early.pop(min(early)))
            return []
        if message.seq < order.next_seq or message.seq in order.waiting:
            self.drop("late" if order.live else "duplicate", message)
            return []
        order.waiting[message.seq] = message
        if order.live:
            order.arrived[message.seq] = self.clock()
        if len(order.waiting) > MAX_REORDER:
            lost = min(order.waiting) - order.next_seq
            logger.error("%s: %d messages never arrived; continuing after the gap", message.stream, lost)
            order.next_seq = min(order.waiting)
        return self._release(message.stream, order)

    def skip_gaps(self, now: float) -> list[Skipped]:
        """Live streams: give up on every gap whose next message has waited `window_s` since it
        arrived (several gaps of a stream in one call when they were all waited for long enough)."""
        skipped = []
        for stream, order in list(self.streams.items()):
            while order.live and order.waiting and stream in self.streams:
                first = min(order.waiting)
                if now - order.arrived.get(first, now) < self.window_s:
                    break
                frames = first - order.next_seq
                order.next_seq = first
                skipped.append(Skipped(stream, frames, self._release(stream, order)))
        return skipped

    def _release(self, stream: str, order: _Order) -> list[Message]:
        released = []
        while order.next_seq in order.waiting:
            message = order.waiting.pop(order.next_seq)
            order.arrived.pop(order.next_seq, None)
            released.append(message)
            order.next_seq += 1
            if isinstance(message, End):  # nothing follows a stream's End
                self.close(stream)
                return released
        return released
