"""The wire form of every message, and what a stage does with malformed input on a real socket."""

from __future__ import annotations

import json
import pickle
import signal
import struct
import subprocess
import sys

import numpy as np
import pytest
import zmq

from core.messages import (
    PROTOCOL_VERSION, Classified, End, Faces, Frame, FrameGroup, MessageError, Start, Status, decode, encode,
)


def sample_messages():
    rng = np.random.default_rng(0)
    return [
        Start(stream="in/0", seq=0, capture_time=1.5, kind="video", uri="a.mp4", name="a", source_fps=25.0,
              width=640, height=360, expected_frames=12, options={"fps": 10}),
        Frame(stream="in/0", seq=1, source_time=0.04, capture_time=2.0, frame_index=1, scale=2.0,
              image=rng.integers(0, 255, (36, 64, 3), dtype=np.uint8)),
        Frame(stream="photos", seq=1, frame_index=0, image=rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), still=True),
        Frame(stream="in/2", seq=1, frame_index=0, image=rng.integers(0, 255, (12, 8, 1), dtype=np.uint8), pixels="i420"),
        Faces(stream="in/0", seq=2, frame_index=3, boxes=rng.random((2, 4), dtype=np.float32),
              scores=np.array([0.9, 0.8], np.float32), crops=rng.integers(0, 255, (2, 48, 48), dtype=np.uint8)),
        Classified(stream="cam", seq=5, frame_index=9, boxes=np.zeros((1, 4), np.float32),
                   scores=np.ones(1, np.float32), crops=np.zeros((1, 48, 48), np.uint8),
                   probs=np.full((1, 7), 1 / 7, np.float32)),
        Faces(stream="in/1", seq=7, frame_index=0),  # a frame with no face
        End(stream="in/0", seq=13, frames_sent=12, error=""),
        Status(stream="", seq=0, stage="detector", event="ready", detail={"pid": 12}),
    ]


@pytest.mark.parametrize("message", sample_messages(), ids=lambda m: type(m).__name__)
def test_round_trip_keeps_every_field(message):
    decoded = decode(encode(message))
    assert type(decoded) is type(message)
    for name, value in vars(message).items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(getattr(decoded, name), value)
            assert getattr(decoded, name).dtype == value.dtype or value.size == 0
        else:
            assert getattr(decoded, name) == value, name


# --- the wire form, built and read by hand (the layout in core/messages.py's docstring) -------
# Written here without the module's own helpers: a header is struct `!2sBBqdd` (b"EM", version,
# type, seq, source_time, capture_time) then the stream id; then a JSON object; then each array
# as one byte of ndim, ndim big-endian uint32 sizes, and the raw little-endian values.
WIRE_HEADER = "!2sBBqdd"
FRAME_TYPE, CLASSIFIED_TYPE, STATUS_TYPE = 2, 4, 6


def hand_header(type_code: int, seq: int, source_time: float, capture_time: float, stream: str,
                version: int = PROTOCOL_VERSION) -> bytes:
    return struct.pack(WIRE_HEADER, b"EM", version, type_code, seq, source_time, capture_time) + stream.encode()


def hand_array(shape: tuple[int, ...], raw: bytes) -> bytes:
    return bytes([len(shape)]) + b"".join(size.to_bytes(4, "big") for size in shape) + raw


def test_a_frame_built_by_hand_decodes_to_its_fields():
    pixels = bytes(range(2 * 3 * 3))  # 2 rows, 3 columns, BGR: 0, 1, 2, ... row-major
    frames = [hand_header(FRAME_TYPE, 41, 1.25, 1_700_000_000.5, "cam/é 1"),
              b'{"frame_index": 7, "scale": 2.5}',
              hand_array((2, 3, 3), pixels)]
    message = decode(frames)
    assert isinstance(message, Frame)
    assert (message.stream, message.seq, message.source_time, message.capture_time) == \
        ("cam/é 1", 41, 1.25, 1_700_000_000.5)
    assert (message.frame_index, message.scale) == (7, 2.5)
    assert message.image.shape == (2, 3, 3) and message.image.dtype == np.uint8
    assert message.image[1, 2].tolist() == [15, 16, 17]  # row 1, column 2: bytes 15..17
    assert message.image.ravel().tolist() == list(pixels)


