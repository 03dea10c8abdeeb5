"""Every message that crosses a ZeroMQ socket, and its versioned wire form.

Wire form: a multipart message
  frame 0  header: struct `!2sBBqdd` (magic b"EM", protocol version, type, seq, source_time,
           capture_time) followed by the UTF-8 stream id
  frame 1  JSON object of the type's small fields (frame index, sizes, counts, errors)
  frame 2+ raw little-endian array payloads; their dtype and shape are fixed per type and
           field, checked on decode (never pickle)

`decode` raises `MessageError` with a one-line reason for anything malformed or of another
protocol version; stages count and log those and keep running. Fields added later without a
new protocol version (Frame's `still` and `pixels`) go on the wire only when not their default,
so BGR video frames read the same as before; an older stage refuses a photo's or an I420 frame
as malformed.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field, fields
from enum import IntEnum, StrEnum
from typing import Any, ClassVar

import numpy as np

from core.emotions import NUM_EMOTIONS
from core.preprocess import INPUT_SIZE, PIXEL_FORMATS, frame_bgr

PROTOCOL_VERSION = 1
MAGIC = b"EM"
_HEADER = struct.Struct("!2sBBqdd")
CROP_SIZE = INPUT_SIZE  # every face crop is the model's input


class MessageError(ValueError):
    """A message that cannot be decoded; `reason` is a short label for metrics."""

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class MessageType(IntEnum):
    START = 1  # a stream begins: what it is (kind, uri, fps, size)
    FRAME = 2  # a decoded picture
    FACES = 3  # faces found in a frame, with their model-input crops
    CLASSIFIED = 4  # the same faces with calibrated emotion probabilities
    END = 5  # a stream ended (completely or with an error)
    STATUS = 6  # a stage reports to the supervisor (ready, progress, done, error)
    TRACKED = 7  # classified faces with their track IDs (the aggregator's live output, e.g. for --preview)
    ACK = 8  # the aggregator to a file ingest: a stream's messages up to `seq` are stored (see Ack)
    FRAME_GROUP = 9  # consecutive decoded pictures of a file stream, for one detector worker (see FrameGroup)


class StatusEvent(StrEnum):
    """What a Status message reports. Members equal their strings, so logs and JSON stay readable."""

    READY = "ready"  # the stage's sockets are up (and its model loaded): it can take work
    STOPPED = "stopped"  # the stage is shutting down; detail carries its final counters
    HEARTBEAT = "heartbeat"  # the stage's loop is alive (sent every few seconds, busy or idle)
    INPUT_STARTED = "input-started"  # ingest opened one input of a file run
    INPUT_FAILED = "input-failed"  # ingest could not open or decode one input
    FINISHED = "finished"  # ingest sent every input of a file run
    SKIPPING = "skipping"  # ingest passes over frames a resumed stream already stored (alive, no new rows)
    SOURCE_OPENED = "source-opened"  # the aggregator created the stream's source row
    PROGRESS = "progress"  # the aggregator stored more frames of a stream
    DONE = "done"  # the aggregator stored a stream completely
    FAILED = "failed"  # a stream ended with an error; its partial rows were removed
    CAMERA_STATUS = "camera-status"  # a camera ingest connected, lost or re-gained its camera
    CAMERA_STOPPED = "camera-stopped"  # a camera stream ended (the monitor is stopping)


@dataclass
class Message:
    """Fields every message carries (the header)."""

    stream: str
    seq: int
    source_time: float = 0.0  # seconds from the start of the source
    capture_time: float = 0.0  # absolute Unix time the frame was captured (or read)
    TYPE: ClassVar[MessageType]
    ARRAYS: ClassVar[dict[str, tuple[str, tuple[int | None, ...]]]] = {}

    def meta(self) -> dict[str, Any]:
        return {}


def header(message: Message) -> dict[str, Any]:
    """The header fields of a message that answers `message`: same stream, sequence number and
    times, so latency and re-ordering follow the frame through every stage."""
    return {"stream": message.stream, "seq": message.seq, "source_time": message.source_time,
            "capture_time": message.capture_time}


@dataclass
class Start(Message):
    TYPE: ClassVar[MessageType] = MessageType.START
    kind: str = "video"  # video | image | camera
    uri: str = ""
    name: str = ""
    source_fps: float = 0.0
    width: int = 0  # source pixels
    height: int = 0
    expected_frames: int = 0  # frames the sampling will select (0 = unknown, e.g. a camera)
    options: dict[str, Any] = field(default_factory=dict)

    def meta(self) -> dict[str, Any]:
        return {"kind": self.kind, "uri": self.uri, "name": self.name, "source_fps": self.source_fps,
                "width": self.width, "height": self.height, "expected_frames": self.expected_frames,
                "options": self.options}


@dataclass
class Frame(Message):
    TYPE: ClassVar[MessageType] = MessageType.FRAME
    ARRAYS: ClassVar[dict[str, tuple[str, tuple[int | None, ...]]]] = {"image": ("u1", (None, None, None))}
    frame_index: int = 0  # 0-based index in the source
    scale: float = 1.0  # source pixels per frame pixel (ingest may downscale inside ffmpeg)
    # (h, w, 3) BGR, or with pixels "i420" (h * 3/2, w, 1) planar YUV: see core.preprocess.frame_bgr
    image: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 3), np.uint8))
    still: bool = False  # a photo, not a video frame: searched thoroughly (detector/search.py)
    pixels: str = "bgr"  # bgr | i420 (file ingest: half the bytes of BGR, and no conversion in ffmpeg)

    def meta(self) -> dict[str, Any]:
        # `still` and `pixels` only when not the default: a BGR video frame's wire form stays what it was.
        return {"frame_index": self.frame_index, "scale": self.scale, **({"still": True} if self.still else {}),
                **({"pixels": self.pixels} if self.pixels != "bgr" else {})}

    def bgr(self) -> np.ndarray:
        """The picture as BGR, whatever its pixel format on the wire."""
        return frame_bgr(self.image, self.pixels)


@dataclass
class FrameGroup(Message):
    """Consecutive frames of one file stream, sent together so that one detector worker
    handles them in order (file runs, detection on a schedule): frame j has seq `seq + j`.

    The group is the detection schedule's unit: a full detection on its first frame, each face
    followed through the rest. So every frame's boxes depend only on the frames of its group,
    never on which worker got which frames before: a run gives the same results every time,
    after a worker was restarted or a run resumed too."""

    TYPE: ClassVar[MessageType] = MessageType.FRAME_GROUP
    ARRAYS: ClassVar[dict[str, tuple[str, tuple[int | None, ...]]]] = {
        "images": ("u1", (None, None, None, None)), "frame_indices": ("<i8", (None,)), "source_times": ("<f8", (None,)),
    }
    scale: float = 1.0  # source pixels per frame pixel, as Frame's
    images: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0, 3), np.uint8))  # (n, h, w, 3) BGR, or I420 as Frame's
    frame_indices: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    source_times: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float64))
    still: bool = False  # photos, as Frame's
    pixels: str = "bgr"  # as Frame's

    def meta(self) -> dict[str, Any]:
        return {"scale": self.scale, **({"still": True} if self.still else {}),
                **({"pixels": self.pixels} if self.pixels != "bgr" else {})}

    @property
    def last_seq(self) -> int:
        return self.seq + len(self.images) - 1

    def frames(self) -> list[Frame]:
        """The group's frames as Frame messages (views of its images, no copies); the capture
        time moves with the source time, as ingest stamps a file's frames."""
        return [Frame(stream=self.stream, seq=self.seq + j, source_time=float(self.source_times[j]),
                      capture_time=self.capture_time + float(self.source_times[j]) - self.source_time,
                      frame_index=int(self.frame_indices[j]), scale=self.scale, image=self.images[j],
                      still=self.still, pixels=self.pixels)
                for j in range(len(self.images))]


