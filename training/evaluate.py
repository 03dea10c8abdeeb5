"""`emojimation evaluate`: accuracy, macro-F1, per-class table, confusion matrix, calibration."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from core.config import EvaluateConfig
from core.emotions import EMOTIONS, NUM_EMOTIONS
from core.errors import DataError
from core.model_io import EnsembleModel, load_model


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    matrix = np.zeros((NUM_EMOTIONS, NUM_EMOTIONS), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def metrics(labels: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    """The `--json` object: counts in FER2013 label order, scores as fractions."""
    matrix = confusion_matrix(labels, predicted)
    per_class = {}
    f1s = []
    for i, emotion in enumerate(EMOTIONS):
        tp = matrix[i, i]
        predicted_i, actual_i = matrix[:, i].sum(), matrix[i, :].sum()
        precision = tp / predicted_i if predicted_i else 0.0
        recall = tp / actual_i if actual_i else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[emotion] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                              "support": int(actual_i)}
        if actual_i:
            f1s.append(f1)
    return {
        "n": int(len(labels)),
        "accuracy": float((labels == predicted).mean()) if len(labels) else 0.0,
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "per_class": per_class,
        "confusion": matrix.tolist(),
        "labels": list(EMOTIONS),
    }


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    error = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


def format_report(result: dict[str, Any], ece_raw: float, ece: float, source: str) -> str:
    lines = [f"{source}: {result['n']} faces",
             f"accuracy {result['accuracy']:.4f}   macro-F1 {result['macro_f1']:.4f}   "
             f"ECE {ece_raw:.4f} uncalibrated -> {ece:.4f} calibrated", "",
             f"{'emotion':<10}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}"]
    for emotion, row in result["per_class"].items():
        lines.append(f"{emotion:<10}{row['precision']:>10.4f}{row['recall']:>10.4f}{row['f1']:>10.4f}"
                     f"{row['support']:>10d}")
    lines += ["", "confusion (rows = true, columns = predicted)",
              " " * 10 + "".join(f"{e[:8]:>9}" for e in EMOTIONS)]
    for emotion, row in zip(EMOTIONS, result["confusion"]):
        lines.append(f"{emotion:<10}" + "".join(f"{v:>9d}" for v in row))
    return "\n".join(lines)


def save_confusion_png(result: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(result["confusion"], dtype=float)
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(NUM_EMOTIONS), EMOTIONS, rotation=45, ha="right")
    ax.set_yticks(range(NUM_EMOTIONS), EMOTIONS)
    for i in range(NUM_EMOTIONS):
        for j in range(NUM_EMOTIONS):
            ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center",
                    color="white" if rows[i, j] > 0.5 else "black", fontsize=8)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of true class")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def evaluate(data: str, model_path: str | None = None, split: str | None = None, tta: str = "auto",
             precision: str = "auto") -> tuple[dict[str, Any], float, float, str]:
    """Scores of one model, or of an ensemble (several paths, comma-separated): the mean of the
    members' calibrated probabilities, each with its own flip policy (`tta` overrides them all).
    Returns the metrics, the calibration error before and after temperature scaling (for an
    ensemble: of the mean uncalibrated and the mean calibrated probabilities) and the source."""
    from training.data import load_faces

    path = Path(data)
    if split is None:
        split = "PrivateTest" if path.suffix.lower() == ".csv" else "val"
    faces = load_faces(path, split)
    if len(faces) == 0:
        raise DataError(f"{data}: no faces to evaluate")
    model = load_model(model_path, precision=precision)
    flip = {"auto": None, "on": True, "off": False}[tta]
    pairs = [model.probabilities_before_and_after_scaling(faces.images[i:i + 256], flip)
             for i in range(0, len(faces), 256)]
    raw, calibrated = np.concatenate([raw for raw, _ in pairs]), np.concatenate([scaled for _, scaled in pairs])
    result = metrics(faces.labels, calibrated.argmax(axis=1))
    ece_raw = expected_calibration_error(raw, faces.labels)
    ece = expected_calibration_error(calibrated, faces.labels)
    source = f"{faces.source} ({model.name})" if isinstance(model, EnsembleModel) else faces.source
    return result, ece_raw, ece, source


def evaluate_command(config: EvaluateConfig) -> int:
    """`emojimation evaluate`: the report (or `--json`) and the confusion matrix picture."""
    result, ece_raw, ece, source = evaluate(config.data, config.model or None, config.split or None, config.tta,
                                            config.precision)
    png = Path(config.confusion_png)
    data_source, _, ensemble = source.partition(" (ensemble of ")
    label = Path(data_source).name + (f", ensemble of {ensemble.split(' ')[0]} models" if ensemble else "")
    save_confusion_png(result, png, f"{label}: accuracy {result['accuracy']:.3f}")
    if config.json:
        print(json.dumps(result))
        print(f"confusion matrix picture: {png}", file=sys.stderr)
    else:
        print(format_report(result, ece_raw, ece, source))
        print(f"\nconfusion matrix picture: {png}")
    return 0
