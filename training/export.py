"""TFLite (LiteRT) export of the trained model: it runs without TensorFlow (fast start) and
is kept beside the Keras file when it is the faster path on CPU (measured in bench/)."""

from __future__ import annotations

import os
from pathlib import Path


def export_tflite(keras_path: Path, out_path: Path) -> Path:
    """Convert a `.keras` model to a float32 `.tflite` with a dynamic batch dimension.

    Keras's own LiteRT exporter is used: converting a traced `tf.function` of this model
    with `TFLiteConverter.from_concrete_functions` produced NaN outputs (Keras 3.15, TF 2.21).
    """
    import keras

    from emojimation.model_io import quiet_tensorflow

    quiet_tensorflow()
    model = keras.saving.load_model(keras_path, compile=False)
    tmp = out_path.with_name(f".{out_path.stem}.{os.getpid()}.tflite")
    model.export(str(tmp), format="litert", verbose=False)
    os.replace(tmp, out_path)
    return out_path
