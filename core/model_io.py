"""Loading the shipped emotion model and turning face inputs into calibrated probabilities.

A model is a Keras file (`*.keras`) with a metadata file beside it (`*.json`: labels,
temperature, test-time augmentation, measured metrics). Both training's `evaluate` and the
classifier stage go through `EmotionModel`, so every probability the product shows is the
same calibrated one. TensorFlow is imported lazily: stages that never classify stay light.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from core.config import DEFAULT_MODEL_PATH, PRECISIONS, PROJECT_ROOT
from core.emotions import EMOTIONS
from core.errors import ModelError
from core.preprocess import INPUT_SIZE

# The same weights exported for LiteRT (int8 weights): what classifies by default, because it
# starts in well under a second instead of importing TensorFlow (~2.5 s), which dominates short
# files, and runs faster per crop (docs/benchmarks.md).
DEFAULT_PIPELINE_MODEL_PATH = PROJECT_ROOT / "models" / "emojimation_cnn.tflite"


# `--model ensemble`: the project's own models answering together (their mean calibrated
# probabilities). The manifest lists the members, relative to models/; measured in models/README.md.
ENSEMBLE = "ensemble"
ENSEMBLE_MANIFEST = PROJECT_ROOT / "models" / "ensemble.json"


def default_model() -> Path:
    """The one answer to "which model classifies when none is named": the pipeline, `evaluate`
    and the Python API all use it (the LiteRT export, or the Keras file if there is no export)."""
    return DEFAULT_PIPELINE_MODEL_PATH if DEFAULT_PIPELINE_MODEL_PATH.is_file() else DEFAULT_MODEL_PATH


@dataclass
class ModelInfo:
    """What is saved beside the weights in `<model>.json`."""

    labels: list[str] = field(default_factory=lambda: list(EMOTIONS))
    temperature: float = 1.0
    flip_tta: bool = False
    # With flip TTA, only faces whose unmirrored answer is less sure than this (top calibrated
    # probability) are run mirrored too; 1.0 mirrors every face. Measured for the shipped model
    # on FER2013 val (models/README.md): 0.7 mirrors 43 % of faces at the same accuracy.
    flip_below: float = 1.0
    input_size: int = INPUT_SIZE
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "ModelInfo":
        if not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ModelError(f"{path}: unreadable model metadata ({error})") from None
        info = cls(
            labels=list(data.get("labels", EMOTIONS)),
            temperature=float(data.get("temperature", 1.0)),
            flip_tta=bool(data.get("flip_tta", False)),
            flip_below=float(data.get("flip_below", 1.0)),
            input_size=int(data.get("input_size", INPUT_SIZE)),
            extra={k: v for k, v in data.items()
                   if k not in {"labels", "temperature", "flip_tta", "flip_below", "input_size"}},
        )
        if info.labels != list(EMOTIONS):
            raise ModelError(f"{path}: model labels {info.labels} are not FER2013's order {list(EMOTIONS)}")
        return info

    def save(self, path: Path) -> None:
        data = {"labels": self.labels, "temperature": self.temperature, "flip_tta": self.flip_tta,
                "flip_below": self.flip_below, "input_size": self.input_size, **self.extra}
        write_json_atomic(path, data)


def write_json_atomic(path: Path, data: dict) -> None:
    """Model metadata and training state files: replaced whole, so a kill never leaves half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def metadata_path(model_path: Path) -> Path:
    return model_path.with_suffix(".json")


def configure_tensorflow_threads(intra_op: int | None = None, inter_op: int | None = None) -> None:
    """Set TF's thread pools before first use: several TF processes on few cores oversubscribe."""
    import tensorflow as tf

    if intra_op:
        tf.config.threading.set_intra_op_parallelism_threads(intra_op)
    if inter_op:
        tf.config.threading.set_inter_op_parallelism_threads(inter_op)


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null: TensorFlow's C++ runtime logs CUDA and CPU-feature
    lines on import and first use, ignoring TF_CPP_MIN_LOG_LEVEL, and a user's stderr should
    carry our messages only. Python exceptions raised inside still propagate normally."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_tensorflow() -> None:
    """Import TensorFlow (and start its runtime) without its start-up chatter on stderr."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import logging

    for name in ("tensorflow", "absl", "keras", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if "tensorflow" in sys.modules:
        return
    with native_stderr_silenced():
        import tensorflow  # noqa: F401


def cpu_has_bf16() -> bool:
    """True on CPUs with native bfloat16 arithmetic (AVX512-BF16 or AMX), where oneDNN runs bf16 fast."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def with_compute_dtype(model: Any, policy: str) -> Any:
    """A copy of `model` computing under `policy` (e.g. "mixed_bfloat16"), same weights.

    The logits layer stays float32 so the softmax and calibration see full-precision values.
    """
    import keras

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        if layer.name != "logits":
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


