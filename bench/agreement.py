"""Does detection and cropping cost accuracy? Per-segment agreement on clips of scheduled val faces.

Composes clips like tests/test_pipeline.py's (FER2013 val faces enlarged to 170 px, drifting,
a new face every 2 s; one clip per seed), runs the real pipeline on each (`analyse
--every-frame`) once per detector, then scores one or more models on the pipeline's own boxes:
each segment's answer (the mean probabilities of its main track) against the model's answer
on the original 48x48 face.

Re-scoring other models on the same boxes is exact because the boxes do not depend on the
model: the frames are decoded again with ffmpeg and cut with the shared `face_input`. The
first model's re-scored probabilities are checked against the pipeline's own output.

Each model is also scored on the pasted square itself (detector "pasted": a perfect box, over
the same frames), which separates what the detector's boxes cost from what enlarging,
encoding and shrinking the face cost. `--low-pass` re-scores with a Gaussian blur on both
the face and its crops, and `--jitter` averages the model over moved and scaled crops: both
experiments (docs/preprocessing.md), not the product's preprocessing. `--match-iou` scores each
segment by the track on the face rather than its longest track (a false box on the background
can be the longest).

    .venv/bin/python -m bench.agreement [--seeds 7 11 13] [--faces 42] [--detectors haar blazeface]
                                        [--models models/emojimation_cnn.tflite other.tflite ensemble]
                                        [--margins 0.05] [--low-pass 0 0.5] [--jitter none shift9]
                                        [--match-iou 0.5] [--val] [--work DIR] [--detect-every 1 5]
                                        [--search-every 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from bench.synthetic import compose_clip, require_shared_data, val_faces
from core.boxes import iou_matrix
from core.emotions import EMOTIONS
from core.model_io import EmotionModel, EnsembleModel, default_model, load_model
from core.preprocess import DETECTOR_CROPS, CropGeometry, face_input, frame_bgr
from ingest.media import ffmpeg_video_args, frame_shape
from training.data import load_folder


def decode(path: Path, width: int = 640, height: int = 360) -> np.ndarray:
    """Every frame as BGR, as the pipeline sees it: ingest's own ffmpeg command (I420) and the
    detector's conversion, `frame_bgr` (ffmpeg's BGR differs by a level or two, which tipped a
    few near-tie crops)."""
    size = (width, height)
    raw = subprocess.run(ffmpeg_video_args(str(path), None, size, size, pixels="i420"),
                         capture_output=True, check=True).stdout
    pictures = np.frombuffer(raw, np.uint8).reshape(-1, *frame_shape(size, "i420"))
    return np.stack([frame_bgr(picture, "i420") for picture in pictures])


def run_pipeline(clip: Path, detector: str, home: Path, detect_every: int = 1, search_every: int = 1) -> pd.DataFrame:
    """The real `analyse --every-frame` on the clip (once: its detections.csv is reused)."""
    out = home / f"{clip.stem}-{detector}" if detect_every == 1 else home / f"{clip.stem}-{detector}-k{detect_every}"
    if search_every != 1:
        out = out.with_name(f"{out.name}-s{search_every}")
    if not (out / "detections.csv").exists():
        subprocess.run([sys.executable, "-m", "emojimation", "analyse", "--no-progress", str(clip), "--out", str(out),
                        "--detector", detector, "--every-frame", "--detect-every", str(detect_every),
                        "--search-every", str(search_every), "--store", f"sqlite:///{home}/s.db"],
                       check=True, capture_output=True, text=True, env={**os.environ, "EMOJIMATION_HOME": str(home)})
    return pd.read_csv(out / "detections.csv")


EDGE_S = 0.25  # left out at each end of a segment, so no frame of the previous or next face counts


def pasted_overlap(rows: pd.DataFrame, segment) -> np.ndarray:
    """IoU of each detection row's box with the square pasted in its frame."""
    pasted = [segment.boxes[int(frame)] for frame in rows.frame]
    return np.diag(iou_matrix(pasted, rows[["x", "y", "w", "h"]].to_numpy()))


