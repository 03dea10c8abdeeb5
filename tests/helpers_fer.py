"""Small FER2013 data sets for tests, written on the fly from the shared images.

The shared data (../shared/data/fer2013, see its README) is read in place; tests copy a few
dozen faces into their own temporary folders and CSV, never into the repository.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest


PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_FER = PROJECT_ROOT.parent / "shared" / "data" / "fer2013"
# FER2013's label order, written out here so the tests do not take it from the code under test.
FER_ORDER = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

# Different counts per class, so any permutation of labels changes the class counts.
TRAIN_COUNTS = {"angry": 3, "disgust": 4, "fear": 5, "happy": 6, "sad": 7, "surprise": 8, "neutral": 9}
VAL_PER_CLASS = 2
PRIVATE_PER_CLASS = 1


def shared_fer() -> Path:
    """The shared FER2013 folder; fail (not skip) with a clear message when it is absent."""
    missing = [SHARED_FER / split / e for split in ("train", "val") for e in FER_ORDER
               if not (SHARED_FER / split / e).is_dir()]
    if missing:
        pytest.fail(f"FER2013 test data not found: {SHARED_FER} (missing {missing[0]}); "
                    "see ../shared/data/README.md", pytrace=False)
    return SHARED_FER


def shared_files(split: str, emotion: str, count: int, skip: int = 0) -> list[Path]:
    """The first `count` images (after `skip`) of one class of the shared data, in name order."""
    folder = shared_fer() / split / emotion
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".png", ".jpg", ".jpeg"})[skip:skip + count]
    if len(files) < count:
        pytest.fail(f"{folder}: expected at least {skip + count} images", pytrace=False)
    return files


def decode_grey(path: Path) -> np.ndarray:
    """The 48x48 grey pixels of an image file, decoded independently of the code under test."""
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert image is not None and image.shape == (48, 48), f"{path}: not a 48x48 image"
    return image


@dataclass
class Face:
    source: Path  # the shared image it came from
    emotion: str
    usage: str  # Training / PublicTest / PrivateTest
    pixels: np.ndarray  # uint8 (48, 48)

    @property
    def label(self) -> int:
        return FER_ORDER.index(self.emotion)


@dataclass
class SmallFer:
    """One tiny data set in every form users have it."""

    split_root: Path  # split_root/{train,val}/<emotion>/*
    flat_root: Path  # flat_root/<emotion>/* (the val faces)
    csv_path: Path  # emotion,pixels,Usage with Training, PublicTest and PrivateTest rows
    faces: list[Face] = field(default_factory=list)

    def by_usage(self, usage: str) -> list[Face]:
        return [f for f in self.faces if f.usage == usage]


def write_fer_csv(path: Path, rows: list[tuple[object, object, object]]) -> Path:
    """A Kaggle-style fer2013.csv: header emotion,pixels,Usage, then the rows as given."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["emotion", "pixels", "Usage"])
        writer.writerows(rows)
    return path


def pixels_text(pixels: np.ndarray) -> str:
    return " ".join(str(int(v)) for v in pixels.reshape(-1))


def build_small_fer(root: Path, train_counts: dict[str, int] | None = None) -> SmallFer:
    """Copy a few dozen shared faces into `root` as a split tree, an emotion tree and a CSV."""
    train_counts = train_counts or TRAIN_COUNTS
    data = SmallFer(root / "fer_split", root / "fer_flat", root / "fer2013.csv")
    plan = [("train", "Training", e, train_counts[e], 0) for e in FER_ORDER]
    plan += [("val", "PublicTest", e, VAL_PER_CLASS, 0) for e in FER_ORDER]
    plan += [("val", "PrivateTest", e, PRIVATE_PER_CLASS, VAL_PER_CLASS) for e in FER_ORDER]
    for split, usage, emotion, count, skip in plan:
        for src in shared_files(split, emotion, count, skip):
            face = Face(src, emotion, usage, decode_grey(src))
            data.faces.append(face)
            if usage == "PrivateTest":
                continue  # withheld from the folders, as in the shared data
            for folder in [data.split_root / split / emotion] + ([data.flat_root / emotion] if split == "val" else []):
                folder.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, folder / src.name)
    # Mixed order in the CSV, as in the Kaggle file (rows are not grouped by class).
    order = np.random.default_rng(0).permutation(len(data.faces))
    write_fer_csv(data.csv_path, [(data.faces[i].label, pixels_text(data.faces[i].pixels), data.faces[i].usage)
                                  for i in order])
    keys = [f.pixels.tobytes() for f in data.faces]
    assert len(set(keys)) == len(keys), "the picked shared faces must be distinct images"
    return data


def cli_env(cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["EMOJIMATION_CACHE"] = str(cache_dir)
    env["PYTHONPATH"] = str(PROJECT_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def cli_command(*args: object) -> list[str]:
    return [sys.executable, "-m", "emojimation", *(str(a) for a in args)]


def run_cli(*args: object, cache_dir: Path, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m emojimation ARGS` in `cwd` (a temporary folder: nothing lands in the repository)."""
    return subprocess.run(cli_command(*args), cwd=cwd, env=cli_env(cache_dir), capture_output=True,
                          text=True, timeout=timeout)


def kill_after_epoch(args: list[object], epoch: int, cache_dir: Path, cwd: Path, timeout: float = 300) -> None:
    """Run `python -m emojimation ARGS` and SIGKILL it once it reports epoch `epoch` (saved; the
    next has begun): the interrupted run that the resume tests then continue."""
    import signal
    import threading

    proc = subprocess.Popen(cli_command(*args), cwd=cwd, env=cli_env(cache_dir), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.start()
    try:
        for line in proc.stdout:
            if line.startswith(f"epoch {epoch}/"):
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait(timeout=60)
    finally:
        watchdog.cancel()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed after epoch {epoch}"
