"""The aggregator's live output: each frame's faces with their track IDs, for `monitor --preview`."""

from __future__ import annotations

import numpy as np
import zmq

from core.messages import Classified, Tracked, encode, header
from core.security import LinkSecurity


class Preview:
    """A PUB socket: nobody listening costs nothing, and a slow listener misses frames rather
    than holding up the store writes."""

    def __init__(self, context: zmq.Context, security: LinkSecurity, address: str) -> None:
        self.socket = context.socket(zmq.PUB)
        self.socket.setsockopt(zmq.SNDHWM, 10)
        self.socket.setsockopt(zmq.LINGER, 0)
        security.bind(self.socket, address)  # Curve, size limit and the plain-bind rule, as every socket

    def publish(self, frame: Classified, track_ids: list[int]) -> None:
        tracked = Tracked(**header(frame), frame_index=frame.frame_index, boxes=frame.boxes, scores=frame.scores,
                          crops=frame.crops, probs=frame.probs, track_ids=np.asarray(track_ids, np.int64))
        try:
            self.socket.send_multipart(encode(tracked), flags=zmq.NOBLOCK)
        except zmq.Again:
            pass

    def close(self) -> None:
        self.socket.close()
