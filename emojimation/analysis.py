"""`emojimation analyse` and the notebook API `analyse(paths, ...)`: files through the pipeline."""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import shlex
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from core.config import AggregatorConfig, AnalyseConfig, ClassifierConfig, DetectorConfig, IngestConfig, default_store_url
from core.errors import DataError, ModelError
from core.messages import Status, StatusEvent
from core.model_io import ModelInfo, metadata_path, model_members
from core.store import Store
from emojimation.supervisor import PipelineError, RestartBudget, Supervisor, describe_death, record_event
from emojimation.topology import Topology, boot
from emojimation.zygote import Zygote, stage_environment
from ingest.media import MediaInfo, expected_frames, probe, sampling_ratio

if TYPE_CHECKING:  # results (pandas) is imported once the stages are starting, not before
    from emojimation.results import Results

logger = logging.getLogger(__name__)


def error_line(text: str) -> None:
    print(f"emojimation: error: {text}", file=sys.stderr, flush=True)


def probe_inputs(paths: list[str], config: AnalyseConfig) -> tuple[list[MediaInfo], list[tuple[str, str]]]:
    """Split inputs into readable ones and (path, reason) failures, before any process starts."""
    good, bad = [], []
    seen: set[str] = set()
    for path in paths:
        resolved = str(Path(path).resolve())
        if resolved in seen:  # the same file twice would only replace its own results
            continue
        seen.add(resolved)
        try:
            good.append(probe(path))
        except DataError as error:
            bad.append((path, str(error)))
    return good, bad


def _frames_to_analyse(info: MediaInfo, config: AnalyseConfig) -> int:
    if info.kind == "image":
        return info.frames
    return expected_frames(info.frames, None if config.every_frame else sampling_ratio(info.fps, config.fps))


INGEST = "ingest"  # a file run's one ingest process


@dataclass
class StreamResult:
    index: int
    path: str
    status: str = "pending"  # pending | started | done | failed
    source_id: int | None = None
    expected_frames: int = 0
    frames_analysed: int = 0
    error: str = ""


