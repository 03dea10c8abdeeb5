"""Would crops aligned on BlazeFace's keypoints serve the model better than crops of its box?

Issue 17 asked for every face to be rotated, scaled and centred into FER2013's framing by one
similarity transform on its keypoints (eyes, nose, mouth). This measures that before building it:
  1. The target geometry: BlazeFace's keypoints on FER2013 training faces (enlarged 4 times
     inside a replicated border), their median position in the 48x48 face, and their spread.
  2. FER2013 val faces, pasted into frames at 80-260 pixels and searched as the pipeline's local
     search does (one pass on a window 2.5 times the face): the shipped model's accuracy and its
     agreement with its answer on the face alone, for the box crop the pipeline cuts today and
     for the aligned crop (least-squares similarity of the four points onto the target).
  3. The keypoints' noise: the pasted face's keypoints mapped back into the 48x48 face, against
     the keypoints found on the face alone.
Results: docs/preprocessing.md.

    .venv/bin/python -m bench.measure_alignment [--train-faces 3000] [--val-faces 1500]
"""

from __future__ import annotations

import argparse
import json

import cv2
import numpy as np

from bench.bench_worker_start import cpu_model, vector_flags
from bench.synthetic import background, paste
from core.config import DEFAULT_FER_DATA
from core.model_io import EmotionModel
from core.preprocess import DETECTOR_CROPS, INPUT_SIZE, face_input
from detector.backends import BlazeFaceDetector
from detector.search import SEARCH_SCALE, window
from training.data import load_faces

POINTS = [0, 1, 2, 3]  # eyes, nose tip, mouth centre (the ears are often hidden)


def similarity(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x3 least-squares similarity (rotation, one scale, shift) taking `source` points onto `target`."""
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    s, t = source - source_mean, target - target_mean
    norm = float((s ** 2).sum())
    a = float((s * t).sum()) / norm
    b = float((s[:, 0] * t[:, 1] - s[:, 1] * t[:, 0]).sum()) / norm
    matrix = np.array([[a, -b, 0.0], [b, a, 0.0]])
    matrix[:, 2] = target_mean - matrix[:, :2] @ source_mean
    return matrix


def aligned_crop(image: np.ndarray, keypoints: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 48x48 grey face whose keypoints land on `target`: shrunk by area averaging first
    (a warp alone would alias a large face), then rotated and shifted."""
    matrix = similarity(keypoints[POINTS], target[POINTS])
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY) if image.ndim == 3 else image
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    if scale < 1.0:
        small = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        matrix = matrix.copy()
        matrix[:, 0] *= grey.shape[1] / small.shape[1]
        matrix[:, 1] *= grey.shape[0] / small.shape[0]
        grey = small
    return cv2.warpAffine(grey, matrix, (INPUT_SIZE, INPUT_SIZE), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


def keypoints_on_face(detector: BlazeFaceDetector, face: np.ndarray, enlarge: int = 4) -> np.ndarray | None:
    """BlazeFace's keypoints of a 48x48 face, in its own pixels (None if not found)."""
    side = INPUT_SIZE * enlarge
    pad = side // 2
    big = cv2.copyMakeBorder(cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC),
                             pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    _boxes, scores, keypoints = detector.detect_with_keypoints(cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))
    if not len(scores):
        return None
    return (keypoints[int(scores.argmax())] - pad) / enlarge


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-faces", type=int, default=3000)
    parser.add_argument("--val-faces", type=int, default=1500)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    detector = BlazeFaceDetector("short", tiles=False)

    train = load_faces(DEFAULT_FER_DATA, "train")
    found = [k for k in (keypoints_on_face(detector, train.images[i])
                         for i in rng.choice(len(train), args.train_faces, replace=False)) if k is not None]
    points = np.stack(found)
    target = np.median(points, axis=0)

    val = load_faces(DEFAULT_FER_DATA, "val")
    model = EmotionModel()
    alone = model.probabilities(val.images).argmax(axis=1)
    own_keypoints = {i: keypoints_on_face(detector, val.images[i]) for i in range(len(val))}

    crops: dict[str, list[np.ndarray]] = {"box crop (today)": [], "aligned crop": []}
    picked, errors = [], []
    geometry = DETECTOR_CROPS["blazeface"]
    for i in rng.choice(len(val), args.val_faces, replace=False):
        size = int(rng.integers(80, 261))
        frame = background(640, 360, seed=int(rng.integers(1 << 30)))
        x, y = int(rng.integers(0, 640 - size)), int(rng.integers(0, 360 - size))
        paste(frame, val.images[i], x, y, size)
        side = int(round(SEARCH_SCALE * size))
        x0, y0 = x + size // 2 - side // 2, y + size // 2 - side // 2
        boxes, scores, keypoints = detector.detect_with_keypoints(window(frame, x0, y0, side))
        if not len(scores):
            continue
        best = int(scores.argmax())
        box = boxes[best] + np.array([x0, y0, 0, 0], np.float32)
        centre = box[:2] + box[2:] / 2
        if np.abs(centre - np.array([x + size / 2, y + size / 2])).max() > size / 2:
            continue
        points_in_frame = keypoints[best] + np.array([x0, y0], np.float32)
        picked.append(int(i))
        crops["box crop (today)"].append(face_input(frame, tuple(box), geometry.margin, geometry.shift_y))
        crops["aligned crop"].append(aligned_crop(frame, points_in_frame, target))
        if own_keypoints[int(i)] is not None:
            errors.append(np.abs((points_in_frame - np.array([x, y])) * INPUT_SIZE / size - own_keypoints[int(i)]))
    picked_array = np.asarray(picked)
    self_aligned = np.stack([aligned_crop(val.images[i], own_keypoints[i], target)
                             if own_keypoints[i] is not None else val.images[i] for i in range(len(val))])
    self_answers = model.probabilities(self_aligned).argmax(axis=1)
    report = {
        "cpu": cpu_model(), "vector_flags": vector_flags(),
        "target_keypoints_48px": np.round(target[:4], 2).tolist(),
        "keypoint_spread_sd_px": np.round(points[:, :4].std(axis=0).mean(axis=1), 2).tolist(),
        "train_faces_found": f"{len(found)} of {args.train_faces}",
        "val_alone_accuracy": round(float((alone == val.labels).mean()), 4),
        "val_self_aligned_accuracy": round(float((self_answers == val.labels).mean()), 4),
        "pasted_found": f"{len(picked)} of {args.val_faces}",
        "pasted_alone_accuracy": round(float((alone[picked_array] == val.labels[picked_array]).mean()), 4),
        "keypoint_error_px_median": round(float(np.median(np.stack(errors)[:, POINTS])), 2),
        "keypoint_error_px_mean": round(float(np.stack(errors)[:, POINTS].mean()), 2),
    }
    for name, faces in crops.items():
        answers = model.probabilities(np.stack(faces)).argmax(axis=1)
        report[name] = {"accuracy": round(float((answers == val.labels[picked_array]).mean()), 4),
                        "agrees_with_face_alone": round(float((answers == alone[picked_array]).mean()), 4)}
    aligned_answers = model.probabilities(np.stack(crops["aligned crop"])).argmax(axis=1)
    report["aligned crop"]["agrees_with_face_alone_aligned"] = round(
        float((aligned_answers == self_answers[picked_array]).mean()), 4)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
