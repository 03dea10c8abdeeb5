"""Face detectors on ../shared/data: speed, faces per frame, real photos, pasted FER2013 faces.

    .venv/bin/python -m bench.bench_detectors
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import cv2
import numpy as np

from bench.synthetic import SHARED_DATA, background, paste, val_faces
from detector.backends import make_detector
from core.config import DETECTORS


def megamind_frames() -> list[np.ndarray]:
    capture = cv2.VideoCapture(str(SHARED_DATA / "videos" / "megamind.avi"))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pasted-per-emotion", type=int, default=30)
    args = parser.parse_args()
    frames = megamind_frames()
    frames_720p = [cv2.resize(f, (1280, 720)) for f in frames[::10]]
    photos = {p.name: cv2.imread(str(p)) for p in sorted((SHARED_DATA / "images").glob("*.jpg"))}
    rng = np.random.default_rng(2)
    pasted = []
    for face, _, _ in val_faces(args.pasted_per_emotion, seed=2):
        frame = background(640, 360, int(rng.integers(1 << 30)))
        size = int(rng.integers(100, 220))
        box = paste(frame, face, int(rng.integers(0, 640 - size)), int(rng.integers(0, 360 - size)), size)
        pasted.append((frame, box))
    report = {}
    for name in DETECTORS:
        detector = make_detector(name)
        timings, counts = [], []
        for frame in frames:
            started = time.perf_counter()
            boxes, _ = detector.detect(frame)
            timings.append(time.perf_counter() - started)
            counts.append(len(boxes))
        timings_720p = []
        for frame in frames_720p:
            started = time.perf_counter()
            detector.detect(frame)
            timings_720p.append(time.perf_counter() - started)
        found = 0
        for frame, (x, y, s, _) in pasted:
            boxes, _ = detector.detect(frame)
            centres = boxes[:, :2] + boxes[:, 2:] / 2 if len(boxes) else np.zeros((0, 2))
            found += int(any(np.linalg.norm(c - (x + s / 2, y + s / 2)) < s / 2 for c in centres))
        photo_counts = {}
        for photo, image in photos.items():
            scale = 1280 / max(image.shape[:2])  # as ingest delivers them (max_side 1280)
            small = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            photo_counts[photo] = len(detector.detect(small)[0])
        report[name] = {
            "ms_per_frame_720x528_median": round(1000 * statistics.median(timings), 2),
            "ms_per_frame_1280x720_median": round(1000 * statistics.median(timings_720p), 2),
            "megamind_frames_by_face_count": np.bincount(counts).tolist(),
            "megamind_faces": int(sum(counts)),
            "photos_faces_found": photo_counts,
            "pasted_fer_faces_found": f"{found}/{len(pasted)}",
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
