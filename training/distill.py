"""`emojimation distill`: one smaller student learns from several teachers at once.

Each teacher's logits for every training face are computed once (with flip TTA, as the product
runs them) and cached; their softmax at temperature T, averaged over the teachers, is the soft
target. The student minimises

    (1 - soft_weight) * CE(label, student) + soft_weight * T^2 * KL(soft target || softmax(student / T))

with the class weights and augmentation `train` uses, on the faces and, with `pairs`, on their
detector crops (a crop learns its face's soft target). With `consistent`, the teachers instead
answer every augmented batch the student sees (nothing cached; each step runs every teacher too). Checkpoints are written every epoch
(weights and optimizer state); the same command resumes a killed run, and a run with other
settings is refused. At the end the last epochs' weights are averaged, the temperature is
fitted on the hold-out slice, and the int8 LiteRT export the pipeline runs is written beside it.

Output folder (default runs/distill/): emojimation_cnn.keras/.json/.tflite, history-distill.csv,
teacher-targets-*.npz (the cached soft targets), checkpoints-distill/.
"""

from __future__ import annotations

import hashlib
import math
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from core.config import DistillConfig
from core.emotions import NUM_EMOTIONS
from core.errors import DataError, ModelError
from core.model_io import (
    EmotionModel, ModelInfo, configure_tensorflow_threads, cpu_has_bf16, metadata_path, quiet_tensorflow,
)
from training.checkpoints import EpochCheckpoints
from training.train import MODEL_FILENAME, append_history, class_weights, fit_temperature, trim_history

# Settings a resumed run must share with the run it resumes (the rest only affect the end).
RESUME_KEYS = ("teachers", "data", "split", "pairs", "crops_per_face", "epochs", "batch_size", "learning_rate",
               "weight_decay", "warmup_epochs", "holdout_fraction", "class_weight_power", "soft_weight", "temperature",
               "consistent", "label_smoothing", "width", "seed", "limit")


def epoch_crops(crop_faces: np.ndarray, per_face: int, rng: np.random.Generator) -> np.ndarray:
    """Positions in `crop_faces` (each crop's face) of up to `per_face` crops of every face, drawn
    at random: an epoch sees every face and as many of its crops, not all 4 of them (2 renders x
    2 detectors), which would make an epoch 5 times as long."""
    shuffled = rng.permutation(len(crop_faces))
    faces = crop_faces[shuffled]
    by_face = np.argsort(faces, kind="stable")  # each face's crops together, in shuffled order
    sorted_faces = faces[by_face]
    first = np.searchsorted(sorted_faces, sorted_faces, side="left")
    rank = np.arange(len(sorted_faces)) - first  # 0 for a face's first crop, 1 for its second ...
    return np.sort(shuffled[by_face[rank < per_face]])


def _resume_signature(config: DistillConfig) -> dict[str, str]:
    """The settings a resumed run must share with the run it resumes, as text."""
    values = asdict(config)
    # A setting added later is left out at its default, so runs checkpointed before it resume.
    return {k: str(values[k]) for k in RESUME_KEYS if not (k == "consistent" and not values[k])}


def _file_digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def teacher_logits(teachers: list[Path], images: np.ndarray, cache_dir: Path, precision: str) -> np.ndarray:
    """(teachers, N, 7) flip-TTA logits, cached by the teachers' bytes and the faces' bytes."""
    key = _file_digest(teachers) + "-" + hashlib.sha256(images.tobytes()).hexdigest()[:16]
    cache = cache_dir / f"teacher-targets-{key}.npz"
    if cache.exists():
        with np.load(cache) as saved:
            return saved["logits"]
    rows = []
    for path in teachers:
        model = EmotionModel(path, flip_tta=True, precision=precision)
        print(f"teacher {path.name}: logits for {len(images)} faces", flush=True)
        rows.append(np.concatenate([model.logits(images[i:i + 512]) for i in range(0, len(images), 512)]))
    logits = np.stack(rows).astype(np.float32)
    tmp = cache.with_name(cache.stem + ".tmp.npz")
    np.savez(tmp, logits=logits)
    tmp.replace(cache)
    return logits


def consistent_targets(teachers: list, x, temperature: float):
    """The teachers' softmax at `temperature` on the batch `x` itself (the augmented picture the
    student sees), averaged over teachers: (B, 7) float32 (a TensorFlow tensor)."""
    import tensorflow as tf

    answers = [tf.nn.softmax(tf.cast(teacher(x, training=False), tf.float32) / temperature) for teacher in teachers]
    return tf.add_n(answers) / len(answers)


def soft_targets(logits: np.ndarray, temperature: float) -> np.ndarray:
    """The teachers' softmax at `temperature`, averaged over teachers: (N, 7)."""
    z = logits / temperature
    z = z - z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return (p / p.sum(axis=-1, keepdims=True)).mean(axis=0).astype(np.float32)


