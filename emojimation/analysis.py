"""`emojimation analyse` and the notebook API `analyse(paths, ...)`: files through the pipeline."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from core.config import AnalyseConfig, default_store_url
from core.errors import DataError, EmojimationError
from core.model_io import ModelInfo, default_pipeline_model, metadata_path
from emojimation.results import Results, collect, write
from core.store import Store
from emojimation.supervisor import FileRun, PipelineError, Supervisor
from ingest.media import MediaInfo, expected_frames, probe, sampling_ratio

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


def model_summary(model: str) -> dict[str, Any]:
    path = Path(model) if model else default_pipeline_model()
    info = ModelInfo.load(metadata_path(path))
    return {"path": str(path), "name": info.extra.get("name", path.stem), "temperature": info.temperature,
            "flip_tta": info.flip_tta, "labels": info.labels}


def run_pipeline(config: AnalyseConfig, inputs: list[MediaInfo], show_progress: bool
                 ) -> tuple[list[tuple[str, int]], list[tuple[str, str]]]:
    """Analyse readable inputs; returns (path, source id) for successes and (path, reason) failures."""
    from tqdm import tqdm

    total = sum(_frames_to_analyse(info, config) for info in inputs)
    options = {**dataclasses.asdict(config), "store": config.store or default_store_url()}
    bar = tqdm(total=total, unit="frame", desc="analysing", disable=not show_progress, file=sys.stderr,
               dynamic_ncols=True, mininterval=0.5)
    with Supervisor(transport=config.transport) as supervisor:
        run = FileRun(supervisor, [info.path for info in inputs], options, on_progress=bar.update)
        try:
            run.start()
            results = run.wait(config.stall_timeout_s)
        finally:
            bar.close()
    done = [(r.path, int(r.source_id)) for r in results if r.status == "done" and r.source_id is not None]
    failed = [(r.path, r.error or "failed") for r in results if r.status != "done"]
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
    good, bad = probe_inputs(paths, config)
    done, failed = run_pipeline(config, good, config.progress) if good else ([], [])
    for path, reason in bad + failed:
        logger.error("%s", reason)
    if not done:
        raise DataError("; ".join(reason for _, reason in bad + failed) or "nothing analysed")
    with Store(config.store) as store:
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


def analyse_command(config: AnalyseConfig) -> int:
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
            done, failed = run_pipeline(config, good, config.progress)
        except PipelineError as error:
            error_line(str(error))
            return 1
    for _path, reason in failed:
        error_line(reason)
    if not done:
        return 1
    store_url = config.store or default_store_url()
    with Store(store_url) as store:
        results = collect(store, done, model_summary(config.model), time.monotonic() - started)
        extra = {}
        if config.annotate:
            from emojimation.annotate import annotate_videos

            Path(config.out).mkdir(parents=True, exist_ok=True)
            extra = annotate_videos(results, Path(config.out))
    results.summary["elapsed_s"] = round(time.monotonic() - started, 3)
    written = write(results, Path(config.out), extra)
    if config.json:
        print(json.dumps(results.summary, indent=2))
    else:
        faces = len(results.detections)
        tracks = len(results.tracks)
        print(f"analysed {len(done)} input(s): {faces} face rows, {tracks} tracks in "
              f"{results.summary['elapsed_s']:.1f} s; wrote {', '.join(str(p) for p in written)}", file=sys.stderr)
    return 0 if not (bad or failed) else 1
