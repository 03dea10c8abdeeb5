"""One preprocessing for training and inference: the same face gives the same model input.

Training reads FER2013 files through training.data (face_input with no box); the pipeline's
detector stage cuts detector boxes out of whole frames (face_input with a box) and sends the
crops on to the classifier. For a FER2013 face pasted into a frame at a known place, with the
detector's box on that exact place and margin 0, both paths must give identical uint8 arrays.
"""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest

from detector.schedule import ScheduledDetector
from detector.stage import detect_faces
from core.messages import Frame, decode, encode
from core.preprocess import INPUT_SIZE, CropGeometry, face_input, square_box
from helpers_fer import FER_ORDER as EMOTIONS, decode_grey, shared_files
from training.data import load_folder


class PlacedFaces:
    """A stand-in detector that reports exactly where the test pasted each face."""

    def __init__(self, boxes: list[tuple[int, int, int, int]]) -> None:
        self.boxes = np.array(boxes, dtype=np.float32).reshape(-1, 4)

    def detect(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.boxes.copy(), np.ones(len(self.boxes), np.float32)


def _one_face_per_class(tmp_path):
    """A training tree with one shared face per emotion: PNGs from train/, JPEGs from val/."""
    root = tmp_path / "faces"
    files = []
    for i, emotion in enumerate(EMOTIONS):
        src = shared_files("train" if i % 2 else "val", emotion, 1, skip=5)[0]
        (root / emotion).mkdir(parents=True)
        shutil.copyfile(src, root / emotion / src.name)
        files.append(src)
    return root, files


def test_training_loader_and_pipeline_crop_give_identical_inputs(tmp_path):
    root, files = _one_face_per_class(tmp_path)
    training = load_folder(root, use_cache=False)
    by_label = dict(zip(training.labels.tolist(), training.images))
    assert sorted(by_label) == list(range(len(EMOTIONS)))
    for label, src in enumerate(files):
        np.testing.assert_array_equal(by_label[label], decode_grey(src))

    # One BGR video frame (noise background) with every face pasted in: most at their own size,
    # some 2x and 3x larger (pixel-replicated), as a detector sees faces nearer the camera.
    rng = np.random.default_rng(7)
    frame = rng.integers(0, 256, (420, 640, 3), dtype=np.uint8)
    boxes = []
    x = 5
    for label, scale in zip(range(len(EMOTIONS)), (1, 2, 1, 3, 1, 2, 1)):
        face = np.kron(by_label[label], np.ones((scale, scale), np.uint8))  # exact nearest upscale
        side = INPUT_SIZE * scale
        y = 11 + 17 * label
        frame[y:y + side, x:x + side] = face[:, :, None]  # grey as B = G = R
        boxes.append((x, y, side, side))
        x += side + 9
    assert x <= frame.shape[1]

    faces = detect_faces(ScheduledDetector(PlacedFaces(boxes), every=1), Frame(stream="cam", seq=0, image=frame),
                         CropGeometry(0.0, 0.0))
    wire = decode(encode(faces))  # what the classifier stage receives
    assert wire.crops.shape == (len(EMOTIONS), INPUT_SIZE, INPUT_SIZE) and wire.crops.dtype == np.uint8
    for label in range(len(EMOTIONS)):
        np.testing.assert_array_equal(wire.crops[label], by_label[label], err_msg=f"{EMOTIONS[label]} face")


def test_training_loader_resizes_larger_faces_like_the_pipeline(tmp_path):
    """A 96x96 copy of a face (2x, pixel-replicated) loads as the original 48x48 face."""
    root, files = _one_face_per_class(tmp_path)
    big_root = tmp_path / "big"
    for label, src in enumerate(files):
        (big_root / EMOTIONS[label]).mkdir(parents=True)
        big = np.kron(decode_grey(src), np.ones((2, 2), np.uint8))
        assert cv2.imwrite(str(big_root / EMOTIONS[label] / "face.png"), big)
    small = load_folder(root, use_cache=False)
    large = load_folder(big_root, use_cache=False)
    order_small, order_large = np.argsort(small.labels), np.argsort(large.labels)
    np.testing.assert_array_equal(large.images[order_large], small.images[order_small])
    np.testing.assert_array_equal(large.labels[order_large], small.labels[order_small])


@pytest.mark.parametrize("channels", [None, 1, 3, 4])
def test_face_input_is_identity_on_a_fer2013_face(channels):
    face = decode_grey(shared_files("val", "happy", 1)[0])
    image = face if channels is None else np.repeat(face[:, :, None], channels, axis=2)
    if channels == 4:
        image[:, :, 3] = 255  # alpha
    out = face_input(image)
    assert out.dtype == np.uint8 and out.shape == (INPUT_SIZE, INPUT_SIZE)
    np.testing.assert_array_equal(out, face)


def test_face_input_cuts_before_greying_with_the_same_pixels():
    """face_input cuts the face's square out of the colour frame before greying it (cheaper on
    large frames): the crop must equal greying the whole frame, padding it by repeating its
    edge pixels, then cutting; inside, at and past every edge."""
    rng = np.random.default_rng(0)
    for _ in range(300):
        height, width = rng.integers(40, 300, 2)
        frame = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        box = (rng.uniform(-60, width), rng.uniform(-60, height), rng.uniform(5, 150), rng.uniform(5, 150))
        x0, y0, side = square_box(box, 0.1, -0.1)
        pad = side + abs(x0) + abs(y0)
        padded = cv2.copyMakeBorder(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        square = padded[y0 + pad:y0 + pad + side, x0 + pad:x0 + pad + side]
        want = cv2.resize(square, (48, 48), interpolation=cv2.INTER_AREA if side > 48 else cv2.INTER_LINEAR)
        np.testing.assert_array_equal(face_input(frame, box, 0.1, -0.1), want)


def test_a_square_reaching_past_the_frame_repeats_its_edge_pixels():
    """face_input's square at or past the frame's edge (or wholly outside it): every pixel is the
    nearest pixel of the frame, as clipping the coordinates gives, in colour and in grey."""
    from core.preprocess import _replicated

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (36, 64, 3), dtype=np.uint8)
    for _ in range(300):
        side, x0, y0 = int(rng.integers(1, 90)), int(rng.integers(-100, 100)), int(rng.integers(-100, 80))
        rows = np.clip(np.arange(y0, y0 + side), 0, 35)
        cols = np.clip(np.arange(x0, x0 + side), 0, 63)
        for image in (frame, frame[:, :, 0]):
            np.testing.assert_array_equal(_replicated(image, x0, y0, side), image[rows[:, None], cols[None, :]])


def test_an_i420_frame_group_gives_the_crops_its_bgr_frames_give():
    """File frames reach the detector as I420 FrameGroups: the stage converts each frame once and
    cuts the same crops (to a level or two of YUV rounding) as from the BGR frames they came from."""
    from core.messages import FrameGroup
    from detector.stage import handle

    rng = np.random.default_rng(4)
    coarse = rng.integers(0, 255, (3, 9, 16, 3), dtype=np.uint8)
    bgr = np.stack([cv2.resize(c, (320, 180), interpolation=cv2.INTER_CUBIC) for c in coarse])  # smooth frames
    i420 = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2YUV_I420)[:, :, None] for f in bgr])
    boxes = [(40, 30, 96, 96), (250, 100, 90, 90)]  # the second reaches past the right edge
    common = dict(stream="f", seq=1, frame_indices=np.arange(3), source_times=np.arange(3) / 10.0)
    geometry = CropGeometry(0.1, -0.1)
    from_i420 = handle(decode(encode(FrameGroup(images=i420, pixels="i420", **common))),
                       ScheduledDetector(PlacedFaces(boxes), every=1), geometry, io=None)
    from_bgr = handle(FrameGroup(images=bgr, **common), ScheduledDetector(PlacedFaces(boxes), every=1), geometry, io=None)
    assert [f.seq for f in from_i420] == [1, 2, 3] and all(len(f.crops) == 2 for f in from_i420)
    for a, b in zip(from_i420, from_bgr):
        np.testing.assert_array_equal(a.boxes, b.boxes)
        assert np.abs(a.crops.astype(int) - b.crops.astype(int)).max() <= 6