@dataclass
class Faces(Message):
    TYPE: ClassVar[MessageType] = MessageType.FACES
    ARRAYS: ClassVar[dict[str, tuple[str, tuple[int | None, ...]]]] = {
        "boxes": ("<f4", (None, 4)), "scores": ("<f4", (None,)), "crops": ("u1", (None, CROP_SIZE, CROP_SIZE)),
    }
    frame_index: int = 0
    error: str = ""  # set when detection failed on this frame (the frame still counts)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))  # x, y, w, h source px
    scores: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    crops: np.ndarray = field(default_factory=lambda: np.zeros((0, CROP_SIZE, CROP_SIZE), np.uint8))

    def meta(self) -> dict[str, Any]:
        return {"frame_index": self.frame_index, "error": self.error}


@dataclass
class Classified(Faces):
    TYPE: ClassVar[MessageType] = MessageType.CLASSIFIED
    ARRAYS: ClassVar[dict[str, tuple[str, tuple[int | None, ...]]]] = {
        **Faces.ARRAYS, "probs": ("<f4", (None, NUM_EMOTIONS)),
    }
    probs: np.ndarray = field(default_factory=lambda: np.zeros((0, NUM_EMOTIONS), np.float32))


@dataclass
class Tracked(Classified):
    TYPE: ClassVar[MessageType] = MessageType.TRACKED
    ARRAYS: ClassVar[dict[str, tuple[str, tuple[int | None, ...]]]] = {
        **Classified.ARRAYS, "track_ids": ("<i8", (None,)),
    }
    track_ids: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))


