"""Every face in a photo: group photos composed from the project's real faces, searched by each
detector as the video pipeline does (one pass) and as still pictures are (detector/search.py).

The faces are the hand-labelled ones of tests/fixtures/face_boxes.csv (real photos and video
frames), each cut with its head and some surroundings (1.8 times the labelled box). A group photo
is a real picture's background (one of the shared photos, enlarged and blurred so that no face in
it can be found) with 4 to 9 of those faces pasted at random sizes (the face's box 16 to 220
pixels wide in a 1280-pixel picture, log-uniform), some of them cut by the picture's edge (a
quarter to a half of the face outside), every fourth photo black-and-white. Its labels are the
pasted faces' boxes, so a found face is a box with IoU 0.3 or more with one (with the part
inside the picture, for cut faces), and a false box overlaps none.

    .venv/bin/python -m bench.group_photos [--photos 40] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections import defaultdict

import cv2
import numpy as np

from bench.bench_worker_start import cpu_model, vector_flags
from bench.photo_boxes import LABELS, picture
from core.boxes import iou_matrix
from core.preprocess import _replicated
from detector.backends import make_detector
from detector.search import StillSearch

MATCH_IOU = 0.3
CONTEXT = 1.8  # the cut-out face's side, in labelled-box sides
SIZE_BUCKETS = [(0, 24), (24, 40), (40, 80), (80, 10_000)]


def real_faces() -> list[tuple[np.ndarray, float]]:
    """(cut-out BGR face with surroundings, labelled-box side as a fraction of the cut-out)."""
    import csv

    faces = []
    with LABELS.open() as handle:
        rows = list(csv.DictReader(handle))
    pictures: dict[tuple[str, str], np.ndarray] = {}
    for row in rows:
        key = (row["file"], row["time_s"])
        if key not in pictures:
            pictures[key] = picture(*key)
        image = pictures[key]
        x, y, w, h = (float(row[k]) for k in ("x", "y", "w", "h"))
        side = int(round(CONTEXT * max(w, h)))
        x0, y0 = int(round(x + w / 2 - side / 2)), int(round(y + h / 2 - side / 2))
        faces.append((_replicated(image, x0, y0, side), max(w, h) / side))  # face_input's own padding
    return faces


def backgrounds() -> list[np.ndarray]:
    """Blurred, enlarged real photos: textures and light of real pictures with no findable face."""
    out = []
    for name in ("images/couple.jpg", "images/img3.jpg", "images/img11.jpg"):
        image = picture(name, "")
        out.append(cv2.GaussianBlur(image, (0, 0), sigmaX=max(image.shape[:2]) / 40))
    return out


def compose(rng: np.random.Generator, faces: list[tuple[np.ndarray, float]], scenes: list[np.ndarray],
            width: int = 1280, height: int = 960) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One group photo: the picture, its faces' boxes (x, y, w, h; may reach outside) and whether each is cut."""
    scene = scenes[int(rng.integers(len(scenes)))]
    canvas = cv2.resize(scene, (width, height), interpolation=cv2.INTER_LINEAR)
    boxes, cut = [], []
    occupied = np.zeros((height, width), bool)
    for _ in range(int(rng.integers(4, 10))):
        patch, face_fraction = faces[int(rng.integers(len(faces)))]
        face_side = float(np.exp(rng.uniform(np.log(16), np.log(220))))
        side = int(round(face_side / face_fraction))
        edge_cut = rng.random() < 0.2
        for _attempt in range(30):
            if edge_cut:  # a quarter to a half of the face outside one edge
                outside = rng.uniform(0.25, 0.5) * face_side + (side - face_side) / 2
                edge = int(rng.integers(4))
                x0 = int(rng.integers(0, max(1, width - side)))
                y0 = int(rng.integers(0, max(1, height - side)))
                if edge == 0:
                    x0 = int(-outside)
                elif edge == 1:
                    x0 = int(width - side + outside)
                elif edge == 2:
                    y0 = int(-outside)
                else:
                    y0 = int(height - side + outside)
            else:
                x0 = int(rng.integers(0, max(1, width - side)))
                y0 = int(rng.integers(0, max(1, height - side)))
            region = occupied[max(0, y0):max(0, y0 + side), max(0, x0):max(0, x0 + side)]
            if not region.any():
                break
        else:
            continue
        scaled = cv2.resize(patch, (side, side), interpolation=cv2.INTER_AREA if side < len(patch) else cv2.INTER_LINEAR)
        top, left = max(0, y0), max(0, x0)
        bottom, right = min(height, y0 + side), min(width, x0 + side)
        canvas[top:bottom, left:right] = scaled[top - y0:bottom - y0, left - x0:right - x0]
        occupied[top:bottom, left:right] = True
        offset = (side - face_side) / 2
        boxes.append((x0 + offset, y0 + offset, face_side, face_side))
        cut.append(edge_cut)
    if rng.random() < 0.25:
        canvas = cv2.cvtColor(cv2.cvtColor(canvas, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    return canvas, np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(cut, bool)


def visible(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """The parts of the boxes inside the picture."""
    x0 = np.clip(boxes[:, 0], 0, width)
    y0 = np.clip(boxes[:, 1], 0, height)
    x1 = np.clip(boxes[:, 0] + boxes[:, 2], 0, width)
    y1 = np.clip(boxes[:, 1] + boxes[:, 3], 0, height)
    return np.stack([x0, y0, x1 - x0, y1 - y0], axis=1)


def score(found: np.ndarray, truth: np.ndarray, width: int, height: int) -> tuple[np.ndarray, int]:
    """Which true faces were found, and how many boxes sit on no true face."""
    if not len(found):
        return np.zeros(len(truth), bool), 0
    overlap = np.maximum(iou_matrix(truth, found), iou_matrix(visible(truth, width, height), found))
    hit = overlap >= MATCH_IOU
    return hit.any(axis=1), int((~hit.any(axis=0)).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detectors", nargs="+", default=["blazeface", "blazeface-full", "haar"])
    parser.add_argument("--save", help="write the composed photos (with their labels drawn) to this folder")
    args = parser.parse_args()
    faces, scenes = real_faces(), backgrounds()
    rng = np.random.default_rng(args.seed)
    photos = [compose(rng, faces, scenes) for _ in range(args.photos)]
    if args.save:
        from pathlib import Path

        Path(args.save).mkdir(parents=True, exist_ok=True)
        for i, (image, truth, _cut) in enumerate(photos):
            drawn = image.copy()
            for x, y, w, h in truth.astype(int):
                cv2.rectangle(drawn, (x, y), (x + w, y + h), (0, 255, 0), 1)
            cv2.imwrite(f"{args.save}/photo{i:02d}.jpg", drawn)
    report = {"cpu": cpu_model(), "vector_flags": vector_flags(), "python": platform.python_version(),
              "photos": len(photos), "faces": int(sum(len(t) for _, t, _ in photos)),
              "cut_faces": int(sum(c.sum() for _, _, c in photos)), "results": {}}
    for name in args.detectors:
        detector = make_detector(name)
        modes = {"one pass (video)": detector.detect,
                 "still search": StillSearch.for_detector(name, detector)}
        for mode, detect in modes.items():
            hits_by_size: dict[str, list[bool]] = defaultdict(list)
            cut_hits, false, seconds = [], 0, []
            for image, truth, cut in photos:
                started = time.perf_counter()
                boxes, _scores = detect(image)
                seconds.append(time.perf_counter() - started)
                hit, wrong = score(boxes, truth, image.shape[1], image.shape[0])
                false += wrong
                for side, h, c in zip(truth[:, 2], hit, cut):
                    if c:
                        cut_hits.append(bool(h))
                        continue
                    low, high = next(b for b in SIZE_BUCKETS if b[0] <= side < b[1])
                    hits_by_size[f"{low}-{high if high < 10_000 else ''} px"].append(bool(h))
            everything = [h for hs in hits_by_size.values() for h in hs] + cut_hits
            report["results"][f"{name}, {mode}"] = {
                "found": f"{sum(everything)} of {len(everything)}",
                "by_size": {k: f"{sum(v)} of {len(v)}" for k, v in sorted(hits_by_size.items(),
                                                                       key=lambda kv: int(kv[0].split('-')[0]))},
                "cut_by_edge": f"{sum(cut_hits)} of {len(cut_hits)}",
                "false_boxes": false,
                "ms_per_photo_median": round(1000 * float(np.median(seconds)), 1),
            }
            print(json.dumps({f"{name}, {mode}": report["results"][f"{name}, {mode}"]}), flush=True)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
