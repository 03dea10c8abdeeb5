"""`python -m classifier`: one classifier worker, importing only this stage and the ground (core)."""

from classifier.stage import run
from core.config import ClassifierConfig
from core.process import stage_main

stage_main("classifier", ClassifierConfig, run)