def segment_rows(detections: pd.DataFrame, schedule, match_iou: float | None = None) -> list[pd.DataFrame | None]:
    """Each segment's rows of one track (the first and last EDGE_S left out), as the test does.

    By default the track is the segment's longest one, whatever it covers. With `match_iou`,
    it is the longest track on the face itself: median IoU with the pasted square at least
    `match_iou` (0.5 is the usual detection criterion). A box on one eye or on the background
    then counts as a face not found, not as the face's answer.
    """
    picked = []
    for segment in schedule:
        inside = (detections.time_s >= segment.start_s + EDGE_S) & (detections.time_s < segment.end_s - EDGE_S)
        rows = detections[inside]
        lengths = rows.groupby("track_id").size()
        if match_iou is not None and len(rows):
            median = rows.assign(iou=pasted_overlap(rows, segment)).groupby("track_id").iou.median()
            lengths = lengths[median[median >= match_iou].index]
        picked.append(rows[rows.track_id == lengths.idxmax()] if len(lengths) else None)
    return picked


def frames_found(detections: pd.DataFrame, schedule, min_iou: float = 0.3) -> tuple[int, int]:
    """(frames in which a box overlaps the pasted face by `min_iou` or more, frames with a face pasted):
    the issue's "face found in the scheduled frames", counted frame by frame, every frame of every face."""
    by_frame = {int(frame): rows[["x", "y", "w", "h"]].to_numpy() for frame, rows in detections.groupby("frame")}
    found = total = 0
    for segment in schedule:
        for frame, box in segment.boxes.items():
            total += 1
            boxes = by_frame.get(int(frame))
            if boxes is not None and len(boxes) and iou_matrix([box], boxes).max() >= min_iou:
                found += 1
    return found, total


# Crop jitters (scale, dx, dy as fractions of the box) that `--jitter` averages the model over.
JITTERS: dict[str, list[tuple[float, float, float]]] = {
    "none": [(1.0, 0.0, 0.0)],
    "zoom3": [(s, 0.0, 0.0) for s in (0.88, 0.94, 1.0)],  # zoom in only
    "shift9": [(1.0, dx, dy) for dx in (-0.05, 0.0, 0.05) for dy in (-0.05, 0.0, 0.05)],
    "scale3shift9": [(s, dx, dy) for s in (0.9, 1.0, 1.1) for dx in (-0.05, 0.0, 0.05) for dy in (-0.05, 0.0, 0.05)],
}


def jittered_crops(image: np.ndarray, box, geometry: CropGeometry, jitter: str) -> list[np.ndarray]:
    """`face_input` crops of one box, moved and scaled by each of the jitter's offsets."""
    x, y, w, h = box
    return [face_input(image, (x + dx * w, y + dy * h, w, h), geometry.margin + (scale - 1.0) / 2.0, geometry.shift_y)
            for scale, dx, dy in JITTERS[jitter]]


def track_crops(frames: np.ndarray, segments, geometry: CropGeometry, jitter: str = "none") -> list[np.ndarray | None]:
    """Each segment's crops from its track's boxes (None where no face was found)."""
    return [None if rows is None else
            np.stack([crop for r in rows.itertuples()
                      for crop in jittered_crops(frames[int(r.frame)], (r.x, r.y, r.w, r.h), geometry, jitter)])
            for rows in segments]


def pasted_crops(frames: np.ndarray, schedule, fps: float, jitter: str = "none") -> list[np.ndarray]:
    """Each segment's crops at the pasted square itself, over the frames `segment_rows` keeps."""
    return [np.stack([crop for f, box in s.boxes.items() if s.start_s + EDGE_S <= f / fps < s.end_s - EDGE_S
                      for crop in jittered_crops(frames[f], box, CropGeometry(), jitter)])
            for s in schedule]


def low_passed(faces: np.ndarray, sigma: float) -> np.ndarray:
    """The experiment's blur, applied alike to faces and crops (sigma 0: unchanged)."""
    return faces if sigma <= 0 else np.stack([cv2.GaussianBlur(face, (0, 0), sigma) for face in faces])


