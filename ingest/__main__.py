"""`python -m ingest`: one ingest worker, importing only this stage and the ground (core)."""

from ingest.stage import run
from core.config import IngestConfig
from core.process import stage_main

stage_main("ingest", IngestConfig, run)
