"""Detector stage: finds faces in frames and cuts model-input crops with the shared preprocessing."""

from detector.stage import run

__all__ = ["run"]
