"""Aggregator stage: face tracks, per-track smoothing and emotion segments, written to the store."""

from aggregator.stage import run

__all__ = ["run"]
