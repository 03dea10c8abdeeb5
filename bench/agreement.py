"""Does detection and cropping cost accuracy? Per-segment agreement on clips of scheduled val faces.

Composes clips like tests/test_pipeline.py's (FER2013 val faces enlarged to 170 px, drifting,
a new face every 2 s; one clip per seed), runs the real pipeline on each (`analyse
--every-frame`) once per detector, then scores one or more models on the pipeline's own boxes:
each segment's answer (the mean probabilities of its main track) against the model's answer
on the original 48x48 face.

Re-scoring other models on the same boxes is exact because the boxes do not depend on the
model: the frames are decoded again with ffmpeg and cut with the shared `face_input`. The
first model's re-scored probabilities are checked against the pipeline's own output.

    .venv/bin/python -m bench.agreement [--seeds 7 11 13] [--faces 42] [--detectors haar blazeface]
                                        [--models models/emojimation_cnn.tflite other.tflite]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from bench.synthetic import compose_clip, val_faces
from emojimation.emotions import EMOTIONS
from emojimation.model_io import EmotionModel, default_pipeline_model
from emojimation.preprocess import DETECTOR_CROPS, CropGeometry, face_input


def decode(path: Path, width: int = 640, height: int = 360) -> np.ndarray:
    """Every frame as BGR, decoded by ffmpeg as the ingest stage does."""
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "bgr24", "pipe:"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)


def run_pipeline(clip: Path, detector: str, home: Path) -> pd.DataFrame:
    """The real `analyse --every-frame` on the clip (once: its detections.csv is reused)."""
    out = home / f"{clip.stem}-{detector}"
    if not (out / "detections.csv").exists():
        subprocess.run([sys.executable, "-m", "emojimation", "analyse", "--no-progress", str(clip), "--out", str(out),
                        "--detector", detector, "--every-frame", "--store", f"sqlite:///{home}/s.db"],
                       check=True, capture_output=True, text=True, env={**os.environ, "EMOJIMATION_HOME": str(home)})
    return pd.read_csv(out / "detections.csv")


def segment_rows(detections: pd.DataFrame, schedule) -> list[pd.DataFrame | None]:
    """The main track's rows per segment (the first and last 0.25 s left out), as the test does."""
    picked = []
    for segment in schedule:
        rows = detections[(detections.time_s >= segment.start_s + 0.25) & (detections.time_s < segment.end_s - 0.25)]
        picked.append(rows[rows.track_id == rows.groupby("track_id").size().idxmax()] if len(rows) else None)
    return picked


def score(model: EmotionModel, frames: np.ndarray, segments, schedule, geometry: CropGeometry) -> dict:
    """Counts of segments found, agreeing with the face alone, and right (pipeline / face alone)."""
    want = model.probabilities(np.stack([s.face for s in schedule])).argmax(axis=1)
    agree = found = right = right_alone = 0
    for rows, w, s in zip(segments, want, schedule):
        if rows is None:
            continue
        crops = np.stack([face_input(frames[int(r.frame)], (r.x, r.y, r.w, r.h), geometry.margin, geometry.shift_y)
                          for r in rows.itertuples()])
        got = model.probabilities(crops).mean(axis=0).argmax()
        found += 1
        agree += int(got == w)
        right += int(got == s.label)
        right_alone += int(w == s.label)
    return {"segments": len(schedule), "found": found, "agree": agree, "right": right, "right_alone": right_alone}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[7, 11, 13])
    parser.add_argument("--faces", type=int, default=42, help="faces per clip, drawn at random from every emotion")
    parser.add_argument("--detectors", nargs="+", default=["haar"])
    parser.add_argument("--models", type=Path, nargs="+", default=[default_pipeline_model()])
    parser.add_argument("--margins", type=float, nargs="+", default=None,
                        help="re-score with these crop margins too (default: the detector's own geometry only)")
    parser.add_argument("--work", type=Path, default=None, help="keep clips and pipeline outputs here (reused)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="emojimation-agreement-"))
    work.mkdir(parents=True, exist_ok=True)
    models = [EmotionModel(m) for m in args.models]
    totals: dict[tuple[str, float, str], dict] = {}  # (detector, margin, model) -> summed counts
    for seed in args.seeds:
        faces = val_faces(int(np.ceil(args.faces / len(EMOTIONS))) + 1, seed=seed)
        order = np.random.default_rng(seed).permutation(len(faces))[:args.faces]
        scheduled = [faces[i] for i in order]
        clip = work / f"faces-{seed}-{args.faces}.mp4"
        schedule = compose_clip(clip, [f for f, _, _ in scheduled], [l for _, l, _ in scheduled],
                                seconds_per_face=2.0, fps=10.0, face_px=170)
        frames = decode(clip)
        for detector in args.detectors:
            detections = run_pipeline(clip, detector, work)
            segments = segment_rows(detections, schedule)
            for k, (path, model) in enumerate(zip(args.models, models)):
                if k == 0:  # the re-cut crops must reproduce the pipeline's own probabilities
                    rows = pd.concat([r for r in segments if r is not None])
                    geometry = DETECTOR_CROPS[detector]
                    crops = np.stack([face_input(frames[int(r.frame)], (r.x, r.y, r.w, r.h), geometry.margin,
                                                 geometry.shift_y) for r in rows.itertuples()])
                    if path.resolve() == default_pipeline_model().resolve():
                        gap = np.abs(model.probabilities(crops) - rows[list(EMOTIONS)].to_numpy()).max()
                        if gap > 2e-3:
                            print(f"warning: re-cut crops differ from the pipeline's (max prob gap {gap:.4f})")
                own = DETECTOR_CROPS[detector]
                for margin in [own.margin] + [m for m in args.margins or [] if m != own.margin]:
                    result = score(model, frames, segments, schedule, CropGeometry(margin, own.shift_y))
                    print(json.dumps({"seed": seed, "detector": detector, "margin": margin, "model": str(path),
                                      **result}), flush=True)
                    total = totals.setdefault((detector, margin, str(path)), {})
                    for key, value in result.items():
                        total[key] = total.get(key, 0) + value
    for (detector, margin, path), total in totals.items():
        print(f"TOTAL {detector} margin {margin} {path}: agree {total['agree']}/{total['found']} "
              f"({total['agree'] / max(1, total['found']):.1%}), right {total['right']} vs alone {total['right_alone']}, "
              f"found {total['found']}/{total['segments']}")


if __name__ == "__main__":
    main()