@dataclass
class FileRun:
    """One `analyse` run over files: the stage processes, results per input, progress.

    A stage that dies, or hangs (no heartbeat for `heartbeat_timeout_s`: killed first), is
    started again after a backoff, at most `budget.limit` times a minute; nothing it held is
    lost, because ingest sends again what the aggregator has not acknowledged as stored."""

    supervisor: Supervisor
    inputs: list[str]
    topology: Topology
    on_progress: Callable[[int], None] = lambda frames: None
    store_url: str = ""  # restarts and hangs are recorded here as events
    heartbeat_timeout_s: float = 10.0
    budget: RestartBudget = field(default_factory=RestartBudget)
    results: list[StreamResult] = field(default_factory=list)
    by_stream: dict[str, StreamResult] = field(default_factory=dict)
    ingest_done: bool = False
    last_progress: float = 0.0
    restart_at: dict[str, float] = field(default_factory=dict)  # a dead stage's name -> when it starts again

    def start(self) -> None:
        self.results = [StreamResult(i, path) for i, path in enumerate(self.inputs)]
        # Ingest starts at once too: it decodes and queues frames (blocking at the high-water
        # mark) while the classifier is still loading its model, instead of after it.
        boot(self.supervisor, self.topology)

    def _apply(self, report: Status) -> None:
        """Fold one status report into the run's state."""
        if report.event != "progress":
            self.last_progress = time.monotonic()
        if report.event == StatusEvent.FINISHED and report.stage == "ingest":
            self.ingest_done = True
        result = self.by_stream.get(report.stream)
        if result is None:
            return
        if report.event == StatusEvent.INPUT_STARTED:
            result.expected_frames = int(report.detail.get("expected_frames", 0))
            if result.status == "pending":  # the aggregator's "done" may arrive first
                result.status = "started"
        elif report.event == StatusEvent.INPUT_FAILED:
            result.status, result.error = "failed", report.detail.get("error", "failed")
        elif report.event in (StatusEvent.PROGRESS, StatusEvent.DONE):
            advanced = int(report.detail.get("frames_analysed", 0)) - result.frames_analysed
            result.frames_analysed += advanced
            result.source_id = report.detail.get("source_id", result.source_id)
            if advanced:
                self.last_progress = time.monotonic()
                self.on_progress(advanced)
            if report.event == StatusEvent.DONE:
                result.status = "done"
        elif report.event == StatusEvent.FAILED:
            result.status, result.error = "failed", report.detail.get("error", "failed")
            result.source_id = report.detail.get("source_id", result.source_id)

    def wait(self, stall_timeout_s: float = 60.0) -> list[StreamResult]:
        self.by_stream = {f"in/{r.index}": r for r in self.results}
        self.ingest_done = False
        self.last_progress = time.monotonic()
        while True:
            for report in self.supervisor.statuses(200):
                self._apply(report)
            # Every input stored or failed: done (ingest, waiting for its last acks, is not waited for).
            if all(r.status in ("done", "failed") for r in self.results):
                return self.results
            self._revive()
            if time.monotonic() - self.last_progress > stall_timeout_s:
                raise PipelineError(f"no progress for {stall_timeout_s:.0f} s; the pipeline is stuck")

    def _revive(self) -> None:
        """Kill what hung; start again what died, after its backoff, while its budget lasts."""
        for child in self.supervisor.kill_hung(self.heartbeat_timeout_s):
            self._event("stage-hung", f"{child.name} sent no status for {self.heartbeat_timeout_s:g} s "
                                      "and was killed")
        now = time.monotonic()
        for child in self.supervisor.children:
            if child.process is None or child.process.poll() is None:
                continue
            if child.name == INGEST and not self.ingest_done:
                for report in self.supervisor.statuses(500):  # it reports "finished" just before exiting
                    self._apply(report)
            if child.name == INGEST and self.ingest_done:
                continue  # its work is done (every stream it sent is stored)
            if child.name in self.restart_at:
                if now >= self.restart_at[child.name]:
                    del self.restart_at[child.name]
                    self.supervisor.respawn(child)
                continue
            delay = self.budget.spend(child.name, now)
            if delay is None:
                raise PipelineError(f"{describe_death(child)}; restarted {self.budget.limit} times in "
                                    f"{self.budget.window_s:.0f} s, giving up")
            logger.warning("%s; restarting it in %.2f s", describe_death(child), delay)
            self._event("stage-restarted", describe_death(child))
            self.restart_at[child.name] = now + delay

    def _event(self, kind: str, message: str) -> None:
        if self.store_url:
            record_event(self.store_url, kind, message)


def file_topology(config: AnalyseConfig, paths: list[str], run: str = "", resume_command: str = "") -> Topology:
    """The pipeline `analyse` runs: one ingest streaming every input, detector and classifier
    workers, one aggregator writing to the store and acknowledging what it stored to ingest."""
    return Topology(
        ingests={INGEST: IngestConfig(inputs=paths, fps=config.fps, every_frame=config.every_frame,
                                      max_side=config.max_side, stream_prefix="in", run=run,
                                      resume_command=resume_command, group_frames=max(1, config.detect_every))},
        acknowledged=True,
        detector=DetectorConfig(detector=config.detector, detect_every=config.detect_every,
                                search_every=config.search_every),
        detectors=config.detector_workers,
        classifier=ClassifierConfig(model=config.model, forward_crops=config.thumbnails), classifiers=config.workers,
        aggregator=AggregatorConfig(store=config.store or default_store_url(), thumbnails=config.thumbnails,
                                    min_track_frames=config.min_track_frames, model_name=model_name(config.model)),
    )


def model_name(model: str) -> str:
    """The name the store records for the model that classified (the shipped one when empty)."""
    return model_summary(model)["name"]


def model_summary(model: str) -> dict[str, Any]:
    """summary.json's `model`: the file, its name, temperature and flip TTA; for an ensemble
    (`--model ensemble` or a comma list) its members' summaries, and no temperature of its own."""
    members = model_members(model)
    if len(members) > 1:
        parts = [model_summary(str(path)) for path in members]
        return {"path": model, "name": "ensemble of " + " + ".join(part["name"] for part in parts),
                "temperature": None, "flip_tta": None, "labels": parts[0]["labels"], "members": parts}
    path = members[0]
    if not path.is_file():  # before any stage starts, not after the classifier's restarts
        raise ModelError(f"{path}: model file not found")
    info = ModelInfo.load(metadata_path(path))
    return {"path": str(path), "name": info.extra.get("name", path.stem), "temperature": info.temperature,
            "flip_tta": info.flip_tta, "labels": info.labels}


