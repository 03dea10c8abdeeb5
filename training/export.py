"""TFLite export of the trained model, for CPUs where LiteRT beats TensorFlow (measured in bench/)."""

from __future__ import annotations

from pathlib import Path


def export_tflite(keras_path: Path, out_path: Path) -> Path:
    """Convert a `.keras` model to a float32 `.tflite` with a dynamic batch dimension."""
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(keras_path, compile=False)
    spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.float32, name="face")
    function = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function], model)
    data = converter.convert()
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(out_path)
    return out_path
