"""`emojimation finetune`: wires the detector stage's backends into training's detector-crop fine-tune.

It sits on top, beside `analysis` and `monitor`: `training/` imports only the core, so the
detectors are handed to it as plain callables. The crops are made once, in one process per
core (at most 2), and cached under the user's cache folder. They depend on the data, the
detectors and their crop geometry, the renders per face, the seed and the number of processes
(process k renders its share of the faces with seed + k), so all of these are in the cache
file's name.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
from pathlib import Path

import cv2
import numpy as np


def _detector_callables(names: list[str]):
    from detector.backends import BlazeFaceDetector, HaarDetector, make_detector

    made = {}
    for name in names:
        backend = make_detector(name)
        if isinstance(backend, HaarDetector):
            def detect(grey, min_face, backend=backend):
                # Searching below a third of the face's size only adds cost: the box the
                # pipeline would crop comes from the face's own scale.
                backend.min_face = min_face
                return backend.detect(grey)[0]
        elif isinstance(backend, BlazeFaceDetector):
            def detect(grey, min_face, backend=backend):
                return backend.detect(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))[0]
        else:  # pragma: no cover - every backend is one of the two
            raise TypeError(name)
        made[name] = detect
    return made


_counter = None  # faces done, shared with the parent for its progress bar


def _init_worker(counter) -> None:
    global _counter
    _counter = counter


BACKGROUND_MAX_SIDE = 640  # real backgrounds are windows scaled to a few hundred pixels anyway
VIDEO_BACKGROUND_EVERY_S = 2.0
VIDEO_BACKGROUNDS_MAX = 30  # frames per video


def load_backgrounds(paths: list[Path], required: bool) -> list[np.ndarray]:
    """Grey pictures from photo files, video files (a frame every 2 s) and folders of them.
    A missing path is an error when `required` (the user named it), else skipped."""
    from core.errors import ConfigError

    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.is_file())
        elif path.is_file():
            files.append(path)
        elif required:
            raise ConfigError(f"{path}: no such background picture, video or folder")
    pictures = []
    for file in files:
        image = cv2.imread(str(file), cv2.IMREAD_GRAYSCALE)
        if image is not None:
            pictures.append(image)
            continue
        video = cv2.VideoCapture(str(file))
        fps = video.get(cv2.CAP_PROP_FPS) or 25.0
        step = max(1, int(round(fps * VIDEO_BACKGROUND_EVERY_S)))
        index = 0
        while len(pictures) < 10_000:
            ok, frame = video.read()
            if not ok or index // step >= VIDEO_BACKGROUNDS_MAX:
                break
            if index % step == 0:
                pictures.append(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY))
            index += 1
        video.release()
    scaled = []
    for picture in pictures:
        factor = BACKGROUND_MAX_SIDE / max(picture.shape[:2])
        scaled.append(cv2.resize(picture, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
                      if factor < 1 else picture)
    return scaled


def _worker(args: tuple) -> dict[str, np.ndarray]:
    """One process's share of the faces, with its own detectors (interpreters are not shared)."""
    faces, names, renders, seed, backgrounds = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cv2.setNumThreads(1)
    from training.detector_crops import make_pairs

    def progress(done: int) -> None:
        with _counter.get_lock():
            _counter.value += 1

    return make_pairs(faces, _detector_callables(names), renders, seed, progress=progress, backgrounds=backgrounds)


def build_pairs(faces: np.ndarray, names: list[str], renders: int, seed: int, processes: int,
                backgrounds: list[np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Pairs for every face, made in `processes` processes (each with its own detectors)."""
    from tqdm import tqdm

    chunks = np.array_split(np.arange(len(faces)), max(1, processes))
    # Spawned, not forked: a fork of a process whose threads hold locks (TensorFlow's, or a
    # caller's) can hang the child; it did in the test suite.
    context = multiprocessing.get_context("spawn")
    counter = context.Value("i", 0)
    with context.Pool(len(chunks), initializer=_init_worker, initargs=(counter,)) as pool:
        pending = pool.map_async(_worker, [(faces[c], names, renders, seed + k, backgrounds)
                                           for k, c in enumerate(chunks)])
        with tqdm(total=len(faces), desc="detector crops", unit="face", file=sys.stderr) as bar:
            while not pending.ready():
                pending.wait(1.0)
                bar.update(counter.value - bar.n)
            bar.update(counter.value - bar.n)
        parts = pending.get()
    offsets = np.cumsum([0] + [len(c) for c in chunks[:-1]])
    return {
        "index": np.concatenate([p["index"] + o for p, o in zip(parts, offsets)]),
        "detector": np.concatenate([p["detector"] for p in parts]),
        "found": np.concatenate([p["found"] for p in parts]),
        "crops": np.concatenate([p["crops"] for p in parts]),
        "names": parts[0]["names"],
    }


def prepare_pairs(data: Path, split: str, names: list[str], renders: int, seed: int, processes: int = 2,
                  backgrounds: list[np.ndarray] | None = None) -> Path:
    """The cached pairs file for these settings, made if missing.

    The file's name carries every input of the crops; the data and the backgrounds enter as a
    hash of their pixels, so an edited data folder gets new crops, and the detectors' crop
    geometry (core.preprocess.DETECTOR_CROPS) as a hash too, so a new margin gets new crops.
    ("v2": renders on real backgrounds, relit.)
    """
    from core.config import cache_dir
    from core.preprocess import DETECTOR_CROPS
    from training.data import load_faces
    from training.detector_crops import save_pairs

    faces = load_faces(data, split, require_all=True)
    data_key = hashlib.sha256(faces.images.tobytes() + faces.labels.tobytes()).hexdigest()[:10]
    background_hash = hashlib.sha256()
    for picture in backgrounds or []:
        background_hash.update(picture.tobytes())
    geometry_key = hashlib.sha256(repr([DETECTOR_CROPS[name] for name in names]).encode()).hexdigest()[:8]
    cache = cache_dir() / (f"detector-crops-v2-{'-'.join(names)}-r{renders}-s{seed}-p{processes}-{split}"
                           f"-{data_key}-bg{background_hash.hexdigest()[:8]}-g{geometry_key}.npz")
    if cache.exists():
        return cache
    pairs = build_pairs(faces.images, names, renders, seed, processes, backgrounds)
    for d, name in enumerate(pairs["names"]):
        hit = pairs["found"][pairs["detector"] == d]
        print(f"{name}: found {hit.mean():.1%} of {len(hit)} pasted faces", file=sys.stderr, flush=True)
    save_pairs(cache, pairs, data=str(data), split=split, renders=renders, seed=seed, faces=len(faces),
               processes=processes, backgrounds=len(backgrounds or []))
    return cache


def finetune_command(config) -> int:
    """Make (or reuse) the detector crops, then fine-tune: `emojimation finetune`."""
    from training.finetune import run

    if config.pairs is None:
        from core.config import FinetuneConfig

        named = [Path(p) for p in config.backgrounds] != FinetuneConfig().backgrounds  # the user's own: must exist
        backgrounds = load_backgrounds(list(config.backgrounds), required=named)
        print(f"render backgrounds: {len(backgrounds)} real pictures (and synthetic fields)", file=sys.stderr)
        config.pairs = prepare_pairs(Path(config.data), config.split, list(config.detectors), config.renders,
                                     config.seed, processes=max(1, min(2, os.cpu_count() or 1)),
                                     backgrounds=backgrounds)
    run(config)
    return 0