@dataclass
class RunPlan:
    """Which run this is: a new one, or with `--resume` the latest run of these inputs, and the
    inputs that run already stored completely (path -> source id: not analysed again)."""

    run: str
    stored: dict[str, int] = field(default_factory=dict)


def settings_key(config: AnalyseConfig) -> str:
    """What decides an analysis's rows (sampling, detector, model, scaling), hashed: the tail of
    every run id, so `--resume` never carries on a run made with other settings."""
    settings = [None if config.every_frame else config.fps, config.detector, model_name(config.model),
                config.max_side]
    # The schedule's settings too, when not the defaults (so runs interrupted before they counted resume).
    schedule = {"detect_every": config.detect_every, "search_every": config.search_every}
    defaults = {name: getattr(AnalyseConfig, name) for name in schedule}
    if schedule != defaults:
        settings.append(schedule)
    return hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:8]


def plan_run(config: AnalyseConfig, inputs: list[MediaInfo]) -> RunPlan:
    """A new run id; with `resume`, the latest run of these inputs if it analysed them with the
    same settings, its finished inputs, and a `run-resumed` event per input it carries on."""
    new = RunPlan(f"{uuid.uuid4().hex[:12]}-{settings_key(config)}")
    if not config.resume or not inputs:
        return new
    uris = {info.path: str(Path(info.path).resolve()) for info in inputs}
    with Store(config.store or default_store_url()) as store:
        latest = store.latest_run(list(uris.values()))
        run = str(json.loads(latest["options"])["run"]) if latest is not None else ""
        if not run.endswith(f"-{settings_key(config)}"):
            logger.warning("--resume: no earlier run of these inputs with these settings; starting afresh")
            return new
        plan = RunPlan(run)
        for path, uri in uris.items():
            row = store.run_source(uri, plan.run)
            if row is None:
                continue
            if row["status"] == "done":
                plan.stored[path] = int(row["id"])
            elif row["status"] in ("analysing", "interrupted"):
                store.add_event(int(row["id"]), "run-resumed",
                                f"{row['name']}: resumed after {int(row['frames_analysed'])} stored frames",
                                {"run": plan.run, "frames": int(row["frames_analysed"])})
    return plan


def run_pipeline(config: AnalyseConfig, inputs: list[MediaInfo], show_progress: bool, resume_command: str = "",
                 zygote: Zygote | None = None) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """Analyse readable inputs; returns (path, source id) for successes and (path, reason) failures.
    With `config.resume`, inputs the resumed run stored completely are not analysed again.
    `zygote`: one already started (`Zygote.warm`), which the run's supervisor then closes."""
    from tqdm import tqdm

    plan = plan_run(config, inputs)
    todo = [info for info in inputs if info.path not in plan.stored]
    total = sum(_frames_to_analyse(info, config) for info in inputs)
    paths = [info.path for info in todo]
    bar = tqdm(total=total, unit="frame", desc="analysing", disable=not show_progress, file=sys.stderr,
               dynamic_ncols=True, mininterval=0.5)
    bar.update(sum(_frames_to_analyse(info, config) for info in inputs if info.path in plan.stored))
    results: list[StreamResult] = []
    if paths:
        with Supervisor(transport=config.transport, zygote=zygote) as supervisor:
            run = FileRun(supervisor, paths, file_topology(config, paths, plan.run, resume_command),
                          on_progress=bar.update, store_url=config.store or default_store_url(),
                          heartbeat_timeout_s=config.heartbeat_timeout_s,
                          budget=RestartBudget(limit=config.restart_limit))
            # The tables are written with pandas once the run ends; importing it (0.6 s of CPU)
            # while the stages work takes that off the wall time. (A lower priority for this
            # thread does nothing here: each stage runs in a session of its own, and with the
            # kernel's autogroup scheduling, nice ranks threads only within their session.)
            importer = threading.Thread(target=importlib.import_module, args=("emojimation.results",),
                                        name="import-results", daemon=True)
            try:
                run.start()
                importer.start()
                results = run.wait(config.stall_timeout_s)
            finally:
                bar.close()
                if importer.is_alive():
                    importer.join()  # no second import of pandas from this thread while it runs
    bar.close()
    finished = {r.path: r for r in results}
    done, failed = [], []
    for info in inputs:
        result = finished.get(info.path)
        if info.path in plan.stored:
            done.append((info.path, plan.stored[info.path]))
        elif result is not None and result.status == "done" and result.source_id is not None:
            done.append((info.path, int(result.source_id)))
        else:
            failed.append((info.path, (result.error if result else "") or "failed"))
    return done, failed


