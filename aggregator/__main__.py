"""`python -m aggregator`: one aggregator worker, importing only this stage and the ground (core)."""

from aggregator.stage import run
from core.config import AggregatorConfig
from core.process import stage_main

stage_main("aggregator", AggregatorConfig, run)
