"""Training pairs that teach the model to answer the same on a detector's crop as on the face itself.

Why: FER2013 faces are tight crops made by some other detector. Our detectors frame a face a
little differently (Haar's box size is off by about 19 % per face, docs/preprocessing.md), and
the same face pasted into a video frame and cut out again is also resampled. The model trained
only on the original crops changed its answer on 19 % of such crops (models/README.md).

For each training face this module pastes the face, enlarged, into a synthetic frame, runs each
detector it is given on the frame, and cuts the detector's crop with the shared preprocessing
function and that detector's crop geometry: exactly what the pipeline will feed the model.
Faces a detector misses get a crop from a randomly mis-sized and shifted box instead, so every
face has a pair.

Detectors are passed in as callables (this package imports only the core): the CLI wires in
the detector stage's backends (`emojimation finetune`).

The backgrounds: half the frames get a real picture's (a random window of a photo or a video
frame, handed in as `backgrounds`), the others flat, gradient and noisy fields at random
levels, unlike the test clips' (bench/synthetic.py), so the fine-tune cannot learn one
background. The pasted face is also lit anew (a gain and a gradient in a random direction):
the same face in a shadow or beside a window should get the same answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from core.boxes import iou_matrix
from core.preprocess import DETECTOR_CROPS, INPUT_SIZE, face_input


# (grey frame, smallest face side worth searching) -> boxes (N, 4) x, y, w, h
DetectFn = Callable[[np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class RenderSettings:
    face_px: tuple[int, int] = (64, 224)  # enlarged face side, uniform
    jpeg_quality: tuple[int, int] = (45, 95)  # a codec's blocking and blur
    jitter_scale_sd: float = 0.12  # for missed faces: log-normal box scale (Haar's found boxes spread ~0.15-0.19)
    jitter_shift_sd: float = 0.05  # and a centre shift, fraction of the side
    real_backgrounds: float = 0.5  # share of frames on a real picture's background (when some are given)
    light_gain: tuple[float, float] = (0.6, 1.3)  # the face's brightness, times
    light_gradient: float = 0.4  # brighter by up to this at an edge's middle than at the centre (x1.4 at a corner)


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A random flat, gradient or blotchy grey field with sensor-like noise."""
    kind = rng.integers(3)
    level = rng.uniform(40, 215)
    if kind == 0:  # flat
        field = np.full((height, width), level, np.float32)
    elif kind == 1:  # linear gradient in a random direction
        angle = rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        ramp = (np.cos(angle) * xx + np.sin(angle) * yy) / max(width, height)
        field = level + rng.uniform(-80, 80) * ramp
    else:  # blobs at a random scale
        cell = int(rng.integers(4, 40))
        noise = rng.normal(0, 1, (height // cell + 2, width // cell + 2)).astype(np.float32)
        field = level + rng.uniform(10, 50) * cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    field += rng.normal(0, rng.uniform(0, 6), field.shape).astype(np.float32)
    return np.clip(field, 0, 255).astype(np.uint8)


def _real_background(rng: np.random.Generator, picture: np.ndarray, width: int, height: int) -> np.ndarray:
    """A random window of a real grey picture, scaled to (width, height)."""
    scale = rng.uniform(0.3, 1.0) * min(picture.shape[1] / width, picture.shape[0] / height)
    w, h = max(1, int(width * scale)), max(1, int(height * scale))
    x, y = int(rng.integers(0, picture.shape[1] - w + 1)), int(rng.integers(0, picture.shape[0] - h + 1))
    window = picture[y:y + h, x:x + w]
    return cv2.resize(window, (width, height), interpolation=cv2.INTER_AREA if scale > 1 else cv2.INTER_LINEAR)


def relight(face: np.ndarray, rng: np.random.Generator, settings: RenderSettings) -> np.ndarray:
    """`face` (grey) under other light: a gain, and a gradient across it in a random direction."""
    height, width = face.shape[:2]
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = (np.cos(angle) * (xx / width - 0.5) + np.sin(angle) * (yy / height - 0.5)) * 2.0  # +-1 at the edges' middles
    light = rng.uniform(*settings.light_gain) * (1.0 + rng.uniform(-1, 1) * settings.light_gradient * ramp)
    return np.clip(face.astype(np.float32) * light, 0, 255).astype(np.uint8)


def render(face: np.ndarray, rng: np.random.Generator, settings: RenderSettings,
           backgrounds: list[np.ndarray] | None = None) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """A grey frame with `face` pasted, enlarged and lit anew, at a random place; and the pasted box."""
    size = int(rng.integers(settings.face_px[0], settings.face_px[1] + 1))
    width = int(size * rng.uniform(1.5, 2.6))
    height = int(size * rng.uniform(1.25, 1.9))
    if backgrounds and rng.random() < settings.real_backgrounds:
        frame = _real_background(rng, backgrounds[int(rng.integers(len(backgrounds)))], width, height)
    else:
        frame = _background(rng, width, height)
    x, y = int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1))
    interpolation = cv2.INTER_CUBIC if rng.random() < 0.5 else cv2.INTER_LINEAR
    frame[y:y + size, x:x + size] = relight(cv2.resize(face, (size, size), interpolation=interpolation), rng, settings)
    quality = int(rng.integers(settings.jpeg_quality[0], settings.jpeg_quality[1] + 1))
    ok, encoded = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if ok:
        frame = cv2.imdecode(encoded, cv2.IMREAD_GRAYSCALE)
    return frame, (x, y, size, size)