def analyse(paths: list[str] | str, out: str | None = None, **options: Any) -> Results:
    """Notebook API: analyse files and return the tables as pandas DataFrames.

    Options are AnalyseConfig's fields (fps, every_frame, detector, model, workers, store,
    thumbnails, ...). Raises EmojimationError if no input could be analysed.
    """
    paths = [paths] if isinstance(paths, str) else list(paths)
    options.setdefault("progress", False)
    store_dir = None
    if not options.get("store"):
        store_dir = tempfile.TemporaryDirectory(prefix="emojimation-store-")
        options["store"] = f"sqlite:///{store_dir.name}/results.db"
    config = AnalyseConfig(inputs=paths, **options)
    started = time.monotonic()
    with Zygote(stage_environment()).warm() as zygote:  # its imports overlap the probing (cli.cmd_analyse)
        good, bad = probe_inputs(paths, config)
        done, failed = run_pipeline(config, good, config.progress, zygote=zygote) if good else ([], [])
    for path, reason in bad + failed:
        logger.error("%s", reason)
    if not done:
        raise DataError("; ".join(reason for _, reason in bad + failed) or "nothing analysed")
    with Store(config.store) as store:
        from emojimation.results import collect, write

        results = collect(store, done, model_summary(config.model), time.monotonic() - started)
    if out:
        write(results, Path(out))
    if store_dir is not None:
        store_dir.cleanup()
    return results


def _interrupt_on_sigterm() -> None:
    """SIGTERM behaves like Ctrl-C: the supervisor's clean-up runs and no output is written."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def resume_command(argv: list[str]) -> str:
    """The command line that resumes this run (shown by the dashboard for an interrupted source)."""
    return shlex.join(["emojimation", *argv, *([] if "--resume" in argv else ["--resume"])])


def analyse_command(config: AnalyseConfig, zygote: Zygote | None = None) -> int:
    """`emojimation analyse`; `zygote`: the stages' zygote, already started (cli.cmd_analyse)."""
    _interrupt_on_sigterm()
    started = time.monotonic()
    Store(config.store or default_store_url()).close()  # a bad or unreachable store: one line, before any stage
    good, bad = probe_inputs(config.inputs, config)
    for _path, reason in bad:
        error_line(reason)
    done: list[tuple[str, int]] = []
    failed: list[tuple[str, str]] = []
    if good:
        try:
            done, failed = run_pipeline(config, good, config.progress, resume_command(sys.argv[1:]), zygote)
        except PipelineError as error:
            error_line(str(error))
            return 1
    for _path, reason in failed:
        error_line(reason)
    if not done:
        return 1
    store_url = config.store or default_store_url()
    from emojimation.results import collect, write

    with Store(store_url) as store:
        results = collect(store, done, model_summary(config.model), time.monotonic() - started)
        extra = {}
        if config.annotate:
            from emojimation.annotate import annotate_videos

            Path(config.out).mkdir(parents=True, exist_ok=True)
            extra = annotate_videos(results, Path(config.out))
    results.summary["elapsed_s"] = round(time.monotonic() - started, 3)
    written = write(results, Path(config.out), extra)
    if config.annotate:  # the dashboard's player shows the annotated MP4 (issue 20)
        from emojimation.annotate import record_annotated

        record_annotated(store_url, done, results.summary, Path(config.out))
    if config.json:
        print(json.dumps(results.summary, indent=2))
    else:
        faces = len(results.detections)
        tracks = len(results.tracks)
        print(f"analysed {len(done)} input(s): {faces} face rows, {tracks} tracks in "
              f"{results.summary['elapsed_s']:.1f} s; wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0 if not (bad or failed) else 1
