"""The FER2013 label order, used everywhere (training, model outputs, CSV columns, store)."""

from __future__ import annotations

# FER2013's own order. Never the alphabetical order of folder names: a directory loader's
# default would silently swap `sad` and `neutral`.
EMOTIONS: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
NUM_EMOTIONS = len(EMOTIONS)
EMOTION_INDEX: dict[str, int] = {name: i for i, name in enumerate(EMOTIONS)}