def matching_box(boxes: np.ndarray, pasted: tuple[int, int, int, int]) -> np.ndarray | None:
    """The detector's box for the pasted face: best overlap, centre inside the face.

    The bar is low on purpose (IoU 0.15): a box on part of the face is still the box the
    pipeline would crop, and the model should answer from it as from the whole face. Boxes
    smaller than about 0.39 of the face's side fall below it (and `emojimation finetune` does not
    search Haar below 0.35), so the smallest part-face boxes the pipeline meets are not trained
    on: the face gets a jittered whole-face box instead.
    """
    if len(boxes) == 0:
        return None
    ious = iou_matrix(boxes, np.asarray(pasted, np.float32))[:, 0]
    best = int(ious.argmax())
    x, y, side = pasted[0], pasted[1], pasted[2]
    cx, cy = boxes[best, 0] + boxes[best, 2] / 2, boxes[best, 1] + boxes[best, 3] / 2
    if ious[best] < 0.15 or not (x <= cx <= x + side and y <= cy <= y + side):
        return None
    return boxes[best]


def jittered_box(pasted: tuple[int, int, int, int], rng: np.random.Generator, settings: RenderSettings) -> np.ndarray:
    """A stand-in detector box for a missed face: the pasted square, mis-sized and shifted at random."""
    x, y, side, _ = pasted
    new_side = side * float(np.exp(rng.normal(0, settings.jitter_scale_sd)))
    cx = x + side / 2 + rng.normal(0, settings.jitter_shift_sd) * side
    cy = y + side / 2 + rng.normal(0, settings.jitter_shift_sd) * side
    return np.array([cx - new_side / 2, cy - new_side / 2, new_side, new_side], np.float32)


def make_pairs(faces: np.ndarray, detectors: dict[str, DetectFn], renders: int, seed: int,
               settings: RenderSettings = RenderSettings(), progress: Callable[[int], None] | None = None,
               backgrounds: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """For every face, `renders` frames; per frame and detector one crop (or a jittered one if missed).
    `backgrounds`: real grey pictures for `settings.real_backgrounds` of the frames.

    Returns arrays: `index` (into faces), `detector` (position in `names`), `found` (bool),
    `crops` uint8 (N, 48, 48) and `names`.
    """
    rng = np.random.default_rng(seed)
    names = list(detectors)
    index, detector, found, crops = [], [], [], []
    for i, face in enumerate(faces):
        for _ in range(renders):
            frame, pasted = render(face, rng, settings, backgrounds)
            for d, name in enumerate(names):
                box = matching_box(detectors[name](frame, max(16, int(pasted[2] * 0.35))), pasted)
                hit = box is not None
                if not hit:
                    box = jittered_box(pasted, rng, settings)
                geometry = DETECTOR_CROPS[name]
                crops.append(face_input(frame, tuple(float(v) for v in box), geometry.margin, geometry.shift_y))
                index.append(i)
                detector.append(d)
                found.append(hit)
        if progress:
            progress(i + 1)
    return {
        "index": np.asarray(index, np.int64), "detector": np.asarray(detector, np.int8),
        "found": np.asarray(found, bool),
        "crops": np.stack(crops) if crops else np.zeros((0, INPUT_SIZE, INPUT_SIZE), np.uint8),
        "names": np.asarray(names),
    }


def save_pairs(path: Path, pairs: dict[str, np.ndarray], **meta: object) -> None:
    """Write atomically; `meta` values are stored as `meta_<name>` arrays."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, **pairs, **{f"meta_{k}": np.asarray(v) for k, v in meta.items()})
    os.replace(tmp, path)


def load_pairs(path: Path) -> dict[str, np.ndarray]:
    """The arrays `make_pairs` returned, plus any `meta_<name>` saved with them."""
    with np.load(path) as data:
        return {k: data[k] for k in data.files}