def test_classified_faces_built_by_hand_decode_to_their_values():
    boxes = [(10.5, 20.25, 30.0, 40.0), (-1.5, 0.0, 8.0, 8.0)]
    scores = [0.875, 0.5]
    probs = [[0.5, 0.0, 0.0, 0.25, 0.125, 0.0625, 0.0625], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]]
    crops = bytes([200]) * 48 * 48 + bytes([3]) * 48 * 48
    frames = [hand_header(CLASSIFIED_TYPE, 9, 0.5, 2.0, "in/0"),
              b'{"frame_index": 12, "error": ""}',
              hand_array((2, 4), struct.pack("<8f", *boxes[0], *boxes[1])),  # little-endian float32
              hand_array((2,), struct.pack("<2f", *scores)),
              hand_array((2, 48, 48), crops),
              hand_array((2, 7), struct.pack("<14f", *probs[0], *probs[1]))]
    message = decode(frames)
    assert isinstance(message, Classified) and (message.stream, message.seq, message.frame_index) == ("in/0", 9, 12)
    assert message.boxes.tolist() == [list(b) for b in boxes]
    assert message.scores.tolist() == scores and message.probs.tolist() == probs
    assert message.crops[0].min() == message.crops[0].max() == 200 and message.crops[1].max() == 3


def test_a_status_built_by_hand_decodes_with_its_json_detail():
    frames = [hand_header(STATUS_TYPE, 0, 0.0, 0.0, ""),
              '{"stage": "détecteur", "event": "ready", "detail": {"pid": 12, "nested": [1, {"a": null}]}}'.encode()]
    message = decode(frames)
    assert isinstance(message, Status) and message.event == "ready" and message.stage == "détecteur"
    assert message.detail == {"pid": 12, "nested": [1, {"a": None}]}


def test_encoded_messages_read_back_by_hand():
    """The other direction: what `encode` sends, parsed with struct and json alone."""
    image = (np.arange(36 * 64 * 3) % 251).astype(np.uint8).reshape(36, 64, 3)
    frames = encode(Frame(stream="s/1", seq=5, source_time=0.2, capture_time=3.5, frame_index=4, scale=1.5,
                          image=image))
    assert len(frames) == 3
    magic, version, type_code, seq, source_time, capture_time = struct.unpack_from(WIRE_HEADER, frames[0])
    assert (magic, version, type_code, seq, source_time, capture_time) == (b"EM", PROTOCOL_VERSION, FRAME_TYPE,
                                                                          5, 0.2, 3.5)
    assert frames[0][struct.calcsize(WIRE_HEADER):] == b"s/1"
    assert json.loads(frames[1]) == {"frame_index": 4, "scale": 1.5}
    # The pixels travel as themselves: the frame is the header bytes and the raw image, nothing else.
    assert frames[2] == hand_array((36, 64, 3), image.tobytes())

    classified = encode(Classified(stream="c", seq=1, frame_index=0, boxes=np.array([[1.5, 2, 3, 4]], ">f8"),
                                   scores=np.array([0.25]), crops=np.zeros((1, 48, 48), np.uint8),
                                   probs=np.full((1, 7), 0.125)))
    assert classified[2] == hand_array((1, 4), struct.pack("<4f", 1.5, 2, 3, 4))  # converted to <f4 for the wire
    assert classified[3] == hand_array((1,), struct.pack("<f", 0.25))
    assert classified[5] == hand_array((1, 7), struct.pack("<7f", *[0.125] * 7))


def test_a_pickled_payload_is_refused():
    """Never pickle: an array frame holding a pickle, or a pickle for the JSON, is malformed."""
    image = np.zeros((2, 3, 3), np.uint8)
    header = hand_header(FRAME_TYPE, 1, 0.0, 0.0, "x")
    for frames in ([header, b'{"frame_index": 0, "scale": 1.0}', pickle.dumps(image)],
                   [header, pickle.dumps({"frame_index": 0, "scale": 1.0}), hand_array((2, 3, 3), image.tobytes())]):
        with pytest.raises(MessageError):
            decode(frames)


