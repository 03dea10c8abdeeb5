"""Prometheus metrics of a stage process, all defined here; stages only update them.

Every stage (and the relay) builds one `StageMetrics` through its `StageIO` (as `io.metrics`)
and, when `metrics_port` > 0, StageIO serves it at http://METRICS_HOST:METRICS_PORT/metrics.
Every name starts with `emojimation_` and every series carries a `stage` label.

Read at scrape time from the counters StageIO keeps (`core.runtime.Counters`, the
same numbers the stage puts in its status reports, so the two never disagree):

  emojimation_messages_received_total{stage}      every message taken off the input socket
  emojimation_messages_sent_total{stage}          every message handed to the output socket
  emojimation_frames_in_total{stage}              of those received, the ones carrying a frame
                                                  (Frame, Faces, Classified; not Start/End)
  emojimation_frames_out_total{stage}             of those sent, the ones carrying a frame
  emojimation_dropped_total{stage,reason}         every message dropped, by reason (malformed,
                                                  version, duplicate, unexpected, ...)
  emojimation_malformed_messages_total{stage}     the dropped messages that could not be decoded
  emojimation_errors_total{stage}                 processing errors (e.g. a failed detection)
  emojimation_rejected_peers_total{stage,reason}  CurveZMQ handshakes refused on a bound socket:
                                                  unauthorized (a key not in the allow-list),
                                                  handshake (no key, the wrong server key, or a
                                                  handshake broken off)

Updated by the stages through `io.metrics`:

  emojimation_queue_depth{stage}                      gauge: messages waiting inside the stage
                                                      (classifier: the pending batch; aggregator:
                                                      messages held for re-ordering)
  emojimation_batch_size{stage}                       histogram: faces per classifier batch
  emojimation_inference_seconds{stage}                histogram: one classifier model call
  emojimation_capture_to_stored_seconds{stage}        histogram (aggregator): now - capture time of
                                                      each face row when it is written to the store.
                                                      For files the capture time is the start of
                                                      the read plus the frame's time in the file.
  emojimation_reconnects_total{stage}                 counter: a camera ingest calls
                                                      `io.metrics.reconnects.inc()` each time it
                                                      reopens a lost stream

For example, in a stage: `io.metrics.queue_depth.set(len(pending))`,
`with io.metrics.inference_seconds.time(): ...`, `io.metrics.reconnects.inc()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

PREFIX = "emojimation_"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
INFERENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


@dataclass
class Counters:
    """Per-stage counts, reported in status messages and served as metrics by StageMetrics below."""

    received: int = 0
    sent: int = 0
    dropped: int = 0
    errors: int = 0
    drop_reasons: dict[str, int] = field(default_factory=dict)
    frames_in: int = 0  # received messages that carry a frame (Frame, Faces, Classified), not stream control
    frames_out: int = 0
    malformed: int = 0  # received messages that could not be decoded (also counted in drop_reasons)
    rejected: dict[str, int] = field(default_factory=dict)  # refused Curve handshakes, by reason
    restarts: int = 0  # times the supervisor restarted this stage before this process
    resent: int = 0  # ingest: frames sent again (no acknowledgement in time, or a new aggregator)
    resumed: int = 0  # aggregator: streams continued from the rows already stored (restart or --resume)

    def drop(self, reason: str) -> None:
        self.dropped += 1
        self.drop_reasons[reason] = self.drop_reasons.get(reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {"received": self.received, "sent": self.sent, "dropped": self.dropped, "errors": self.errors,
                "drop_reasons": dict(self.drop_reasons), "frames_in": self.frames_in,
                "frames_out": self.frames_out, "malformed": self.malformed, "rejected": dict(self.rejected),
                "restarts": self.restarts, "resent": self.resent, "resumed": self.resumed}

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1


class _CountersCollector(Collector):
    """Exposes a stage's `Counters` as Prometheus counters, read when scraped."""

    def __init__(self, stage: str, counters: "Counters") -> None:
        self.stage = stage
        self.counters = counters

    def describe(self) -> Iterable[Metric]:
        return []  # names are only known once collected (drop reasons vary)

    def collect(self) -> Iterator[Metric]:
        c = self.counters

        def single(name: str, text: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(PREFIX + name, text, labels=["stage"])
            family.add_metric([self.stage], value)
            return family

        def by_reason(name: str, text: str, values: dict[str, int]) -> CounterMetricFamily:
            family = CounterMetricFamily(PREFIX + name, text, labels=["stage", "reason"])
            for reason, value in sorted(dict(values).items()):
                family.add_metric([self.stage, reason], value)
            return family

        yield single("messages_received", "Messages taken off the input socket, valid or not", c.received)
        yield single("messages_sent", "Messages handed to the output socket", c.sent)
        yield single("frames_in", "Received messages that carry a frame (not stream control)", c.frames_in)
        yield single("frames_out", "Sent messages that carry a frame (not stream control)", c.frames_out)
        yield single("malformed_messages", "Received messages that could not be decoded", c.malformed)
        yield single("errors", "Processing errors", c.errors)
        yield single("restarts", "Times the supervisor restarted this stage (dead or hung)", c.restarts)
        yield single("frames_resent", "Frames sent again because they were not stored in time", c.resent)
        yield single("streams_resumed", "Streams continued from the rows already stored", c.resumed)
        yield by_reason("dropped", "Messages dropped, by reason", c.drop_reasons)
        yield by_reason("rejected_peers", "CurveZMQ handshakes refused on a bound socket, by reason", c.rejected)


class StageMetrics:
    """One stage's metrics in its own registry (tests may hold several in one process)."""

    def __init__(self, stage: str, counters: "Counters") -> None:
        self.stage = stage
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_CountersCollector(stage, counters))
        labels = ["stage"]
        self.queue_depth = Gauge(PREFIX + "queue_depth", "Messages waiting inside the stage", labels,
                                 registry=self.registry).labels(stage)
        self.batch_size = Histogram(PREFIX + "batch_size", "Faces per classifier batch", labels,
                                    buckets=BATCH_BUCKETS, registry=self.registry).labels(stage)
        self.inference_seconds = Histogram(PREFIX + "inference_seconds", "Duration of one classifier model call",
                                           labels, buckets=INFERENCE_BUCKETS, registry=self.registry).labels(stage)
        self.capture_to_stored_seconds = Histogram(
            PREFIX + "capture_to_stored_seconds", "From a frame's capture time to its face rows being stored",
            labels, buckets=LATENCY_BUCKETS, registry=self.registry).labels(stage)
        self.reconnects = Counter(PREFIX + "reconnects", "Times a live input was reopened after it was lost",
                                  labels, registry=self.registry).labels(stage)
        self._server = None

    def observe_stored(self, capture_times: Iterable[float], now: float) -> None:
        """Record capture->stored latency for rows written at `now` (clock skew clamps to 0)."""
        for captured in capture_times:
            self.capture_to_stored_seconds.observe(max(0.0, now - captured))

    def serve(self, host: str, port: int) -> None:
        """Serve /metrics in a daemon thread; OSError with a one-line reason if the port is taken."""
        try:
            self._server, _thread = start_http_server(port, host, registry=self.registry)
        except OSError as error:
            raise OSError(f"{self.stage}: cannot serve metrics on {host}:{port} ({error.strerror or error})") from None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
