"""Emojimation's shared core: what every stage and training import (and nothing else).

Dependencies point one way: this package imports no stage (ingest, detector, classifier,
aggregator, dashboard, training). The CLI and supervisor live in `emojimation.cli` /
`emojimation.supervisor` and are the only modules here allowed to import the stages.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`emojimation.analyse(paths, ...)` for notebooks, imported on first use: importing the
    core package must stay light and must not pull in the stages."""
    if name == "analyse":
        from emojimation.analysis import analyse

        return analyse
    raise AttributeError(f"module 'emojimation' has no attribute {name!r}")