def run(config: DistillConfig) -> Path:
    """Distil (or resume); returns the student's .keras path (its .tflite export lies beside it)."""
    from training.data import load_faces, stratified_holdout
    from training.detector_crops import load_pairs

    teachers = [Path(t) for t in config.teachers]
    if not teachers:
        raise DataError("distill needs at least one teacher model (--teachers A.keras B.keras ...)")
    for path in teachers:
        if path.suffix != ".keras" or not path.is_file():
            raise ModelError(f"{path}: a teacher must be a trained .keras model file")
    if not 0 <= config.soft_weight <= 1 or config.temperature <= 0:
        raise DataError("soft_weight must lie in 0..1 and temperature be positive")
    faces = load_faces(config.data, config.split, require_all=True)
    images, labels = faces.images, faces.labels
    if config.limit:
        pick = np.sort(np.random.default_rng(config.seed).permutation(len(labels))[: config.limit])
        images, labels = images[pick], labels[pick]
    pairs = load_pairs(config.pairs) if config.pairs else None
    if pairs is not None and config.limit:
        raise DataError("--pairs and --limit exclude each other (the crops index the whole split)")
    if pairs is not None and (len(pairs["index"]) == 0 or pairs["index"].max() >= len(images)):
        raise DataError(f"{config.pairs}: made for other data than {config.data} ({config.split})")
    train_idx, hold_idx = stratified_holdout(labels, config.holdout_fraction, config.seed)
    weights = class_weights(np.bincount(labels[train_idx], minlength=NUM_EMOTIONS), config.class_weight_power)

    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    backup_dir = out / "checkpoints-distill"
    if config.restart and backup_dir.exists():
        shutil.rmtree(backup_dir)
    backup_dir.mkdir(parents=True, exist_ok=True)
    checkpoints = EpochCheckpoints(backup_dir, _resume_signature(config))
    first_epoch = checkpoints.last_epoch() + 1  # refuses other settings before any work

    # TensorFlow's thread pools can be set only before its first use, which the teachers' logits are.
    quiet_tensorflow()
    configure_tensorflow_threads(config.threads, 1 if config.threads else None)
    if config.consistent:  # the teachers answer every augmented batch: nothing to cache
        targets = np.zeros((len(images), NUM_EMOTIONS), np.float32)
    else:
        targets = soft_targets(teacher_logits(teachers, images, out, config.precision), config.temperature)
    train_images, train_labels, train_targets = images[train_idx], labels[train_idx], targets[train_idx]
    faces_in_epoch = len(train_labels)
    crop_faces = np.zeros((0,), np.int64)
    if pairs is not None:  # crops of training faces learn their face's soft target
        in_train = np.isin(pairs["index"], train_idx)
        crop_faces = pairs["index"][in_train]
        train_images = np.concatenate([train_images, pairs["crops"][in_train]])
        train_labels = np.concatenate([train_labels, labels[crop_faces]])
        train_targets = np.concatenate([train_targets, targets[crop_faces]])
    crops_in_epoch = len(epoch_crops(crop_faces, config.crops_per_face, np.random.default_rng(0)))
    examples_per_epoch = faces_in_epoch + crops_in_epoch

    import keras
    import tensorflow as tf

    from training.augment import augment_batch
    from training.average import average_weight_files
    from training.model import make_model

    keras.utils.set_random_seed(config.seed)
    bf16 = config.precision == "bfloat16" or (config.precision == "auto" and cpu_has_bf16())
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if bf16 else "float32")
    model = make_model(width=config.width)
    teacher_models = [_load_teacher(path, bf16, keras) for path in teachers] if config.consistent else []
    steps_per_epoch = math.ceil(examples_per_epoch / config.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=config.learning_rate / 100,
        decay_steps=max(1, (config.epochs - config.warmup_epochs) * steps_per_epoch),
        warmup_target=config.learning_rate, warmup_steps=config.warmup_epochs * steps_per_epoch, alpha=0.01)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=config.weight_decay)
    ce = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=config.label_smoothing,
                                              reduction="none")
    t = float(config.temperature)
    class_weight = tf.constant(weights)

    @tf.function(reduce_retracing=True)
    def train_step(x, y, soft):
        x = augment_batch(x)
        if teacher_models:  # consistent teaching (decided when the step is traced)
            soft = consistent_targets(teacher_models, x, t)
        with tf.GradientTape() as tape:
            logits = tf.cast(model(x, training=True), tf.float32)
            label_loss = ce(tf.one_hot(y, NUM_EMOTIONS), logits)
            log_q = tf.nn.log_softmax(logits / t)
            kl = tf.reduce_sum(soft * (tf.math.log(tf.maximum(soft, 1e-8)) - log_q), axis=1)
            per_face = (1 - config.soft_weight) * label_loss + config.soft_weight * t * t * kl
            loss = tf.reduce_mean(tf.gather(class_weight, y) * per_face)
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        hits = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, 1, output_type=tf.int64), y), tf.float32))
        return loss, hits

    optimizer.build(model.trainable_variables)
    if first_epoch > 1:
        checkpoints.restore(model, optimizer, first_epoch - 1)
    history_path = out / "history-distill.csv"
    trim_history(history_path, first_epoch - 1)
    hold_x = images[hold_idx][..., None].astype(np.float32)
    print(f"distilling {len(teachers)} teacher(s) into a width-{config.width} student"
          f" ({model.count_params():,} parameters) on {faces_in_epoch} faces and {crops_in_epoch} of their"
          f" {len(crop_faces)} detector crops an epoch, {steps_per_epoch} steps/epoch,"
          f" {'mixed_bfloat16' if bf16 else 'float32'}"
          f"{', the teachers answering every augmented batch' if config.consistent else ''}", flush=True)

    for epoch in range(first_epoch, config.epochs + 1):
        started = time.perf_counter()
        rng = np.random.default_rng([config.seed, epoch])
        examples = np.concatenate([np.arange(faces_in_epoch),
                                   faces_in_epoch + epoch_crops(crop_faces, config.crops_per_face, rng)])
        order = examples[rng.permutation(len(examples))]
        loss_sum = hits = 0.0
        for step in range(steps_per_epoch):
            batch = order[step * config.batch_size:(step + 1) * config.batch_size]
            loss, batch_hits = train_step(train_images[batch][..., None].astype(np.float32),
                                          train_labels[batch].astype(np.int64), train_targets[batch])
            loss_sum += float(loss)
            hits += float(batch_hits)
        hold_pred = np.concatenate([model(hold_x[i:i + 512], training=False).numpy().argmax(1)
                                    for i in range(0, len(hold_x), 512)])
        row = {"epoch": epoch, "loss": loss_sum / steps_per_epoch, "accuracy": hits / len(order),
               "holdout_accuracy": float((hold_pred == labels[hold_idx]).mean()),
               "learning_rate": float(schedule(optimizer.iterations)), "seconds": round(time.perf_counter() - started, 1)}
        append_history(history_path, row)
        checkpoints.save(model, optimizer, epoch, keep_weights=config.average_last)  # the average needs them
        print(f"epoch {epoch}/{config.epochs}  loss {row['loss']:.4f}  acc {row['accuracy']:.4f}"
              f"  hold-out acc {row['holdout_accuracy']:.4f}  {row['seconds']:.0f}s", flush=True)

    return _finish(config, teachers, out, backup_dir, images[hold_idx], labels[hold_idx], make_model,
                   average_weight_files, keras)