@dataclass
class End(Message):
    """Sent with seq = one past the last frame, so a re-ordering receiver knows when it has all."""

    TYPE: ClassVar[MessageType] = MessageType.END
    frames_sent: int = 0
    error: str = ""

    def meta(self) -> dict[str, Any]:
        return {"frames_sent": self.frames_sent, "error": self.error}


@dataclass
class Ack(Message):
    """File runs: every message of `stream` up to and including `seq` is committed to the store
    (0 = its Start; End's seq = the whole stream), so ingest may forget them. A stream of ""
    is a newly started aggregator's hello: it knows no stream yet, so ingest sends each open
    stream's Start again."""

    TYPE: ClassVar[MessageType] = MessageType.ACK


@dataclass
class Status(Message):
    TYPE: ClassVar[MessageType] = MessageType.STATUS
    stage: str = ""
    event: StatusEvent = StatusEvent.READY
    detail: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            self.event = StatusEvent(self.event)
        except ValueError:
            raise MessageError(f"Status: unknown event {self.event!r}") from None

    def meta(self) -> dict[str, Any]:
        return {"stage": self.stage, "event": str(self.event), "detail": self.detail}


MESSAGE_TYPES: dict[MessageType, type[Message]] = {
    cls.TYPE: cls for cls in (Start, Frame, FrameGroup, Faces, Classified, Tracked, End, Status, Ack)
}


def encode(message: Message) -> list[bytes]:
    stream = message.stream.encode()
    header = _HEADER.pack(MAGIC, PROTOCOL_VERSION, int(message.TYPE), message.seq,
                          message.source_time, message.capture_time) + stream
    frames = [header, json.dumps(message.meta(), separators=(",", ":")).encode()]
    for name, (dtype, _shape) in message.ARRAYS.items():
        array = np.asarray(getattr(message, name), dtype=dtype)
        shape = struct.pack("!B", array.ndim) + struct.pack(f"!{array.ndim}I", *array.shape)
        # One copy of the payload (a frame is megabytes): into a buffer that already holds the shape.
        payload = bytearray(len(shape) + array.nbytes)
        payload[:len(shape)] = shape
        np.frombuffer(payload, np.uint8, offset=len(shape)).reshape(array.shape + (array.itemsize,))[...] = \
            array.reshape(array.shape + (1,)).view(np.uint8)
        frames.append(payload)
    return frames


def _decode_array(raw: bytes | memoryview, name: str, dtype: str, shape: tuple[int | None, ...]) -> np.ndarray:
    if len(raw) < 1:
        raise MessageError(f"array {name}: empty payload")
    ndim = raw[0]
    if ndim != len(shape):
        raise MessageError(f"array {name}: {ndim} dimensions, expected {len(shape)}")
    dims_end = 1 + 4 * ndim
    if len(raw) < dims_end:
        raise MessageError(f"array {name}: truncated shape")
    dims = struct.unpack(f"!{ndim}I", raw[1:dims_end])
    for got, want in zip(dims, shape):
        if want is not None and got != want:
            raise MessageError(f"array {name}: shape {dims}, expected {shape}")
    expected = math.prod(dims) * np.dtype(dtype).itemsize
    if len(raw) - dims_end != expected:
        raise MessageError(f"array {name}: {len(raw) - dims_end} bytes for shape {dims}, expected {expected}")
    return np.frombuffer(raw, dtype=dtype, offset=dims_end).reshape(dims)


