"""Detector-crop fine-tune: the trained model learns to answer the same on a detector's crop as on the face.

Each training face comes with crops of it made by the pipeline's own detectors after pasting
it into a synthetic frame (training/detector_crops.py). The loss is cross-entropy on the face
and on one of its crops, plus a symmetric KL term that pulls the two answers together: the
pipeline's answer on a video face should not depend on how the detector happened to frame it.

The run resumes from its last finished epoch (`checkpoints-finetune/` in the output folder).
The hold-out slice is the training run's (same fraction and seed), used to refit the
temperature on the logits the product sees: flip-averaged, on faces and on their crops.
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from core.config import PROJECT_ROOT, FinetuneConfig, TrainConfig
from core.emotions import NUM_EMOTIONS
from core.errors import DataError
from core.model_io import (
    ModelInfo, configure_tensorflow_threads, cpu_has_bf16, metadata_path, quiet_tensorflow,
)
from training.checkpoints import EpochCheckpoints
from training.train import MODEL_FILENAME, append_history, class_weights, fit_temperature, trim_history


def _portable(path: Path) -> str:
    """A path for the metadata: relative to the project inside it; as is beside it (the shared
    data); else just its name (the crops cache under the user's home)."""
    path = Path(path).resolve()
    if path.is_relative_to(PROJECT_ROOT):
        return str(path.relative_to(PROJECT_ROOT))
    return str(path) if path.is_relative_to(PROJECT_ROOT.parent) else path.name


def _load_pairs(config: FinetuneConfig) -> dict[str, np.ndarray]:
    from training.detector_crops import load_pairs

    if config.pairs is None or not Path(config.pairs).is_file():
        raise DataError(f"{config.pairs}: no detector-crops file (make one with `emojimation finetune`)")
    try:
        return load_pairs(Path(config.pairs))
    except (OSError, ValueError, KeyError) as error:
        raise DataError(f"{config.pairs}: unreadable detector-crops file ({error})") from None


def holdout_split(labels: np.ndarray, start: Path) -> tuple[np.ndarray, np.ndarray]:
    """(train_idx, holdout_idx) exactly as the start model's training run split `labels`.

    The hold-out must stay unseen by the fine-tune too: it refits the temperature and
    reports the figures, so it is rebuilt from the start model's own `train_config`.
    """
    from training.data import stratified_holdout

    trained = ModelInfo.load(metadata_path(Path(start))).extra.get("train_config", {})
    if trained.get("limit"):
        raise DataError(f"{start}: was trained on a subset (--limit); its hold-out cannot be rebuilt")
    return stratified_holdout(labels, float(trained.get("holdout_fraction", TrainConfig.holdout_fraction)),
                              int(trained.get("seed", TrainConfig.seed)))


# Settings a resumed run must share with the run it resumes.
RESUME_KEYS = ("start", "pairs", "epochs", "batch_size", "learning_rate", "weight_decay", "label_smoothing",
               "consistency", "seed")


def _resume_signature(config: FinetuneConfig) -> dict[str, object]:
    values = asdict(config)
    return {k: str(values[k]) for k in RESUME_KEYS}


def run(config: FinetuneConfig) -> Path:
    """Fine-tune `config.start` on its detector crops; write model, metadata and history to `config.out`."""
    from training.data import load_faces

    if Path(config.out).resolve() / MODEL_FILENAME == Path(config.start).resolve():
        raise DataError(f"{config.start}: --out would overwrite the start model; choose another folder")
    pairs = _load_pairs(config)  # first: a bad file is one line, before the data is decoded
    faces = load_faces(config.data, config.split, require_all=True)
    made_for = int(pairs["meta_faces"]) if "meta_faces" in pairs else None
    if len(pairs["index"]) == 0 or pairs["index"].max() >= len(faces) or made_for not in (None, len(faces)):
        raise DataError(f"{config.pairs}: made for other data than {config.data} ({config.split})")
    train_idx, hold_idx = holdout_split(faces.labels, config.start)
    # The crops of face i are rows crops_by_face[first_crop[i]:first_crop[i + 1]]: an epoch draws
    # one per training face. Faces with no crops in the file (made for a subset) are left out.
    crops_by_face = np.argsort(pairs["index"], kind="stable")
    first_crop = np.searchsorted(pairs["index"][crops_by_face], np.arange(len(faces) + 1))
    has_crops = first_crop[1:] > first_crop[:-1]
    train_idx, hold_idx = train_idx[has_crops[train_idx]], hold_idx[has_crops[hold_idx]]
    if not len(train_idx) or not len(hold_idx):
        raise DataError(f"{config.pairs}: needs crops of training and hold-out faces")
    weights = class_weights(np.bincount(faces.labels[train_idx], minlength=NUM_EMOTIONS), config.class_weight_power)

    quiet_tensorflow()
    import keras
    import tensorflow as tf

    from training.model import make_model

    configure_tensorflow_threads(config.threads, 1 if config.threads else None)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    backup_dir = out / "checkpoints-finetune"
    if config.restart and backup_dir.exists():
        shutil.rmtree(backup_dir)
    backup_dir.mkdir(parents=True, exist_ok=True)
    history_path = out / "history-finetune.csv"

    keras.utils.set_random_seed(config.seed)
    bf16 = config.precision == "bfloat16" or (config.precision == "auto" and cpu_has_bf16())
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if bf16 else "float32")
    start_model = keras.saving.load_model(config.start, compile=False)
    width = int(start_model.get_layer("stem_conv").filters)
    model = make_model(width=width)
    model.set_weights(start_model.get_weights())
    steps_per_epoch = math.ceil(len(train_idx) / config.batch_size)
    total_steps = config.epochs * steps_per_epoch
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate / 10, decay_steps=max(1, total_steps - steps_per_epoch // 4),
        warmup_target=config.learning_rate, warmup_steps=steps_per_epoch // 4, alpha=0.01,
    )
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)
    ce = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing,
                                              reduction="none")

    @tf.function(reduce_retracing=True)
    def train_step(x_face, x_crop, y):
        onehot = tf.one_hot(y, NUM_EMOTIONS)
        w = tf.gather(weights, y)
        n = tf.shape(x_face)[0]
        with tf.GradientTape() as tape:
            logits = tf.cast(model(tf.concat([x_face, x_crop], 0), training=True), tf.float32)
            face, crop = logits[:n], logits[n:]
            label_loss = tf.reduce_mean(w * (ce(onehot, face) + ce(onehot, crop))) / 2
            log_p, log_q = tf.nn.log_softmax(face), tf.nn.log_softmax(crop)
            kl = tf.reduce_sum((tf.exp(log_p) - tf.exp(log_q)) * (log_p - log_q), axis=1)  # KL(p|q) + KL(q|p)
            loss = label_loss + config.consistency * tf.reduce_mean(kl)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return label_loss, tf.reduce_mean(kl)

    checkpoints = EpochCheckpoints(backup_dir, _resume_signature(config))
    first_epoch = checkpoints.last_epoch() + 1
    optimizer.build(model.trainable_variables)
    if first_epoch > 1:
        checkpoints.restore(model, optimizer, first_epoch - 1)
    trim_history(history_path, first_epoch - 1)
    print(f"fine-tuning {config.start.name} on {len(train_idx)} faces with {len(pairs['index'])} crops"
          f" ({', '.join(map(str, pairs['names']))}), {steps_per_epoch} steps/epoch,"
          f" {'mixed_bfloat16' if bf16 else 'float32'}", flush=True)

    for epoch in range(first_epoch, config.epochs + 1):
        epoch_rng = np.random.default_rng([config.seed, epoch])
        started = time.perf_counter()
        picks = epoch_rng.permutation(train_idx)
        counts = first_crop[picks + 1] - first_crop[picks]
        crop_rows = crops_by_face[first_crop[picks] + (epoch_rng.random(len(picks)) * counts).astype(int)]
        sums = np.zeros(2)
        for step in range(steps_per_epoch):
            batch = slice(step * config.batch_size, (step + 1) * config.batch_size)
            x_face = faces.images[picks[batch]].astype(np.float32)
            x_crop = pairs["crops"][crop_rows[batch]].astype(np.float32)
            flip = epoch_rng.random(len(x_face)) < 0.5  # the same mirror for a face and its crop
            x_face[flip], x_crop[flip] = x_face[flip, :, ::-1], x_crop[flip, :, ::-1]
            losses = train_step(x_face[..., None], x_crop[..., None], faces.labels[picks[batch]])
            sums += [float(v) for v in losses]
        row = {"epoch": epoch, "label_loss": sums[0] / steps_per_epoch, "symmetric_kl": sums[1] / steps_per_epoch,
               "seconds": round(time.perf_counter() - started, 1)}
        append_history(history_path, row)
        checkpoints.save(model, optimizer, epoch)
        print(f"epoch {epoch}/{config.epochs}  label loss {row['label_loss']:.4f}  symmetric KL"
              f" {row['symmetric_kl']:.4f}  {row['seconds']:.0f}s", flush=True)

    keras.mixed_precision.set_global_policy("float32")
    final = make_model(width=width)
    in_hold = np.isin(pairs["index"], hold_idx)
    hold_faces = faces.images[hold_idx][..., None].astype(np.float32)
    hold_crops = pairs["crops"][in_hold][..., None].astype(np.float32)
    hold_labels, hold_crop_labels = faces.labels[hold_idx], faces.labels[pairs["index"][in_hold]]
    face_of_crop = np.searchsorted(hold_idx, pairs["index"][in_hold])  # hold_idx is sorted

    def holdout_logits() -> tuple[np.ndarray, np.ndarray]:
        """Flip-averaged logits on the hold-out faces and on their crops, as the product computes them."""
        def flipped(x: np.ndarray) -> np.ndarray:
            return (final.predict(x, batch_size=256, verbose=0)
                    + final.predict(x[:, :, ::-1], batch_size=256, verbose=0)) / 2
        return flipped(hold_faces), flipped(hold_crops)

    def holdout_summary(face_logits: np.ndarray, crop_logits: np.ndarray) -> dict[str, float]:
        """Accuracy on faces and crops, and how often a crop gets its face's answer."""
        face_answer, crop_answer = face_logits.argmax(axis=1), crop_logits.argmax(axis=1)
        return {"holdout_accuracy": round(float((face_answer == hold_labels).mean()), 4),
                "holdout_crop_accuracy": round(float((crop_answer == hold_crop_labels).mean()), 4),
                "holdout_crop_agreement": round(float((crop_answer == face_answer[face_of_crop]).mean()), 4)}

    final.set_weights(start_model.get_weights())
    before = holdout_summary(*holdout_logits())
    final.load_weights(backup_dir / f"epoch_{config.epochs}.weights.h5")
    face_logits, crop_logits = holdout_logits()
    summary = holdout_summary(face_logits, crop_logits)
    temperature = fit_temperature(np.concatenate([face_logits, crop_logits]),
                                  np.concatenate([hold_labels, hold_crop_labels]))
    model_path = out / MODEL_FILENAME
    tmp_model = out / f".{MODEL_FILENAME}.tmp.keras"
    final.save(tmp_model)
    os.replace(tmp_model, model_path)
    previous = ModelInfo.load(metadata_path(Path(config.start)))
    ModelInfo(
        temperature=temperature, flip_tta=True,
        extra={**previous.extra, "finetune": {**summary, "before": before, "config": {
            k: _portable(v) if isinstance(v, Path) else [_portable(p) for p in v] if k == "backgrounds" else v
            for k, v in asdict(config).items()}}},
    ).save(metadata_path(model_path))
    for name, values in (("before", before), ("after", summary)):
        print(f"{name}: hold-out accuracy {values['holdout_accuracy']:.4f} on faces,"
              f" {values['holdout_crop_accuracy']:.4f} on crops; crops agree with their face on"
              f" {values['holdout_crop_agreement']:.4f}", flush=True)
    print(f"saved {model_path} (temperature {temperature:.3f})", flush=True)
    return model_path
