"""Ingest stage: decodes videos (ffmpeg) and images into Frame messages."""

from ingest.stage import run

__all__ = ["run"]
