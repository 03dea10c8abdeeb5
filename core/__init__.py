"""Emojimation's ground layer: what every stage, the dashboard and training share.

Messages, configuration, the store, preprocessing, model inference, stage I/O (sockets,
security, metrics) and the process skeleton. It imports no other package of the project:
stages (`ingest`, `detector`, `classifier`, `aggregator`), `dashboard` and `training` sit on
it, and the roof (`emojimation`: CLI, supervisor, orchestration) sits on top of everything.
`tests/test_layers.py` enforces the rule.
"""