def decode(frames: list[bytes] | list[memoryview]) -> Message:
    """A message from its wire frames: bytes, or memoryviews of received ZeroMQ frames (the
    arrays then view the received buffers: a frame's picture is not copied again)."""
    if len(frames) < 2:
        raise MessageError(f"{len(frames)} frame(s), expected at least 2")
    header = bytes(frames[0])
    if len(header) < _HEADER.size or header[:2] != MAGIC:
        raise MessageError("bad header (not an Emojimation message)")
    _magic, version, type_code, seq, source_time, capture_time = _HEADER.unpack_from(header)
    if version != PROTOCOL_VERSION:
        raise MessageError(f"protocol version {version}, expected {PROTOCOL_VERSION}", reason="version")
    try:
        cls = MESSAGE_TYPES[MessageType(type_code)]
        stream = header[_HEADER.size:].decode()
        meta = json.loads(bytes(frames[1]))
    except (ValueError, KeyError, UnicodeDecodeError, RecursionError) as error:
        raise MessageError(f"bad header or metadata ({error})") from None
    if not isinstance(meta, dict):
        raise MessageError("metadata is not a JSON object")
    if len(frames) != 2 + len(cls.ARRAYS):
        raise MessageError(f"{cls.__name__}: {len(frames)} frames, expected {2 + len(cls.ARRAYS)}")
    arrays = {name: _decode_array(raw, name, dtype, shape)
              for (name, (dtype, shape)), raw in zip(cls.ARRAYS.items(), frames[2:])}
    # Every per-face array has one row per face; a Classified may leave its crops out (empty).
    counts = {len(a) for name, a in arrays.items()
              if name != "image" and not (name == "crops" and cls is not Faces and len(a) == 0)}
    if len(counts) > 1:
        raise MessageError(f"{cls.__name__}: arrays disagree on the number of faces")
    expected = _META_TYPES[cls]
    for name, value in meta.items():
        if name not in expected:
            raise MessageError(f"{cls.__name__}: unexpected field {name!r}")
        if not isinstance(value, expected[name]) or isinstance(value, bool) and bool not in expected[name]:
            raise MessageError(f"{cls.__name__}: field {name!r} has type {type(value).__name__}")
    message = cls(stream=stream, seq=seq, source_time=source_time, capture_time=capture_time, **meta, **arrays)
    problem = out_of_range(message)
    if problem:
        raise MessageError(f"{cls.__name__}: {problem}", reason="out-of-range")
    return message


def out_of_range(message: Message) -> str:
    """Why a well-formed message carries impossible numbers ("" if it does not): NaN or
    infinite times, boxes, scores or probabilities, negative sizes or sequence numbers.
    Such values would poison tracks and the store (SQLite refuses NaN), so they are dropped
    like malformed messages."""
    if message.seq < 0:
        return f"negative sequence number {message.seq}"
    if not (math.isfinite(message.source_time) and math.isfinite(message.capture_time)):
        return "time is not finite"
    for name in message.ARRAYS:
        array = getattr(message, name)
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            return f"{name} has values that are not finite"
    if isinstance(message, Faces):
        if len(message.boxes) and (message.boxes[:, 2:] < 0).any():
            return "a box has a negative size"
        if isinstance(message, Classified) and len(message.probs) and \
                ((message.probs < 0).any() or (message.probs > 1).any()):
            return "probabilities outside 0..1"
    if isinstance(message, (Frame, FrameGroup)):
        if not (math.isfinite(message.scale) and message.scale > 0):
            return f"frame scale {message.scale} is not a positive number"
        picture = message.image if isinstance(message, Frame) else message.images[0] if len(message.images) else None
        if message.pixels not in PIXEL_FORMATS:
            return f"unknown pixel format {message.pixels!r}"
        if picture is not None and picture.size:
            rows, width, channels = picture.shape
            if message.pixels == "bgr" and channels != 3:
                return f"a BGR picture with {channels} channels"
            if message.pixels == "i420" and (channels != 1 or rows % 3 or width % 2):
                return f"an I420 picture of shape {picture.shape} (expected rows a multiple of 3, even width, 1 channel)"
    if isinstance(message, FrameGroup):
        if len(message.images) == 0:
            return "a frame group without frames"
        if (message.frame_indices < 0).any():
            return "a negative frame index"
    if isinstance(message, Start) and not (math.isfinite(message.source_fps) and message.source_fps >= 0):
        return f"source fps {message.source_fps} is not a non-negative number"
    return ""


def peek_type(header: bytes) -> MessageType:
    """A message's type from its header frame alone (magic, version and type checked, nothing
    else decoded): enough for a relay that forwards messages unchanged."""
    if len(header) < _HEADER.size or header[:2] != MAGIC:
        raise MessageError("bad header (not an Emojimation message)")
    _magic, version, type_code, *_ = _HEADER.unpack_from(header)
    if version != PROTOCOL_VERSION:
        raise MessageError(f"protocol version {version}, expected {PROTOCOL_VERSION}", reason="version")
    try:
        return MessageType(type_code)
    except ValueError:
        raise MessageError(f"unknown message type {type_code}") from None


def _meta_types(cls: type[Message]) -> dict[str, tuple[type, ...]]:
    """JSON types each small field of `cls` may take on the wire (ints are fine for floats)."""
    allowed = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,),
               "dict[str, Any]": (dict,), "float | None": (int, float, type(None)),
               "StatusEvent": (str,)}
    types = {}
    for f in fields(cls):
        if f.name in cls.ARRAYS or f.name in ("stream", "seq", "source_time", "capture_time"):
            continue
        types[f.name] = allowed[str(f.type)]
    return types


_META_TYPES: dict[type[Message], dict[str, tuple[type, ...]]] = {cls: _meta_types(cls) for cls in MESSAGE_TYPES.values()}
