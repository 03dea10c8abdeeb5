"""The one boot sequence: which stages run, how many of each, and how they are linked.

`analyse` (and so the dashboard's upload jobs, which run it), and `monitor` describe their
pipeline as a `Topology` of typed stage configs and hand it to `boot`, which gives every
process its addresses and starts them downstream first (aggregator, classifiers, detectors,
then the ingests), so nothing an early stage sends is lost while the next one starts.

Links: each ingest binds its output; every detector connects to every ingest; every
classifier to every detector; the aggregator to every classifier. An ingest whose config
already names `push` addresses (monitor `--stages ingest`) pushes to a remote pipeline instead.
With `acknowledged` (file runs: one ingest), every other stage also connects back to the
ingest's acknowledgement address: the aggregator says there what is stored, and a restarted
stage says hello, so ingest sends again what is not stored (what the dead process held).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from core.config import AggregatorConfig, ClassifierConfig, DetectorConfig, IngestConfig, StageLinks
from emojimation.supervisor import Child, Supervisor


@dataclass
class SharedLinks:
    """Settings every stage of one run gets. With a metrics port, the first stage started serves
    on it, the next on port + 1, and so on (children never share a port). `queue_messages` is
    every link's ZeroMQ high-water mark (StageLinks): the stages' default for file runs, small
    for the monitor's live cameras (MonitorConfig.queue_messages says why)."""

    curve_dir: str = ""
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    log_format: str = "text"
    queue_messages: int = StageLinks.queue_messages


@dataclass
class Topology:
    ingests: dict[str, IngestConfig]  # process name -> its config (inputs or one camera)
    detector: DetectorConfig | None = None  # one config for every detector worker (None: no local pipeline)
    detectors: int = 1
    classifier: ClassifierConfig | None = None
    classifiers: int = 1
    aggregator: AggregatorConfig | None = None
    shared: SharedLinks = field(default_factory=SharedLinks)
    acknowledged: bool = False  # the aggregator acknowledges stored frames to the (one) ingest


def boot(supervisor: Supervisor, topology: Topology, inherit_output: bool = False,
         log_level: str = "WARNING") -> dict[str, Child]:
    """Start every process of `topology`; returns them by name."""
    ingest_addresses = {name: supervisor.address(name) for name in topology.ingests}
    local = topology.detector is not None
    detectors = [supervisor.address(f"detector-{i}") for i in range(topology.detectors)] if local else []
    classifiers = [supervisor.address(f"classifier-{i}") for i in range(topology.classifiers)] if local else []
    plan: list[tuple[str, str, StageLinks]] = []
    acks = supervisor.address("acks") if topology.acknowledged and local else ""
    if local:
        assert topology.classifier is not None and topology.aggregator is not None, "a local pipeline needs all stages"
        assert not acks or len(topology.ingests) == 1, "acknowledgements go back to one ingest"
        plan.append(("aggregator", "aggregator", _linked(topology.aggregator, classifiers, "", acks)))
        plan += [(f"classifier-{i}", "classifier", _linked(topology.classifier, detectors, address, acks))
                 for i, address in enumerate(classifiers)]
        plan += [(f"detector-{i}", "detector",
                  _linked(topology.detector, list(ingest_addresses.values()), address, acks))
                 for i, address in enumerate(detectors)]
    for name, config in topology.ingests.items():
        plan.append((name, "ingest", _linked(config, [], "" if config.push else ingest_addresses[name], acks)))
    children = {}
    for index, (name, module, config) in enumerate(plan):
        config = _with_shared(config, topology.shared, index, supervisor.status_address)
        children[name] = supervisor.spawn(name, module, config, inherit_output=inherit_output, log_level=log_level)
    return children


def _linked(config: Any, connect: list[str], bind: str, acks: str = "") -> Any:
    return dataclasses.replace(config, connect=connect, bind=bind, acks=acks)


def _with_shared(config: Any, shared: SharedLinks, index: int, status: str) -> Any:
    return dataclasses.replace(config, status=status, curve_dir=shared.curve_dir,
                               metrics_port=shared.metrics_port + index if shared.metrics_port else 0,
                               metrics_host=shared.metrics_host, log_format=shared.log_format,
                               queue_messages=shared.queue_messages)