def _load_teacher(path: Path, bf16: bool, keras):
    """A teacher for consistent teaching: its Keras model, computing in bfloat16 where the student does."""
    from core.model_io import with_compute_dtype

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # Keras raises many types for a bad file
        raise ModelError(f"{path}: cannot load teacher ({type(error).__name__}: {error})") from None
    return with_compute_dtype(model, "mixed_bfloat16") if bf16 else model


def _finish(config: DistillConfig, teachers: list[Path], out: Path, backup_dir: Path, hold_images: np.ndarray,
            hold_labels: np.ndarray, make_model, average_weight_files, keras) -> Path:
    """float32 student from the last epochs' average, calibrated on the hold-out, and its int8 export."""
    from training.export import export_tflite

    keras.mixed_precision.set_global_policy("float32")
    final = make_model(width=config.width)
    kept = sorted(backup_dir.glob("epoch_*.weights.h5"), key=lambda p: int(p.name.split("_")[1].split(".")[0]))
    kept = kept[-max(config.average_last, 1):]
    if len(kept) > 1:
        average_weight_files(final, kept)
    else:
        final.load_weights(kept[-1])
    hold_x = hold_images[..., None].astype(np.float32)
    logits = final.predict(hold_x, batch_size=256, verbose=0)
    if config.flip_tta:
        logits = (logits + final.predict(hold_x[:, :, ::-1, :], batch_size=256, verbose=0)) / 2
    accuracy = float((logits.argmax(1) == hold_labels).mean())
    numbers = [int(p.name.split("_")[1].split(".")[0]) for p in kept]
    model_path = out / MODEL_FILENAME
    tmp = out / f".{MODEL_FILENAME}.tmp.keras"
    final.save(tmp)
    tmp.replace(model_path)
    ModelInfo(temperature=fit_temperature(logits, hold_labels), flip_tta=config.flip_tta, extra={
        "name": "emojimation_cnn",
        "trained_on": str(config.data),
        "weights": f"average of epochs {numbers[0]}-{numbers[-1]}" if len(numbers) > 1 else f"epoch {numbers[0]}",
        "holdout_accuracy": accuracy,
        "distilled_from": [str(t) for t in teachers],
        "distill_config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
    }).save(metadata_path(model_path))
    tflite = export_tflite(model_path, model_path.with_suffix(".tflite"))  # shares the .json metadata
    print(f"saved {model_path} and {tflite.name} (hold-out acc {accuracy:.4f}, flip TTA "
          f"{'on' if config.flip_tta else 'off'})", flush=True)
    return model_path