def _corrupt_variants():
    good = encode(next(m for m in sample_messages() if type(m) is Faces))
    wrong_version = bytearray(good[0])
    wrong_version[2] = PROTOCOL_VERSION + 1
    unknown_type = bytearray(good[0])
    unknown_type[3] = 99
    return {
        "too few frames": good[:1],
        "bad magic": [b"XX" + good[0][2:], *good[1:]],
        "wrong version": [bytes(wrong_version), *good[1:]],
        "unknown type": [bytes(unknown_type), *good[1:]],
        "bad json": [good[0], b"{not json", *good[2:]],
        "json not an object": [good[0], b"[1, 2]", *good[2:]],
        "missing array": good[:-1],
        "truncated array": [*good[:-1], good[-1][:-5]],
        "wrong crop shape": [*good[:-1], encode(Frame(stream="x", seq=1, image=np.zeros((2, 2, 3), np.uint8)))[2]],
        "arrays disagree": [good[0], good[1], good[2], encode(Faces(stream="x", seq=1))[3], good[4]],
        "unexpected field": [good[0], json.dumps({"frame_index": 1, "error": "", "bogus": 1}).encode(), *good[2:]],
        "wrong field type": [good[0], json.dumps({"frame_index": None, "error": ""}).encode(), *good[2:]],
        "bool for int": [good[0], json.dumps({"frame_index": True, "error": ""}).encode(), *good[2:]],
        "deeply nested json": [good[0], b"[" * 100_000, *good[2:]],
        "huge shape": [*good[:-1], struct.pack("!B", 3) + struct.pack("!3I", 2**31, 2**31, 4)],
    }


@pytest.mark.parametrize("name", list(_corrupt_variants()))
def test_malformed_messages_raise_one_typed_error(name):
    with pytest.raises(MessageError) as error:
        decode(_corrupt_variants()[name])
    assert "\n" not in str(error.value)


def test_wrong_version_has_its_own_reason():
    with pytest.raises(MessageError) as error:
        decode(_corrupt_variants()["wrong version"])
    assert error.value.reason == "version"


def test_detector_process_drops_malformed_messages_counts_them_and_keeps_running(tmp_path):
    """A real detector process: garbage in is counted and dropped, the next good frame is answered."""
    context = zmq.Context()
    upstream = context.socket(zmq.PUSH)
    port_in = upstream.bind_to_random_port("tcp://127.0.0.1")
    downstream = context.socket(zmq.PULL)
    status = context.socket(zmq.PULL)
    port_status = status.bind_to_random_port("tcp://127.0.0.1")
    out_address = f"ipc://{tmp_path}/detector-out.sock"
    process = subprocess.Popen(
        [sys.executable, "-m", "emojimation", "detector", "--connect", f"tcp://127.0.0.1:{port_in}",
         "--bind", out_address, "--status", f"tcp://127.0.0.1:{port_status}", "--detector", "haar"],
        stderr=subprocess.PIPE, text=True)
    try:
        downstream.connect(out_address)
        assert status.poll(30_000), "detector never reported ready"
        assert decode(status.recv_multipart()).event == "ready"
        upstream.send_multipart([b"garbage"])
        upstream.send_multipart(_corrupt_variants()["wrong version"])
        frame = Frame(stream="t", seq=1, frame_index=0, image=np.full((120, 160, 3), 128, np.uint8))
        upstream.send_multipart(encode(frame))
        assert downstream.poll(20_000), "no answer to a valid frame after malformed ones"
        answer = decode(downstream.recv_multipart())
        assert isinstance(answer, Faces) and answer.seq == 1 and len(answer.boxes) == 0
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        reports = []
        while status.poll(2000):
            reports.append(decode(status.recv_multipart()))
        stopped = [r for r in reports if r.event == "stopped"][-1]
        assert stopped.detail["dropped"] == 2
        assert stopped.detail["drop_reasons"] == {"malformed": 1, "version": 1}
        assert "Traceback" not in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
        for sock in (upstream, downstream, status):
            sock.close(linger=0)
        context.term()