class TfliteLogits:
    """Logits from a `.tflite` export through LiteRT, without importing TensorFlow.

    Resizing an interpreter's input reallocates it, so there is one interpreter per
    power-of-two batch size, made when that size is first used, and a batch runs as its binary
    decomposition (11 = 8 + 2 + 1).
    LiteRT's cost per crop is about the same at every batch size here (one thread: 0.9-1.1 ms
    for the shipped int8 export at 1-16, 3.3 ms for float32 at 1-8), so padding a batch up to
    a bucket would only waste work.
    """

    BUCKETS = (1, 2, 4, 8, 16, 32, 64)

    def __init__(self, path: Path, threads: int) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            raise ModelError("a .tflite model needs the ai-edge-litert package") from None
        self.path, self.threads, self.make = path, threads, Interpreter
        # Read once: an interpreter made later (a batch size first used hours into a camera's
        # run) gets the same weights even if the file at `path` was replaced or removed since.
        self.content = path.read_bytes()
        self.interpreters: dict[int, tuple[Any, int, int]] = {}
        self._interpreter(1)  # a bad file fails here, at load

    def _interpreter(self, bucket: int) -> tuple[Any, int, int]:
        """The interpreter for `bucket` faces, made on first use: a run uses few batch sizes,
        and each costs 15 ms of CPU and its own memory to allocate."""
        if bucket not in self.interpreters:
            try:
                interpreter = self.make(model_content=self.content, num_threads=self.threads)
                index = interpreter.get_input_details()[0]["index"]
                interpreter.resize_tensor_input(index, [bucket, INPUT_SIZE, INPUT_SIZE, 1])
                interpreter.allocate_tensors()
            except (ValueError, RuntimeError) as error:
                raise ModelError(f"{self.path}: cannot load TFLite model ({error})") from None
            self.interpreters[bucket] = (interpreter, index, interpreter.get_output_details()[0]["index"])
        return self.interpreters[bucket]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        outputs = []
        start = 0
        while start < len(x):
            bucket = next(b for b in reversed(self.BUCKETS) if b <= len(x) - start)
            interpreter, input_index, output_index = self._interpreter(bucket)
            interpreter.set_tensor(input_index, np.ascontiguousarray(x[start:start + bucket], np.float32))
            interpreter.invoke()
            outputs.append(interpreter.get_tensor(output_index).copy())
            start += bucket
        return np.concatenate(outputs)


