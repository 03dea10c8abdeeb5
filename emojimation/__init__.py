"""Emojimation's shared core: what every stage and training import (and nothing else).

Dependencies point one way: this package imports no stage (ingest, detector, classifier,
aggregator, dashboard, training). The CLI and supervisor live in `emojimation.cli` /
`emojimation.supervisor` and are the only modules here allowed to import the stages.
"""

__version__ = "0.1.0"