def score(model: EmotionModel | EnsembleModel, crops: list[np.ndarray | None], schedule, low_pass: float = 0.0,
          jitter: str = "none") -> dict:
    """Counts of segments found, agreeing with the face alone, and right (pipeline / face alone)."""
    want = faces_alone_probabilities(model, np.stack([s.face for s in schedule]), low_pass, jitter).argmax(axis=1)
    agree = found = right = right_alone = 0
    for segment_crops, w, s in zip(crops, want, schedule):
        if segment_crops is None:
            continue
        got = model.probabilities(low_passed(segment_crops, low_pass)).mean(axis=0).argmax()
        found += 1
        agree += int(got == w)
        right += int(got == s.label)
        right_alone += int(w == s.label)
    return {"segments": len(schedule), "found": found, "agree": agree, "right": right, "right_alone": right_alone}


def face_jitters(face: np.ndarray, jitter: str) -> list[np.ndarray]:
    """A 48x48 face's jittered copies, cut as a detector box's are (edge pixels fill the outside)."""
    return jittered_crops(face, (0, 0, face.shape[1], face.shape[0]), CropGeometry(), jitter)


def faces_alone_probabilities(model: EmotionModel | EnsembleModel, faces: np.ndarray, low_pass: float, jitter: str) -> np.ndarray:
    """The model's answer (N, 7) on 48x48 faces, with the same jitter and low-pass as the crops, in one batch."""
    crops = np.stack([crop for face in faces for crop in face_jitters(face, jitter)])
    probabilities = model.probabilities(low_passed(crops, low_pass))
    return probabilities.reshape(len(faces), -1, len(EMOTIONS)).mean(axis=1)


def val_accuracy(model: EmotionModel | EnsembleModel, faces: np.ndarray, labels: np.ndarray, low_pass: float, jitter: str) -> float:
    """Does a jitter or low-pass that helps agreement cost accuracy? FER2013 val with it applied."""
    return float((faces_alone_probabilities(model, faces, low_pass, jitter).argmax(axis=1) == labels).mean())


