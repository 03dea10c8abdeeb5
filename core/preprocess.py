"""The one face preprocessing function, shared by training, evaluation and the pipeline.

It owns the crop geometry: a detector's box is widened by a margin, squared around its
centre, cut from the frame (padding with edge pixels where the square leaves the frame),
converted to grey and resized to the model's 48x48 input. FER2013 images are already tight
48x48 grey crops, so training passes them with no box and they go through the same
grey/resize steps unchanged.

The crop geometry per detector was chosen by measurement (docs/preprocessing.md): FER2013
faces are tight crops, and each detector frames a face differently.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

INPUT_SIZE = 48


@dataclass(frozen=True)
class CropGeometry:
    """How a detector's box becomes a FER2013-like crop.

    margin: fraction of the box side added (positive) or removed (negative) on each side.
    shift_y: the crop centre moves by this fraction of the box height (negative = up).
    """

    margin: float = 0.0
    shift_y: float = 0.0


# Measured per detector on FER2013 val faces pasted into larger frames (bench/measure_margin.py,
# docs/preprocessing.md): Haar boxes match FER2013's tight crops; BlazeFace boxes are tighter
# and sit lower (eyes to mouth), so their crops grow and move up. BlazeFace's margin is 0.05
# since 2026-12-02: on twelve composed clips through the whole pipeline (bench/agreement.py,
# 479 segments) its crops agreed with the face alone on 14 more segments than at 0.1.
DETECTOR_CROPS: dict[str, CropGeometry] = {
    "haar": CropGeometry(margin=0.0, shift_y=0.0),
    "blazeface": CropGeometry(margin=0.05, shift_y=-0.1),
    "blazeface-full": CropGeometry(margin=0.05, shift_y=-0.05),
}
DEFAULT_MARGIN = 0.0


PIXEL_FORMATS = ("bgr", "i420")


def frame_bgr(image: np.ndarray, pixels: str = "bgr") -> np.ndarray:
    """A frame's picture as BGR. "i420" pictures (planar YUV 4:2:0 as ffmpeg's yuv420p: the Y plane,
    then the U and V planes, as one (height * 3/2, width, 1) array) are converted here, once per frame:
    0.35 ms at 1280x720, where ffmpeg's own conversion cost 1.5 ms and twice the bytes on the wire.
    OpenCV converts with BT.601's matrix, as ffmpeg does for standard-definition video; for a clip
    flagged BT.709 (HD) ffmpeg's grey differs by about one level in 255 (measured: mean 1.3, at
    most 3, on WolfgangLanger_Pexels.mp4), far below what the model distinguishes."""
    if pixels == "bgr":
        return image
    return cv2.cvtColor(image.reshape(image.shape[0], image.shape[1]), cv2.COLOR_YUV2BGR_I420)


def to_grey(image: np.ndarray) -> np.ndarray:
    """Grey uint8 image from grey, BGR or BGRA input."""
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2GRAY)
    raise ValueError(f"expected a grey, BGR or BGRA image, got shape {image.shape}")


def square_box(
    box: tuple[float, float, float, float], margin: float = DEFAULT_MARGIN, shift_y: float = 0.0
) -> tuple[int, int, int]:
    """(x, y, side) of the square crop for a detector box (x, y, w, h) in frame pixels."""
    x, y, w, h = box
    side = max(w, h) * (1.0 + 2.0 * margin)
    cx, cy = x + w / 2.0, y + h / 2.0 + shift_y * h
    side_px = max(1, int(round(side)))
    return int(round(cx - side / 2.0)), int(round(cy - side / 2.0)), side_px


def _replicated(image: np.ndarray, x0: int, y0: int, side: int) -> np.ndarray:
    """The square (x0, y0, side) of `image`, edge pixels repeated where it reaches outside.
    OpenCV pads the part inside the picture (0.02 ms for a 250-pixel square at a frame's edge,
    against 0.76 ms for the index arrays below, which serve only a square wholly outside it)."""
    height, width = image.shape[:2]
    left, top, right, bottom = max(0, x0), max(0, y0), min(width, x0 + side), min(height, y0 + side)
    if right > left and bottom > top:
        return cv2.copyMakeBorder(image[top:bottom, left:right], top - y0, y0 + side - bottom, left - x0,
                                  x0 + side - right, cv2.BORDER_REPLICATE)
    rows = np.clip(np.arange(y0, y0 + side), 0, height - 1)
    cols = np.clip(np.arange(x0, x0 + side), 0, width - 1)
    return image[rows[:, None], cols[None, :]]


def face_input(
    image: np.ndarray,
    box: tuple[float, float, float, float] | None = None,
    margin: float = DEFAULT_MARGIN,
    shift_y: float = 0.0,
) -> np.ndarray:
    """Model input (48, 48) uint8 grey for a face.

    `image` is a whole frame (with `box` = the detector's x, y, w, h) or an already cropped
    face (`box=None`, as FER2013 images are). Returning uint8 keeps crops compact on the wire;
    the model itself rescales to [0, 1].
    """
    if box is not None:
        # Cut first, then grey: the same pixels as greying the whole frame (a per-pixel
        # conversion; edge pixels are repeated past the frame's edge either way) at a fraction of the cost.
        x0, y0, side = square_box(box, margin, shift_y)
        height, width = image.shape[:2]
        if x0 >= 0 and y0 >= 0 and x0 + side <= width and y0 + side <= height:
            image = image[y0:y0 + side, x0:x0 + side]
        else:
            image = _replicated(image, x0, y0, side)
    grey = to_grey(image)
    if grey.shape != (INPUT_SIZE, INPUT_SIZE):
        shrinking = grey.shape[0] > INPUT_SIZE
        grey = cv2.resize(
            grey,
            (INPUT_SIZE, INPUT_SIZE),
            interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR,
        )
    return np.ascontiguousarray(grey, dtype=np.uint8)
