"""Synthetic test media built from real FER2013 faces: frames and clips with known faces.

Shared by the tests and the benchmarks: a val face is enlarged, pasted into a larger
frame over a smooth textured background, and (for clips) drifts slowly while the face
image, and so the expression, changes on a known schedule.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from core.emotions import EMOTIONS

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
FER_VAL = SHARED_DATA / "fer2013" / "val"


def require_shared_data() -> Path:
    if not FER_VAL.is_dir():
        raise FileNotFoundError(f"{SHARED_DATA}: shared data folder missing (expected fer2013/val inside)")
    return SHARED_DATA


def val_faces(per_emotion: int, seed: int = 0, emotions: tuple[str, ...] = EMOTIONS) -> list[tuple[np.ndarray, int, str]]:
    """(48x48 grey face, label, file) picked at random from FER2013 val, `per_emotion` of each."""
    require_shared_data()
    rng = np.random.default_rng(seed)
    picked = []
    for emotion in emotions:
        files = sorted((FER_VAL / emotion).iterdir())
        for index in rng.choice(len(files), size=min(per_emotion, len(files)), replace=False):
            image = cv2.imread(str(files[index]), cv2.IMREAD_GRAYSCALE)
            picked.append((image, EMOTIONS.index(emotion), str(files[index])))
    return picked


def background(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth, mid-grey textured BGR background (no faces in it)."""
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1, (height // 16 + 1, width // 16 + 1)).astype(np.float32)
    smooth = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)
    grey = np.clip(110 + 25 * smooth, 0, 255).astype(np.uint8)
    return cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)


def paste(frame: np.ndarray, face: np.ndarray, x: int, y: int, size: int) -> tuple[int, int, int, int]:
    """Paste `face` enlarged to size x size at (x, y) in place; returns the placed box."""
    big = cv2.resize(face, (size, size), interpolation=cv2.INTER_CUBIC)
    frame[y:y + size, x:x + size] = cv2.cvtColor(big, cv2.COLOR_GRAY2BGR) if big.ndim == 2 else big
    return x, y, size, size


@dataclass
class ScheduledFace:
    start_s: float
    end_s: float
    face: np.ndarray
    label: int
    boxes: dict[int, tuple[int, int, int, int]] = field(default_factory=dict)  # frame -> pasted (x, y, w, h)


def compose_clip(path: Path, faces: list[np.ndarray | None], labels: list[int], seconds_per_face: float = 2.0,
                 fps: float = 10.0, size: tuple[int, int] = (640, 360), face_px: int = 160,
                 drift_px_per_s: float = 12.0, seed: int = 0) -> list[ScheduledFace]:
    """Write an H.264 MP4 where face i is shown from i*seconds_per_face, drifting slowly.

    A `None` face leaves its stretch of the clip empty (frames without faces).
    """
    width, height = size
    base = background(width, height, seed)
    frames_per_face = int(round(seconds_per_face * fps))
    schedule = []
    command = ["ffmpeg", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{width}x{height}",
               "-framerate", str(fps), "-i", "pipe:", "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "12",
               "-preset", "veryfast", str(path)]
    encoder = subprocess.Popen(command, stdin=subprocess.PIPE)
    x0, y0 = (width - face_px) // 4, (height - face_px) // 2
    span = width - face_px - x0 - 4
    frame_index = 0
    for i, (face, label) in enumerate(zip(faces, labels)):
        schedule.append(ScheduledFace(i * seconds_per_face, (i + 1) * seconds_per_face, face, label))
        for _ in range(frames_per_face):
            t = frame_index / fps
            x = x0 + int(drift_px_per_s * t) % max(1, span)
            y = y0 + int(8 * np.sin(t / 2))
            frame = base.copy()
            if face is not None:
                schedule[-1].boxes[frame_index] = paste(frame, face, x, y, face_px)
            encoder.stdin.write(frame.tobytes())
            frame_index += 1
    encoder.stdin.close()
    if encoder.wait() != 0:
        raise RuntimeError(f"ffmpeg could not write {path}")
    return schedule