def check_recut(model: EmotionModel, crops: list[np.ndarray | None], segments) -> None:
    """The re-cut crops must reproduce the pipeline's own probabilities (shipped model only)."""
    rows = pd.concat([r for r in segments if r is not None])
    gap = np.abs(model.probabilities(np.concatenate([c for c in crops if c is not None]))
                 - rows[list(EMOTIONS)].to_numpy()).max()
    if gap > 2e-3:
        print(f"warning: re-cut crops differ from the pipeline's (max prob gap {gap:.4f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 11, 13])
    parser.add_argument("--faces", type=int, default=42, help="faces per clip, drawn at random from every emotion")
    parser.add_argument("--detectors", nargs="+", default=["haar"])
    parser.add_argument("--models", nargs="+", default=[str(default_model())],
                        help="model files, `ensemble` or comma lists (as analyse's --model)")
    parser.add_argument("--margins", type=float, nargs="+", default=None,
                        help="re-score with these crop margins too (default: the detector's own geometry only)")
    parser.add_argument("--low-pass", type=float, nargs="+", default=[0.0],
                        help="Gaussian sigmas (48x48 pixels) to re-score with, on face and crops alike (0: none)")
    parser.add_argument("--jitter", nargs="+", choices=sorted(JITTERS), default=["none"],
                        help="also average the model over moved and scaled crops, of face and boxes alike")
    parser.add_argument("--match-iou", type=float, default=None,
                        help="score each segment by its track on the face (median IoU with the pasted square at "
                             "least this), not by its longest track")
    parser.add_argument("--val", action="store_true",
                        help="also print each model's FER2013 val accuracy with each jitter and low-pass")
    parser.add_argument("--work", type=Path, default=None, help="keep clips and pipeline outputs here (reused)")
    parser.add_argument("--detect-every", type=int, nargs="+", default=[1],
                        help="analyse's --detect-every values to score (each reported as DETECTOR@kK when not 1)")
    parser.add_argument("--search-every", type=int, nargs="+", default=[1],
                        help="analyse's --search-every values to score (reported as DETECTOR@kK/sN when not 1)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="emojimation-agreement-"))
    work.mkdir(parents=True, exist_ok=True)
    models = [load_model(m) for m in args.models]
    shipped = next((m for p, m in zip(args.models, models)
                    if Path(p).is_file() and Path(p).resolve() == default_model().resolve()), None)
    totals: dict[tuple, dict] = {}  # (detector, margin, jitter, low-pass, model) -> summed counts
    frame_totals: dict[str, list[int]] = {}  # detector label -> [frames found, frames with a face]

    def report(seed: int, schedule: list, detector: str, margin: float, jitter: str, crops: list) -> None:
        for path, model in zip(args.models, models):
            for sigma in args.low_pass:
                result = score(model, crops, schedule, sigma, jitter)
                print(json.dumps({"seed": seed, "detector": detector, "margin": margin, "jitter": jitter,
                                  "low_pass": sigma, "model": str(path), **result}), flush=True)
                total = totals.setdefault((detector, margin, jitter, sigma, str(path)), {})
                for key, value in result.items():
                    total[key] = total.get(key, 0) + value

    for seed in args.seeds:
        faces = val_faces(int(np.ceil(args.faces / len(EMOTIONS))) + 1, seed=seed)
        order = np.random.default_rng(seed).permutation(len(faces))[:args.faces]
        scheduled = [faces[i] for i in order]
        clip = work / f"faces-{seed}-{args.faces}.mp4"
        schedule = compose_clip(clip, [f for f, _, _ in scheduled], [l for _, l, _ in scheduled],
                                seconds_per_face=2.0, fps=10.0, face_px=170)
        frames = decode(clip)
        for jitter in args.jitter:
            report(seed, schedule, "pasted", 0.0, jitter, pasted_crops(frames, schedule, 10.0, jitter))
        for detector, every, search in [(d, k, n) for d in args.detectors for k in args.detect_every
                                        for n in args.search_every if k > 1 or n == 1]:  # K=1: no search
            detections = run_pipeline(clip, detector, work, every, search)
            label = detector if every == 1 else f"{detector}@k{every}"
            label = label if search == 1 else f"{label}/s{search}"
            found, total = frames_found(detections, schedule)
            frame_totals.setdefault(label, [0, 0])
            frame_totals[label][0] += found
            frame_totals[label][1] += total
            print(json.dumps({"seed": seed, "detector": label, "frames_found": found, "frames_with_face": total}),
                  flush=True)
            segments = segment_rows(detections, schedule, args.match_iou)
            own = DETECTOR_CROPS[detector]
            if shipped is not None:  # always on the longest tracks: those are the pipeline's own rows
                longest = segments if args.match_iou is None else segment_rows(detections, schedule)
                check_recut(shipped, track_crops(frames, longest, own), longest)
            for margin in [own.margin] + [m for m in args.margins or [] if m != own.margin]:
                for jitter in args.jitter:
                    report(seed, schedule, label, margin, jitter,
                           track_crops(frames, segments, CropGeometry(margin, own.shift_y), jitter))
    if args.val:
        val = load_folder(require_shared_data() / "fer2013" / "val")
        for path, model in zip(args.models, models):
            for jitter in args.jitter:
                for sigma in args.low_pass:
                    accuracy = val_accuracy(model, val.images, val.labels, sigma, jitter)
                    print(f"VAL jitter {jitter} low-pass {sigma} {path}: {accuracy:.2%} of {len(val.labels)}")
    for (detector, margin, jitter, sigma, path), total in totals.items():
        print(f"TOTAL {detector} margin {margin} jitter {jitter} low-pass {sigma} {path}: "
              f"agree {total['agree']}/{total['found']} "
              f"({total['agree'] / max(1, total['found']):.1%}), right {total['right']} vs alone {total['right_alone']}, "
              f"found {total['found']}/{total['segments']}")
    for label, (found, total) in frame_totals.items():
        print(f"FRAMES {label}: face found in {found}/{total} frames ({found / max(1, total):.1%})")


if __name__ == "__main__":
    main()
