"""`emojimation relay`: a stateless forwarder between a pool of workers and a fixed address.

Its input PULL socket binds `--listen` (and/or connects to `--connect`); its output PUSH
socket binds `--bind` (and/or connects to `--push`). Scaled detectors push into it and
scaled classifiers connect to it, so neither pool needs to know the other's addresses.
Messages are forwarded unchanged: only the header is checked (magic, protocol version,
type), and one that fails is counted as malformed and dropped. Sends block while
downstream is full, so nothing is lost and backpressure reaches the senders. Counts and
metrics are the same as every stage's (core.metrics, stage="relay").
"""

from __future__ import annotations

import logging
import threading

from core.config import RelayConfig
from core.errors import ConfigError
from core.messages import MessageError, MessageType, peek_type
from core.runtime import StageIO, running

logger = logging.getLogger(__name__)

_FRAME_TYPES = {MessageType.FRAME, MessageType.FRAME_GROUP, MessageType.FACES, MessageType.CLASSIFIED, MessageType.TRACKED}


def run(config: RelayConfig, stop: threading.Event | None = None) -> int:
    stop = stop or threading.Event()
    if not (config.listen or config.connect) or not (config.bind or config.push):
        raise ConfigError("relay needs an input (--listen or --connect) and an output (--bind or --push)")
    with running(StageIO.from_config("relay", config)) as io:
        logger.info("relaying %s -> %s", config.listen or ", ".join(config.connect),
                    config.bind or ", ".join(config.push))
        while not stop.is_set():
            frames = io.receive_raw()
            if frames is None:
                continue
            try:
                kind = peek_type(frames[0].bytes)
            except MessageError as error:
                io.counters.malformed += 1
                io.counters.drop(error.reason)
                logger.warning("relay: dropped a malformed message: %s", error)
                continue
            carries_frame = kind in _FRAME_TYPES
            if carries_frame:
                io.counters.frames_in += 1
            if not io.send_raw(frames, carries_frame, stop):
                break
    return 0


if __name__ == "__main__":  # `python -m core.relay`
    from core.config import RelayConfig as _Config
    from core.process import stage_main

    stage_main("relay", _Config, run)
