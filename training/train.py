"""`emojimation train`: train the emotion CNN on FER2013, resumably, and calibrate it.

Output folder (default `models/`):
  emojimation_cnn.keras / .json   best model by hold-out accuracy (float32) + metadata
  history.csv, learning_curve.png  one row per epoch (train and hold-out loss/accuracy)
  checkpoints/                     per-epoch backup; a killed run resumes from the last finished epoch
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from core.config import TrainConfig, load
from core.emotions import NUM_EMOTIONS
from core.errors import DataError
from core.model_io import (
    ModelInfo, configure_tensorflow_threads, cpu_has_bf16, metadata_path, quiet_tensorflow, write_json_atomic,
)

logger = logging.getLogger(__name__)

MODEL_FILENAME = "emojimation_cnn.keras"


def class_weights(counts: np.ndarray, power: float) -> np.ndarray:
    weights = (np.median(counts) / np.maximum(counts, 1)) ** power
    return (weights / (weights * counts).sum() * counts.sum()).astype(np.float32)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """Temperature minimising the negative log-likelihood (golden-section search on log T)."""

    def nll(log_t: float) -> float:
        z = logits / math.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-log_p[np.arange(len(labels)), labels].mean())

    lo, hi = math.log(0.2), math.log(10.0)
    ratio = (math.sqrt(5) - 1) / 2
    for _ in range(60):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if nll(a) < nll(b):
            hi = b
        else:
            lo = a
    return math.exp((lo + hi) / 2)


def _plot_history(history_csv: Path, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with history_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return
    epochs = [int(r["epoch"]) for r in rows]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("loss", "train"), ("holdout_loss", "hold-out")):
        ax_loss.plot(epochs, [float(r[key]) for r in rows], label=label)
    for key, label in (("accuracy", "train"), ("holdout_accuracy", "hold-out")):
        ax_acc.plot(epochs, [float(r[key]) for r in rows], label=label)
    ax_loss.set(title="loss", xlabel="epoch")
    ax_acc.set(title="accuracy", xlabel="epoch")
    ax_loss.legend()
    ax_acc.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def run(config: TrainConfig) -> Path:
    """Train (or resume), then write the float32 model, its metadata, history and curve."""
    from training.data import load_faces, stratified_holdout

    # Data first: a data error is one line on stderr, before TensorFlow's import-time log lines.
    faces = load_faces(config.data, config.split, require_all=True)
    images, labels = faces.images, faces.labels
    if config.limit:
        pick = np.random.default_rng(config.seed).permutation(len(labels))[: config.limit]
        images, labels = images[np.sort(pick)], labels[np.sort(pick)]
    train_idx, hold_idx = stratified_holdout(labels, config.holdout_fraction, config.seed)
    if len(np.unique(labels[train_idx])) < NUM_EMOTIONS:
        raise DataError(f"{config.data}: every emotion needs training images after the hold-out split")
    x_train, y_train = images[train_idx][..., None], labels[train_idx]
    x_hold, y_hold = images[hold_idx][..., None].astype(np.float32), labels[hold_idx]
    weights = class_weights(np.bincount(y_train, minlength=NUM_EMOTIONS), config.class_weight_power)

    quiet_tensorflow()
    import keras
    import tensorflow as tf

    from training.augment import augment_batch
    from training.average import average_weight_files
    from training.model import make_model

    configure_tensorflow_threads(config.threads, 1 if config.threads else None)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    backup_dir = out / "checkpoints"
    state_path = backup_dir / "state.json"
    history_csv = out / "history.csv"
    if config.restart and backup_dir.exists():
        shutil.rmtree(backup_dir)
        history_csv.unlink(missing_ok=True)

    keras.utils.set_random_seed(config.seed)
    bf16 = config.precision == "bfloat16" or (config.precision == "auto" and cpu_has_bf16())
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if bf16 else "float32")
    steps_per_epoch = math.ceil(len(y_train) / config.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate / 100,
        decay_steps=max(1, (config.epochs - config.warmup_epochs) * steps_per_epoch),
        warmup_target=config.learning_rate,
        warmup_steps=config.warmup_epochs * steps_per_epoch,
        alpha=0.01,
    )
    model = make_model(width=config.width)
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay),
        loss=keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
    )

    def to_training_example(x, y):
        return x, tf.one_hot(y, NUM_EMOTIONS), tf.gather(weights, y)

    train_ds = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(y_train), seed=config.seed, reshuffle_each_iteration=True)
        .batch(config.batch_size)
        # Sequential on purpose: augment_batch's random ops are stateful, and a parallel map hands
        # out their draws in a racy order (same --seed, different loss). It runs at ~20k faces/s
        # on one core, far above training speed, and prefetch overlaps it with the steps.
        .map(lambda x, y: (augment_batch(tf.cast(x, tf.float32)), y))
        .map(to_training_example)
        .prefetch(2)
    )
    hold_ds = tf.data.Dataset.from_tensor_slices((x_hold, tf.one_hot(y_hold, NUM_EMOTIONS))).batch(256)

    best_path = backup_dir / "best.weights.h5"
    epochs_dir = backup_dir / "epochs"  # the last epochs' weights, for averaging
    state = json.loads(state_path.read_text()) if state_path.exists() else {"best_holdout_accuracy": -1.0}

    class EpochReport(keras.callbacks.Callback):
        """One line per epoch, the history CSV, and the best-by-hold-out weights (resume-safe)."""

        resumed = False

        def on_epoch_begin(self, epoch, logs=None):
            if not self.resumed:
                # `epoch` is where BackupAndRestore restarts: the last finished epoch it backed up.
                self.resumed = True
                if epoch:
                    print(f"resuming after epoch {epoch} from {backup_dir}", flush=True)
                trim_history(history_csv, epoch)
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            row = {
                "epoch": epoch + 1,
                "loss": logs["loss"], "accuracy": logs["accuracy"],
                "holdout_loss": logs["val_loss"], "holdout_accuracy": logs["val_accuracy"],
                "learning_rate": float(schedule(self.model.optimizer.iterations)),
                "seconds": time.perf_counter() - self.started,
            }
            append_history(history_csv, row)
            if row["holdout_accuracy"] > state["best_holdout_accuracy"]:
                state.update(best_holdout_accuracy=row["holdout_accuracy"], best_epoch=row["epoch"])
                tmp_best = best_path.with_name("best.tmp.weights.h5")
                self.model.save_weights(tmp_best)
                os.replace(tmp_best, best_path)
            if row["epoch"] > config.epochs - config.average_last:
                epochs_dir.mkdir(parents=True, exist_ok=True)
                self.model.save_weights(epochs_dir / f"epoch_{row['epoch']}.weights.h5")
            state["last_epoch"] = row["epoch"]
            write_json_atomic(state_path, state)
            self.line = (  # printed once the epoch's backup is on disk (see the callbacks below)
                f"epoch {row['epoch']}/{config.epochs}  train loss {row['loss']:.4f} acc {row['accuracy']:.4f}"
                f"  hold-out loss {row['holdout_loss']:.4f} acc {row['holdout_accuracy']:.4f}"
                f"  lr {row['learning_rate']:.2e}  {row['seconds']:.0f}s"
            )

    backup_dir.mkdir(parents=True, exist_ok=True)
    report = EpochReport()
    print(
        f"training on {len(y_train)} faces, hold-out {len(y_hold)}, {steps_per_epoch} steps/epoch,"
        f" {'mixed_bfloat16' if bf16 else 'float32'}, {model.count_params():,} parameters",
        flush=True,
    )
    model.fit(
        train_ds,
        epochs=config.epochs,
        validation_data=hold_ds,
        verbose=0,
        # History before the backup: a kill between them re-runs the epoch (its row is trimmed at
        # resume) instead of skipping it; the double checkpoint survives a kill mid-save; the
        # epoch's line comes last, so a printed epoch is a finished one.
        callbacks=[
            report,
            keras.callbacks.BackupAndRestore(str(backup_dir / "backup"), delete_checkpoint=False,
                                             double_checkpoint=True),
            keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: print(report.line, flush=True)),
        ],
    )

    # Ship float32: rebuild under the float32 policy, then choose the weights on the hold-out
    # slice: the best single epoch, or the average of the last epochs' weights.
    keras.mixed_precision.set_global_policy("float32")
    final = make_model(width=config.width)

    def holdout_accuracy() -> float:
        return float((final.predict(x_hold, batch_size=256, verbose=0).argmax(axis=1) == y_hold).mean())

    final.load_weights(best_path)
    choice = {"weights": f"best epoch {state.get('best_epoch')}", "holdout_accuracy": holdout_accuracy()}
    last_epochs = sorted(epochs_dir.glob("epoch_*.weights.h5"), key=lambda p: int(p.stem.split("_")[1].split(".")[0]))
    last_epochs = last_epochs[-config.average_last:] if config.average_last > 1 else []
    if len(last_epochs) > 1:
        average_weight_files(final, last_epochs)
        numbers = [int(p.stem.split("_")[1].split(".")[0]) for p in last_epochs]
        averaged = {"weights": f"average of epochs {numbers[0]}-{numbers[-1]}", "holdout_accuracy": holdout_accuracy()}
        print(f"hold-out accuracy: {choice['weights']} {choice['holdout_accuracy']:.4f}, "
              f"{averaged['weights']} {averaged['holdout_accuracy']:.4f}", flush=True)
        choice = averaged
    model_path = out / MODEL_FILENAME
    tmp_model = out / f".{MODEL_FILENAME}.tmp.keras"
    final.save(tmp_model)
    os.replace(tmp_model, model_path)
    hold_logits = final.predict(x_hold, batch_size=256, verbose=0)
    if config.flip_tta:  # calibrate the logits the product will use: the mean with the mirror image
        hold_logits = (hold_logits + final.predict(x_hold[:, :, ::-1, :], batch_size=256, verbose=0)) / 2
    temperature = fit_temperature(hold_logits, y_hold)
    ModelInfo(
        temperature=temperature,
        flip_tta=config.flip_tta,
        extra={
            "name": "emojimation_cnn",
            "trained_on": str(config.data),
            **choice,
            "train_config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        },
    ).save(metadata_path(model_path))
    _plot_history(history_csv, out / "learning_curve.png")
    print(f"saved {model_path} ({choice['weights']}, hold-out acc {choice['holdout_accuracy']:.4f}, "
          f"temperature {temperature:.3f})", flush=True)
    return model_path


def append_history(history_csv: Path, row: dict[str, object]) -> None:
    """One epoch's row; the header comes with the first."""
    new_file = not history_csv.exists()
    with history_csv.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new_file:
            writer.writeheader()
        writer.writerow(row)


def trim_history(history_csv: Path, last_epoch: int) -> None:
    """Drop rows past the last finished epoch (a kill between CSV write and backup)."""
    if not last_epoch:
        history_csv.unlink(missing_ok=True)  # starting at epoch 1: drop a killed first epoch's row
        return
    if not history_csv.exists():
        return
    with history_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    kept = [r for r in rows if int(r["epoch"]) <= last_epoch]
    if len(kept) != len(rows) and rows:
        with history_csv.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(kept)


if __name__ == "__main__":  # pragma: no cover - `emojimation train` is the entry point
    logging.basicConfig(level=logging.INFO)
    sys.exit(0 if run(load(TrainConfig, "train")) else 1)
