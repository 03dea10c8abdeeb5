"""Face boxes labelled by hand (tests/fixtures/face_boxes.csv) against each detector: how many
labelled faces it finds (IoU 0.3 or more with the label) and how many boxes it draws on no
labelled face. The pictures are ../shared/data/images and frames of its videos (at `time_s`),
each searched whole, as a still (scaled to 1280 pixels on its longer side, as ingest does).

The labels: the three detectors' boxes drawn on every picture, every face looked at by eye, and
each face's label the mean of the boxes that sat on it (faces that no detector found would have
been drawn by hand; there were none). Seen by eye and not labelled: a head seen from behind
(megamind.avi at 5.4 s, 8.1 s).

Each picture is searched both ways: in one pass, as a video frame's full detection is, and as
a still picture is (detector/search.py: tiles at several scales, every box confirmed by a second
model). tests/test_detector.py holds the default detector's still search to every face found
and no false box.

    .venv/bin/python -m bench.photo_boxes
"""

from __future__ import annotations

import csv
import subprocess
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np

from bench.synthetic import SHARED_DATA
from core.boxes import iou_matrix
from detector.backends import make_detector
from detector.search import StillSearch

LABELS = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "face_boxes.csv"
MATCH_IOU = 0.3


def picture(file: str, time_s: str) -> np.ndarray:
    path = SHARED_DATA / file
    if not time_s:
        return cv2.imread(str(path))
    png = subprocess.run(["ffmpeg", "-v", "error", "-ss", time_s, "-i", str(path), "-frames:v", "1", "-f",
                          "image2pipe", "-vcodec", "png", "-"], capture_output=True, check=True).stdout
    return cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)


def labelled_pictures() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, picture scaled to 1280 pixels on its longer side as ingest does, labelled boxes in
    the scaled picture's pixels) for every labelled picture."""
    labels: dict[tuple[str, str], list[list[float]]] = defaultdict(list)
    with LABELS.open() as handle:
        for row in csv.DictReader(handle):
            labels[(row["file"], row["time_s"])].append([float(row[k]) for k in ("x", "y", "w", "h")])
    pictures = []
    for (file, time_s), truth in labels.items():
        image = picture(file, time_s)
        scale = min(1.0, 1280 / max(image.shape[:2]))
        if scale < 1.0:
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        pictures.append((f"{file} {time_s}".strip(), image, np.asarray(truth, np.float32) * scale))
    return pictures


def count(boxes: np.ndarray, truth: np.ndarray) -> tuple[int, int]:
    """(labelled faces found, boxes on no labelled face)."""
    if not len(boxes):
        return 0, 0
    hit = iou_matrix(truth, boxes) >= MATCH_IOU
    return int(hit.any(axis=1).sum()), int((~hit.any(axis=0)).sum())


def main() -> None:
    pictures = labelled_pictures()
    total = sum(len(truth) for _, _, truth in pictures)
    print("| detector | search | faces found | false boxes |\n|---|---|---|---|")
    for name in ("blazeface", "blazeface-full", "haar"):
        detector = make_detector(name)
        modes = {"one pass (video)": detector.detect,
                 "still (photos)": StillSearch.for_detector(name, detector)}
        for mode, detect in modes.items():
            found = false = 0
            for _name, image, truth in pictures:
                hits, wrong = count(detect(image)[0], truth)
                found, false = found + hits, false + wrong
            print(f"| {name} | {mode} | {found} of {total} | {false} |")


if __name__ == "__main__":
    main()