def test_a_classified_message_may_leave_its_crops_out():
    """The classifier forwards crops only when the aggregator keeps thumbnails: a Classified
    with boxes and probabilities but no crops decodes; a Faces without its crops does not."""
    boxes = np.zeros((2, 4), np.float32)
    message = Classified(stream="s", seq=1, boxes=boxes, scores=np.ones(2, np.float32),
                         probs=np.full((2, 7), 1 / 7, np.float32))
    decoded = decode(encode(message))
    assert len(decoded.boxes) == 2 and len(decoded.crops) == 0
    with pytest.raises(MessageError, match="disagree"):
        decode(encode(Faces(stream="s", seq=1, boxes=boxes, scores=np.ones(2, np.float32))))


def test_a_frame_group_round_trips_and_splits_into_its_frames():
    images = np.random.default_rng(0).integers(0, 255, (3, 20, 30, 3), dtype=np.uint8)
    group = FrameGroup(stream="in/0", seq=6, source_time=0.5, capture_time=100.5, scale=2.0, images=images,
                       frame_indices=np.array([5, 8, 11]), source_times=np.array([0.5, 0.8, 1.1]))
    decoded = decode(encode(group))
    assert isinstance(decoded, FrameGroup) and decoded.last_seq == 8
    frames = decoded.frames()
    assert [f.seq for f in frames] == [6, 7, 8] and [f.frame_index for f in frames] == [5, 8, 11]
    assert frames[2].capture_time == pytest.approx(101.1) and frames[1].scale == 2.0
    assert all((f.image == image).all() for f, image in zip(frames, images))
    assert not any(f.still for f in frames)
    photos = decode(encode(FrameGroup(**{**group.__dict__, "still": True})))
    assert photos.still and all(f.still for f in photos.frames())  # photos keep their mark through a group


@pytest.mark.parametrize("change, reason", [
    (dict(images=np.zeros((0, 4, 4, 3), np.uint8), frame_indices=np.zeros(0, np.int64),
          source_times=np.zeros(0)), "without frames"),
    (dict(frame_indices=np.array([-1])), "negative frame index"),
    (dict(source_times=np.array([np.nan])), "not finite"),
    (dict(frame_indices=np.array([1, 2])), "disagree"),
])
def test_a_bad_frame_group_is_refused(change, reason):
    fields = dict(stream="s", seq=1, images=np.zeros((1, 4, 4, 3), np.uint8), frame_indices=np.array([0]),
                  source_times=np.array([0.0]))
    with pytest.raises(MessageError, match=reason):
        decode(encode(FrameGroup(**{**fields, **change})))


@pytest.mark.parametrize("image, pixels, reason", [
    (np.zeros((8, 8, 3), np.uint8), "yuv", "unknown pixel format"),
    (np.zeros((8, 8, 1), np.uint8), "bgr", "BGR picture with 1 channels"),
    (np.zeros((8, 8, 1), np.uint8), "i420", "I420 picture"),  # rows not a multiple of 3
    (np.zeros((12, 7, 1), np.uint8), "i420", "I420 picture"),  # odd width
    (np.zeros((12, 8, 3), np.uint8), "i420", "I420 picture"),
])
def test_a_frame_whose_pixels_do_not_fit_its_format_is_refused(image, pixels, reason):
    with pytest.raises(MessageError, match=reason):
        decode(encode(Frame(stream="s", seq=1, image=image, pixels=pixels)))


def test_an_i420_frame_converts_to_the_bgr_it_was_made_from():
    import cv2

    bgr = np.random.default_rng(3).integers(0, 255, (4, 6, 3), dtype=np.uint8).repeat(2, 0).repeat(2, 1)  # 8x12, smooth
    i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)[:, :, None]
    frame = decode(encode(Frame(stream="s", seq=1, image=i420, pixels="i420")))
    assert frame.pixels == "i420" and frame.bgr().shape == (8, 12, 3)
    assert np.abs(frame.bgr().astype(int) - bgr).max() <= 8  # YUV rounding
    assert decode(encode(Frame(stream="s", seq=1, image=bgr))).bgr() is not None
