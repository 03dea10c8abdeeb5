"""Inputs to streams: probing files, frame selection, and ffmpeg argument lists (pure functions)."""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import cv2
import ffmpeg
import numpy as np
from PIL import Image, UnidentifiedImageError

from core.config import IMAGE_SUFFIXES
from core.errors import DataError

# Larger images are refused before they are decoded: a small file can declare a huge size (a
# 400 KB PNG of 20000 x 20000 decodes to 1.2 GB of BGR). 64 megapixels is above today's camera
# sensors' usual output (12-50 MP) and decodes to 192 MB.
MAX_IMAGE_PIXELS = 64_000_000

@dataclass
class MediaInfo:
    """What ingest needs to know about one input before streaming it."""

    path: str
    kind: str  # video | image
    fps: float = 0.0
    width: int = 0
    height: int = 0
    frames: int = 0  # total frames in the source (best estimate for videos)
    images: list[str] = field(default_factory=list)  # for kind image: the files, in order


def _parse_rate(rate: str) -> float:
    try:
        value = Fraction(rate)
    except (ValueError, ZeroDivisionError):
        return 0.0
    return float(value) if value > 0 else 0.0


def probe(path_text: str) -> MediaInfo:
    """Inspect an input: a video file, an image, or a folder of images. Raises DataError."""
    try:
        return _probe(Path(path_text))
    except OSError as error:  # permissions, vanished files, I/O errors
        raise DataError(f"{path_text}: cannot read ({error.strerror or error})") from None


def _rotation(stream: dict) -> int:
    """Display rotation in degrees (ffmpeg auto-rotates decoded frames by it)."""
    for side in stream.get("side_data_list", []) or []:
        if "rotation" in side:
            return int(float(side["rotation"])) % 360
    return int(float(stream.get("tags", {}).get("rotate", 0) or 0)) % 360


def _probe(path: Path) -> MediaInfo:
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        images = sorted(str(p) for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"{path}: folder holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return MediaInfo(str(path), "image", frames=len(images), images=images)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        image = read_image(str(path))
        return MediaInfo(str(path), "image", width=image.shape[1], height=image.shape[0], frames=1,
                         images=[str(path)])
    try:
        info = ffmpeg.probe(str(path), count_packets=None)
    except ffmpeg.Error as error:
        reason = (error.stderr or b"").decode(errors="replace").strip().splitlines()
        detail = reason[-1].split(": ", 1)[-1] if reason else "ffprobe failed"
        raise DataError(f"{path}: not a readable video ({detail})") from None
    streams = [s for s in info.get("streams", []) if s.get("codec_type") == "video"]
    if not streams:
        raise DataError(f"{path}: no video stream")
    stream = streams[0]
    fps = _parse_rate(stream.get("avg_frame_rate", "0/0")) or _parse_rate(stream.get("r_frame_rate", "0/0"))
    width, height = int(stream.get("width", 0)), int(stream.get("height", 0))
    if _rotation(stream) in (90, 270):  # decoded frames come out upright: portrait
        width, height = height, width
    if fps <= 0 or width <= 0 or height <= 0:
        raise DataError(f"{path}: video stream has no frame rate or size")
    frames = int(stream.get("nb_frames", 0) or 0)
    if frames <= 0:
        duration = float(stream.get("duration", 0) or info.get("format", {}).get("duration", 0) or 0)
        frames = int(round(duration * fps))
    if frames <= 0:
        raise DataError(f"{path}: video has no frames")
    return MediaInfo(str(path), "video", fps=fps, width=width, height=height, frames=frames)


def image_size(path: str, max_pixels: int = MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(width, height) from the image's header alone (Pillow reads the header, not the pixels);
    DataError in one line for an image above `max_pixels` or a header that cannot be read."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except Image.DecompressionBombError as error:  # Pillow's own guard (far above ours) also fires before decoding
        width = height = 0
        found = re.search(r"\((\d+) pixels\)", str(error))
        pixels = int(found.group(1)) if found else max_pixels + 1
    except (UnidentifiedImageError, SyntaxError, ValueError, EOFError):
        raise DataError(f"{path}: cannot decode image (corrupt or not an image)") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    else:
        pixels = width * height
    if pixels > max_pixels:
        size = f"{width}x{height} ({pixels / 1e6:,.0f} megapixels)" if width else f"{pixels / 1e6:,.0f} megapixels"
        raise DataError(f"{path}: image is {size}, above the limit of {max_pixels / 1e6:g} megapixels; "
                        "not decoded")
    return width, height


def read_image(path: str, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """The image as BGR; its size is checked from the header first (`image_size`)."""
    image_size(path, max_pixels)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DataError(f"{path}: cannot decode image (corrupt or not an image)")
    return image


def sampling_ratio(source_fps: float, fps: float | None) -> float | None:
    """Frames kept per source frame, or None for every frame."""
    if fps is None or fps >= source_fps:
        return None
    return fps / source_fps


def is_selected(index: int, ratio: float | None) -> bool:
    """Frame `index` is kept when it is the first of its 1/fps time slot.

    ffmpeg's select filter evaluates the same expression with the same doubles
    (`select_expression`), so Python knows each kept frame's source index.
    """
    if ratio is None or index == 0:
        return True
    return math.floor(index * ratio) > math.floor((index - 1) * ratio)


def select_expression(ratio: float) -> str:
    return f"eq(n,0)+gt(floor(n*{ratio!r}),floor((n-1)*{ratio!r}))"


def expected_frames(total: int, ratio: float | None) -> int:
    return sum(1 for i in range(total) if is_selected(i, ratio))


def output_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """Frame size after downscaling so the longer side is at most `max_side` (even numbers)."""
    scale = min(1.0, max_side / max(width, height)) if max_side > 0 else 1.0
    if scale >= 1.0:
        return width, height
    return max(2, int(round(width * scale / 2)) * 2), max(2, int(round(height * scale / 2)) * 2)


def frame_pixels(size: tuple[int, int]) -> str:
    """The pixel format file frames travel in: planar I420 (half BGR's bytes, and ffmpeg skips
    its slowest step, the conversion to BGR) where the size allows it (even width and height),
    else BGR. The detector converts I420 itself (core.preprocess.frame_bgr)."""
    return "i420" if size[0] % 2 == 0 and size[1] % 2 == 0 else "bgr"


def frame_shape(size: tuple[int, int], pixels: str) -> tuple[int, int, int]:
    """The array shape of one frame of `size` (width, height) in `pixels`."""
    width, height = size
    return (height * 3 // 2, width, 1) if pixels == "i420" else (height, width, 3)


def ffmpeg_video_args(path: str, ratio: float | None, size: tuple[int, int], source_size: tuple[int, int],
                      input_args: dict | None = None, pixels: str = "bgr") -> list[str]:
    """The ffmpeg command that decodes `path` to raw frames on stdout (BGR, or I420 with `pixels`)."""
    stream = ffmpeg.input(path, **(input_args or {})).video
    if ratio is not None:
        stream = stream.filter("select", select_expression(ratio))
    # Always scale to the expected size: it also pins the frame size if a stream changes
    # resolution mid-way, so every frame is exactly the bytes the reader expects.
    stream = stream.filter("scale", size[0], size[1], flags="area" if size != source_size else "bicubic")
    out = ffmpeg.output(stream, "pipe:", format="rawvideo", pix_fmt="yuv420p" if pixels == "i420" else "bgr24",
                        fps_mode="passthrough")
    return ffmpeg.compile(out.global_args("-hide_banner", "-nostdin", "-loglevel", "error", "-xerror"),
                          overwrite_output=True)