class EmotionModel:
    """A loaded model: `probabilities(faces)` for uint8 faces (N, 48, 48) → (N, 7) calibrated.

    A `.keras` file runs on TensorFlow; `precision` is "float32", "bfloat16", or "auto"
    (bfloat16 where the CPU computes it natively, float32 elsewhere: docs/benchmarks.md).
    A `.tflite` export runs on LiteRT (float activations; the shipped one has int8 weights)
    and starts without importing TensorFlow.
    """

    def __init__(self, path: str | Path | None = None, flip_tta: bool | None = None,
                 precision: str = "auto", threads: int = 1) -> None:
        self.path = Path(path) if path else default_model()
        self.name = str(self.path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: model file not found")
        self.info = ModelInfo.load(metadata_path(self.path))
        self.flip_tta = self.info.flip_tta if flip_tta is None else flip_tta
        if precision not in PRECISIONS:
            raise ModelError(f"precision {precision!r}: use auto, float32 or bfloat16")
        if self.path.suffix == ".tflite":
            self.precision = "float32"
            self._run = TfliteLogits(self.path, threads)
            return
        quiet_tensorflow()
        import keras
        import tensorflow as tf

        try:
            with native_stderr_silenced():  # the runtime's first use logs a CUDA probe
                self.keras_model = keras.saving.load_model(self.path, compile=False)
        except Exception as error:  # Keras raises many types for a bad file
            raise ModelError(f"{self.path}: cannot load model ({type(error).__name__}: {error})") from None
        shape = tuple(self.keras_model.input_shape[1:])
        if shape != (INPUT_SIZE, INPUT_SIZE, 1) or self.keras_model.output_shape[-1] != len(EMOTIONS):
            raise ModelError(f"{self.path}: expected input ({INPUT_SIZE}, {INPUT_SIZE}, 1) and {len(EMOTIONS)} outputs, "
                             f"got {shape}")
        self.precision = "bfloat16" if precision == "bfloat16" or (precision == "auto" and cpu_has_bf16()) \
            else "float32"
        model = self.keras_model
        if self.precision == "bfloat16":
            model = with_compute_dtype(model, "mixed_bfloat16")
        # A traced call avoids model.predict's per-call overhead (~40 ms) on small batches.
        traced = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
        self._run = lambda x: traced(x).numpy()

    def logits(self, faces: np.ndarray, flip_tta: bool | None = None) -> np.ndarray:
        """Raw (uncalibrated) logits; with flip TTA the mean of the face's and its mirror's (only
        for the faces the model is unsure of, when the model's `flip_below` is under 1)."""
        faces = np.asarray(faces)
        if faces.ndim == 2:
            faces = faces[None]
        if len(faces) == 0:
            return np.zeros((0, len(EMOTIONS)), dtype=np.float32)
        x = faces.reshape(-1, INPUT_SIZE, INPUT_SIZE, 1).astype(np.float32)
        if (self.flip_tta if flip_tta is None else flip_tta) and self.info.flip_below < 1.0:
            plain = self._run(x).astype(np.float32)
            unsure = softmax(plain / self.info.temperature).max(axis=-1) < self.info.flip_below
            if unsure.any():
                plain[unsure] = (plain[unsure] + self._run(np.ascontiguousarray(x[unsure][:, :, ::-1, :]))) / 2.0
            return plain
        if self.flip_tta if flip_tta is None else flip_tta:
            # One call for faces and mirrors: fewer, larger batches.
            both = self._run(np.concatenate([x, x[:, :, ::-1, :]]))
            return ((both[:len(x)] + both[len(x):]) / 2.0).astype(np.float32)
        return self._run(x).astype(np.float32)

    def probabilities(self, faces: np.ndarray, flip_tta: bool | None = None) -> np.ndarray:
        return softmax(self.logits(faces, flip_tta) / self.info.temperature)

    def probabilities_before_and_after_scaling(self, faces: np.ndarray, flip_tta: bool | None = None
                                               ) -> tuple[np.ndarray, np.ndarray]:
        """(softmax of the raw logits, calibrated probabilities): calibration reports need both."""
        logits = self.logits(faces, flip_tta)
        return softmax(logits), softmax(logits / self.info.temperature)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def model_members(model: str | Path | None) -> list[Path]:
    """A `--model` value as the model files it names. Empty: the shipped model. `ensemble`: the
    members models/ensemble.json lists. Commas separate the members of an ensemble
    (`a.tflite,b.keras`), unless the whole value names an existing file."""
    if model is None or not str(model).strip():
        return [default_model()]
    text = str(model)
    if text == ENSEMBLE and not Path(text).is_file():
        try:
            names = json.loads(ENSEMBLE_MANIFEST.read_text())["members"]
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as error:
            raise ModelError(f"{ENSEMBLE_MANIFEST}: cannot read the ensemble's members ({error})") from None
        if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise ModelError(f"{ENSEMBLE_MANIFEST}: `members` must be a non-empty list of model file names")
        return [ENSEMBLE_MANIFEST.parent / name for name in names]
    if "," not in text or Path(text).is_file():
        return [Path(text)]
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise ModelError(f"--model {text!r}: an empty name in the list (separate model files with single commas)")
    return [Path(part) for part in parts]


class EnsembleModel:
    """Several models answering as one: the mean of their calibrated probabilities, each member
    with its own temperature and flip policy. Costs the sum of its members' time."""

    def __init__(self, paths: list[Path], flip_tta: bool | None = None, precision: str = "auto",
                 threads: int = 1) -> None:
        if not paths:
            raise ModelError("an ensemble needs at least one model")
        self.members = [EmotionModel(path, flip_tta, precision, threads) for path in paths]
        self.name = f"ensemble of {len(self.members)} models: {', '.join(str(m.path) for m in self.members)}"

    def probabilities(self, faces: np.ndarray, flip_tta: bool | None = None) -> np.ndarray:
        return sum(member.probabilities(faces, flip_tta) for member in self.members) / len(self.members)

    def probabilities_before_and_after_scaling(self, faces: np.ndarray, flip_tta: bool | None = None
                                               ) -> tuple[np.ndarray, np.ndarray]:
        """The means of the members' softmax before and after temperature scaling."""
        pairs = [member.probabilities_before_and_after_scaling(faces, flip_tta) for member in self.members]
        return sum(raw for raw, _ in pairs) / len(pairs), sum(scaled for _, scaled in pairs) / len(pairs)


def load_model(model: str | Path | None = None, flip_tta: bool | None = None, precision: str = "auto",
               threads: int = 1) -> "EmotionModel | EnsembleModel":
    """The model (or ensemble) a `--model` value names (see `model_members`)."""
    members = model_members(model)
    if len(members) == 1:
        return EmotionModel(members[0], flip_tta, precision, threads)
    return EnsembleModel(members, flip_tta, precision, threads)
