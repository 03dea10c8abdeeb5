"""FER2013 loaders: the Kaggle CSV and image-folder trees, decoded once and cached as NumPy.

Both forms yield `FaceSet(images uint8 (N, 48, 48), labels int64 (N,))` in FER2013 label
order, with every image passed through the shared `face_input` preprocessing.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from core.config import IMAGE_SUFFIXES, cache_dir
from core.emotions import EMOTION_INDEX, EMOTIONS
from core.errors import DataError
from core.preprocess import INPUT_SIZE, face_input

CSV_USAGES = ("Training", "PublicTest", "PrivateTest")
# Folder names users have for the splits of the CSV.
SPLIT_ALIASES = {
    "train": "Training", "training": "Training",
    "val": "PublicTest", "publictest": "PublicTest",
    "test": "PrivateTest", "privatetest": "PrivateTest",
}


@dataclass(frozen=True)
class FaceSet:
    images: np.ndarray  # uint8 (N, 48, 48)
    labels: np.ndarray  # int64 (N,), FER2013 order
    source: str

    def __post_init__(self) -> None:
        if self.images.ndim != 3 or self.images.shape[1:] != (INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"images must have shape (N, 48, 48), got {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(EMOTIONS))


def _read_image(path: Path) -> np.ndarray:
    data = np.fromfile(str(path), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE) if data.size else None
    if image is None:
        raise DataError(f"{path}: cannot decode image (corrupt or not an image)")
    return face_input(image)


def _emotion_folders(root: Path, require_all: bool) -> list[tuple[int, Path]]:
    folders = []
    for child in sorted(p for p in root.iterdir() if p.is_dir()):
        name = child.name.lower()
        if name not in EMOTION_INDEX:
            raise DataError(f"{child}: not an emotion folder (expected one of {', '.join(EMOTIONS)})")
        folders.append((EMOTION_INDEX[name], child))
    found = {label for label, _ in folders}
    if not folders:
        raise DataError(f"{root}: no emotion subfolders ({', '.join(EMOTIONS)})")
    missing = [EMOTIONS[i] for i in range(len(EMOTIONS)) if i not in found]
    if require_all and missing:
        raise DataError(f"{root}: missing emotion folders: {', '.join(missing)}")
    return folders


def _folder_listing(root: Path, require_all: bool) -> list[tuple[Path, int]]:
    listing: list[tuple[Path, int]] = []
    for label, folder in _emotion_folders(root, require_all):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"{folder}: empty class (no .jpg/.png images)")
        listing += [(p, label) for p in files]
    return listing


def _cached(key_parts: list[str], build) -> tuple[np.ndarray, np.ndarray]:
    """Decode once: later loads of unchanged data read one .npz from the cache."""
    key = hashlib.sha256("\n".join(key_parts).encode()).hexdigest()[:20]
    path = cache_dir() / f"faces-{key}.npz"
    if path.exists():
        with np.load(path) as cached:
            return cached["images"], cached["labels"]
    images, labels = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, images=images, labels=labels)
    os.replace(tmp, path)
    return images, labels


def load_folder(root: str | Path, require_all: bool = True, use_cache: bool = True) -> FaceSet:
    """Faces from `root/<emotion>/*` (labels from folder names, mapped to FER2013 order)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    listing = _folder_listing(root, require_all)

    def build() -> tuple[np.ndarray, np.ndarray]:
        images = np.stack([_read_image(p) for p, _ in listing])
        labels = np.array([label for _, label in listing], dtype=np.int64)
        return images, labels

    if not use_cache:
        images, labels = build()
    else:
        stats = [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p, _ in listing]
        images, labels = _cached([str(root.resolve()), *stats], build)
    return FaceSet(images, labels, str(root))


def load_csv(path: str | Path, usage: str | None = None) -> FaceSet:
    """Faces from the Kaggle `fer2013.csv` (`emotion,pixels,Usage`), optionally one Usage only."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    images: list[np.ndarray] = []
    labels: list[int] = []
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip().lower() for h in header[:2]] != ["emotion", "pixels"]:
            raise DataError(f"{path}: not a FER2013 CSV (expected header emotion,pixels,Usage)")
        for line_no, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) < 2:
                raise DataError(f"{path} line {line_no}: malformed row (expected emotion,pixels,Usage)")
            row_usage = row[2].strip() if len(row) > 2 else ""
            if usage is not None and row_usage != usage:
                continue
            try:
                label = int(row[0])
                pixels = np.array(row[1].split(), dtype=np.int64)
            except ValueError:
                raise DataError(f"{path} line {line_no}: malformed row (non-numeric emotion or pixels)") from None
            if not 0 <= label < len(EMOTIONS):
                raise DataError(f"{path} line {line_no}: emotion {label} is not in 0..6")
            if pixels.size != INPUT_SIZE * INPUT_SIZE or pixels.min() < 0 or pixels.max() > 255:
                raise DataError(
                    f"{path} line {line_no}: malformed row (expected 2304 pixels in 0..255, got {pixels.size})"
                )
            images.append(face_input(pixels.astype(np.uint8).reshape(INPUT_SIZE, INPUT_SIZE)))
            labels.append(label)
    if not images:
        which = f" with Usage {usage}" if usage else ""
        raise DataError(f"{path}: no rows{which}")
    return FaceSet(np.stack(images), np.array(labels, dtype=np.int64), f"{path}:{usage or 'all'}")


def load_faces(path: str | Path, split: str | None = None, require_all: bool = False) -> FaceSet:
    """Faces from a CSV, a split root (`root/<split>/<emotion>`) or an emotion-folder root.

    For a CSV, `split` is a Usage (Training, PublicTest, PrivateTest) or an alias (train,
    val, test). For a folder, `split` names the subfolder when the root holds splits.
    """
    path = Path(path)
    if path.suffix.lower() == ".csv" or path.is_file():
        usage = SPLIT_ALIASES.get(split.lower(), split) if split else None
        if usage is not None and usage not in CSV_USAGES:
            raise DataError(f"{path}: unknown split {split!r} (use one of {', '.join(CSV_USAGES)})")
        return load_csv(path, usage)
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder")
    subfolders = {p.name.lower() for p in path.iterdir() if p.is_dir()}
    if subfolders and subfolders <= set(EMOTION_INDEX):
        return load_folder(path, require_all=require_all)
    if split is None:
        raise DataError(f"{path}: holds splits ({', '.join(sorted(subfolders))}); choose one with --split")
    split_dir = path / split
    if not split_dir.is_dir():
        raise DataError(f"{path}: no split folder {split!r} (found: {', '.join(sorted(subfolders)) or 'none'})")
    return load_folder(split_dir, require_all=require_all)


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, holdout_idx): the same fraction of every class, chosen by `seed`."""
    rng = np.random.default_rng(seed)
    holdout: list[np.ndarray] = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        rng.shuffle(idx)
        holdout.append(idx[: max(1, int(round(len(idx) * fraction)))])
    held = np.sort(np.concatenate(holdout))
    mask = np.ones(len(labels), dtype=bool)
    mask[held] = False
    return np.flatnonzero(mask), held
