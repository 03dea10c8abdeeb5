"""Choose the crop margin per detector by measurement (results: docs/preprocessing.md).

FER2013 faces are tight crops. Val faces are enlarged and pasted into larger frames at
random places and sizes; each detector finds them, and for each margin the crop goes
through the shared `face_input` and the model. Each detector's measured vertical shift is applied; the margin whose crops agree best with the
model's answer on the original 48x48 face (and with the true label) wins.
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from bench.synthetic import background, paste, val_faces
from detector.backends import make_detector
from core.model_io import EmotionModel
from core.preprocess import DETECTOR_CROPS, face_input

MARGINS = [-0.1, -0.05, 0.0, 0.05, 0.1, 0.15, 0.2, 0.3]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--per-emotion", type=int, default=60)
    parser.add_argument("--detectors", nargs="+", default=["haar", "blazeface", "blazeface-full"])
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    faces = val_faces(args.per_emotion, seed=1)
    model = EmotionModel(flip_tta=False)
    originals = np.stack([f for f, _, _ in faces])
    reference = model.probabilities(originals).argmax(axis=1)
    labels = np.array([label for _, label, _ in faces])
    frames, boxes = [], []
    for face, _, _ in faces:
        size = int(rng.integers(100, 220))
        frame = background(640, 360, seed=int(rng.integers(1 << 30)))
        x, y = int(rng.integers(0, 640 - size)), int(rng.integers(0, 360 - size))
        boxes.append(paste(frame, face, x, y, size))
        frames.append(frame)
    report = {"faces": len(faces), "model_on_originals_accuracy": float((reference == labels).mean()), "detectors": {}}
    for name in args.detectors:
        detector = make_detector(name)
        found, implied, shifts, crops_by_margin = [], [], [], {m: [] for m in MARGINS}
        for i, (frame, (x, y, s, _)) in enumerate(zip(frames, boxes)):
            det_boxes, _scores = detector.detect(frame)
            if len(det_boxes) == 0:
                continue
            centres = det_boxes[:, :2] + det_boxes[:, 2:] / 2
            best = int(np.argmin(np.linalg.norm(centres - np.array([x + s / 2, y + s / 2]), axis=1)))
            box = det_boxes[best]
            if np.linalg.norm(centres[best] - np.array([x + s / 2, y + s / 2])) > s / 2:
                continue
            found.append(i)
            implied.append((s / max(box[2], box[3]) - 1) / 2)
            shifts.append(((y + s / 2) - (box[1] + box[3] / 2)) / box[3])
            for m in MARGINS:
                crops_by_margin[m].append(face_input(frame, tuple(box), m, DETECTOR_CROPS[name].shift_y))
        rows = {}
        for m in MARGINS:
            if not found:
                break
            predicted = model.probabilities(np.stack(crops_by_margin[m])).argmax(axis=1)
            rows[m] = {"agreement": float((predicted == reference[found]).mean()),
                       "accuracy": float((predicted == labels[found]).mean())}
        report["detectors"][name] = {"found": len(found) / len(faces), "implied_margin_median":
                                     float(np.median(implied)) if implied else None,
                                     "implied_shift_y_median": float(np.median(shifts)) if shifts else None,
                                     "by_margin": rows}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
