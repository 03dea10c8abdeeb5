"""Classifier stage: calibrated emotion probabilities for face crops, batched across frames and streams."""

from classifier.stage import run

__all__ = ["run"]
