"""Which faces to mirror: val accuracy against compute per face, for a model's `flip_below`.

The pipeline's classifier runs each face once and mirrors only the faces whose top calibrated
probability is under the model's `flip_below` (core.model_io.EmotionModel.logits). This sweeps
that threshold on FER2013 val through the model the pipeline runs (a `.tflite` export, or a
`.keras` file) and prints, for each threshold, the crops per face, the MFLOPs per face (FLOPs per
crop of the model's `.keras` twin, by TF's profiler), the accuracy and the fear and disgust
recall; with `--reference`, the same for another model at its own shipped setting, and each
threshold's cost as a fraction of the reference's. Val is the tuning split (PrivateTest is
held out):

    .venv/bin/python -m bench.flip_policy runs/distill/emojimation_cnn.tflite \\
        --reference models/emojimation_cnn.tflite
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.config import DEFAULT_FER_DATA  # noqa: E402
from core.model_io import EmotionModel, softmax  # noqa: E402

THRESHOLDS = (0.0, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.01)  # 0: never mirror; 1.01: every face


def mflops_per_crop(model_path: Path) -> float:
    """The FLOPs of one crop through the model's `.keras` twin (same weights before export)."""
    import keras

    from bench.flops import flops

    keras_path = model_path.with_suffix(".keras")
    if not keras_path.is_file():
        raise SystemExit(f"{keras_path}: the .keras twin of {model_path.name} is needed to count FLOPs")
    return flops(keras.saving.load_model(keras_path, compile=False)) / 1e6


def sweep(model_path: Path, images: np.ndarray, labels: np.ndarray) -> tuple[EmotionModel, list[dict]]:
    """One row per threshold: crops per face, accuracy, per-class recall."""
    model = EmotionModel(model_path, flip_tta=False)
    batches = range(0, len(images), 256)
    plain = np.concatenate([model.logits(images[i:i + 256], flip_tta=False) for i in batches])
    mirrored = np.concatenate([model.logits(np.ascontiguousarray(images[i:i + 256][:, :, ::-1]), flip_tta=False)
                               for i in batches])
    confidence = softmax(plain / model.info.temperature).max(axis=1)
    rows = []
    for threshold in THRESHOLDS:
        unsure = confidence < threshold
        logits = plain.copy()
        logits[unsure] = (plain[unsure] + mirrored[unsure]) / 2
        predicted = logits.argmax(axis=1)
        recall = [float((predicted[labels == c] == c).mean()) for c in range(logits.shape[1])]
        rows.append({"flip_below": threshold, "crops_per_face": 1 + float(unsure.mean()),
                     "accuracy": float((predicted == labels).mean()), "recall": recall})
    return model, rows


def shipped_row(model: EmotionModel, rows: list[dict]) -> dict:
    """The row of the model's own setting (no flip, every face, or its `flip_below`)."""
    if not model.info.flip_tta:
        return rows[0]
    threshold = model.info.flip_below if model.info.flip_below < 1.0 else 1.01
    return min(rows, key=lambda row: abs(row["flip_below"] - threshold))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--reference", type=Path, help="compare with this model at its own setting")
    parser.add_argument("--data", type=Path, default=DEFAULT_FER_DATA)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    from training.data import load_faces

    val = load_faces(args.data, split="val")
    result: dict = {"n": len(val.labels)}
    for role, path in (("model", args.model), ("reference", args.reference)):
        if path is None:
            continue
        model, rows = sweep(path, val.images, val.labels)
        per_crop = mflops_per_crop(path)
        for row in rows:
            row["mflops_per_face"] = per_crop * row["crops_per_face"]
        result[role] = {"path": str(path), "mflops_per_crop": per_crop, "rows": rows,
                        "shipped": shipped_row(model, rows)}
    reference = result.get("reference", {}).get("shipped")
    if args.json:
        print(json.dumps(result))
        return
    if reference:
        print(f"reference {args.reference}: {reference['mflops_per_face']:.0f} MFLOPs per face "
              f"({result['reference']['mflops_per_crop']:.1f} per crop x {reference['crops_per_face']:.2f} crops), "
              f"val accuracy {reference['accuracy']:.4f}")
    print(f"{args.model} ({result['model']['mflops_per_crop']:.1f} MFLOPs per crop), FER2013 val, {result['n']} faces:")
    print(f"{'flip_below':>10} {'crops/face':>10} {'MFLOPs/face':>11} {'vs ref':>7} {'accuracy':>9} {'fear':>6} {'disgust':>8}")
    for row in result["model"]["rows"]:
        versus = f"{row['mflops_per_face'] / reference['mflops_per_face']:.2f}x" if reference else "-"
        label = "every" if row["flip_below"] > 1 else f"{row['flip_below']:.2f}"
        print(f"{label:>10} {row['crops_per_face']:>10.3f} {row['mflops_per_face']:>11.0f} {versus:>7} "
              f"{row['accuracy']:>9.4f} {row['recall'][2]:>6.3f} {row['recall'][1]:>8.3f}")


if __name__ == "__main__":
    main()
