"""`python -m detector`: one detector worker, importing only this stage and the ground (core)."""

from detector.stage import run
from core.config import DetectorConfig
from core.process import stage_main

stage_main("detector", DetectorConfig, run)
