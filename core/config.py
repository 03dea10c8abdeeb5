"""Typed configuration for every stage and command, in one place.

Precedence (lowest to highest): the dataclass defaults below, a TOML file (`--config FILE`,
one table per command: `[analyse]`, `[detector]`, ...), environment variables
`EMOJIMATION_<FIELD>` (e.g. `EMOJIMATION_STORE`, `EMOJIMATION_FPS`), then CLI flags.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
import types
import typing
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from core.errors import ConfigError

ENV_PREFIX = "EMOJIMATION_"
# Input files by name: images are read by OpenCV; videos are whatever ffmpeg reads (ingest
# probes every non-image file), and this list only says which uploads the dashboard offers.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
DETECTORS = ("haar", "blazeface", "blazeface-full")
# Short-range BlazeFace with tiles on wide frames: against full range it finds as many faces on
# megamind.avi (fewer false ones), more of the pasted FER2013 faces, and costs 40 % of the time
# (docs/benchmarks.md, sections 2 and 3).
DEFAULT_DETECTOR = "blazeface"
LOG_FORMATS = ("text", "json")


def data_dir() -> Path:
    """Where the default store lives: $EMOJIMATION_HOME, else $XDG_DATA_HOME/emojimation."""
    if os.environ.get("EMOJIMATION_HOME"):
        return Path(os.environ["EMOJIMATION_HOME"])
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "emojimation"


def default_store_url() -> str:
    return f"sqlite:///{data_dir() / 'emojimation.db'}"


@dataclass
class StageLinks:
    """Addresses: each stage binds its output and connects to its upstreams' outputs, or (listen,
    push) binds its input and connects its output, e.g. for a pool of workers across hosts."""

    connect: list[str] = field(default_factory=list)
    bind: str = ""
    status: str = ""  # the supervisor's status socket (optional when a stage runs alone)
    listen: str = ""  # the input (PULL) socket binds here, e.g. an aggregator that scaled classifiers push to
    push: list[str] = field(default_factory=list)  # the output (PUSH) socket connects to these
    curve_dir: str = ""  # CurveZMQ keys folder: tcp:// links encrypted and authenticated (core.security)
    metrics_port: int = 0  # serve Prometheus metrics at http://metrics_host:metrics_port/metrics (0 = off)
    metrics_host: str = "127.0.0.1"
    log_format: str = "text"  # text | json (one JSON object per line)


@dataclass
class RelayConfig(StageLinks):
    """`emojimation relay`: a stateless forwarder from its input (listen/connect) to its output
    (bind/push), where a pool of scaled workers must meet a fixed address."""


@dataclass
class IngestConfig(StageLinks):
    inputs: list[str] = field(default_factory=list)
    stream_prefix: str = field(default_factory=lambda: f"run-{uuid.uuid4().hex[:8]}")
    fps: float = 10.0
    every_frame: bool = False
    max_side: int = 1280  # larger frames are scaled down inside ffmpeg; boxes come back in source pixels
    # Live camera mode (one camera per ingest process; `emojimation monitor` starts them):
    camera: str = ""  # rtsp://, http(s)://, /dev/videoN, a webcam index, or a file (a simulated camera)
    name: str = ""  # the camera's name in the store and dashboard (default: its URL without credentials)
    loop: bool = False  # a file camera starts again at its end
    rtsp_transport: str = "tcp"  # tcp | udp
    stall_s: float = 5.0  # no frame for this long = disconnected: restart ffmpeg
    backoff_s: float = 0.5  # first reconnect delay; doubles per failure, with jitter ...
    backoff_max_s: float = 30.0  # ... up to this
    preview_bind: str = ""  # PUB the frames here for `monitor --preview` (empty = off)


@dataclass
class DetectorConfig(StageLinks):
    detector: str = DEFAULT_DETECTOR
    min_score: float | None = None  # None = the detector's measured default
    min_face: int = 24  # pixels in the (possibly downscaled) frame
    margin: float | None = None  # crop margin; None = the preprocessing default
    threads: int = 1
    max_age_s: float = 0.0  # live: frames captured longer ago are dropped as stale (0 = never)


@dataclass
class ClassifierConfig(StageLinks):
    model: str = ""  # empty = the shipped model
    max_batch: int = 64
    max_wait_ms: float = 15.0
    threads: int = 1
    flip_tta: str = "auto"  # auto (the model's setting) | on | off
    precision: str = "auto"  # auto (bfloat16 on CPUs with native bf16) | float32 | bfloat16


@dataclass
class AggregatorConfig(StageLinks):
    store: str = ""
    thumbnails: bool = False
    smoothing_s: float = 0.5  # time constant of the per-track exponential smoothing
    min_segment_s: float = 0.5  # shorter emotion runs merge into their neighbours
    track_max_gap_s: float = 1.0  # a face unseen for longer starts a new track
    track_min_iou: float = 0.2
    model_name: str = ""
    # Live cameras:
    reorder_window_s: float = 0.5  # a missing (dropped) camera frame is waited for this long, then skipped
    alert_rules: str = ""  # JSON list of alert rules (the monitor passes its config file's [[alerts]])
    retention_days: float = 0.0  # delete camera rows captured longer ago (0 = keep everything)
    results_bind: str = ""  # PUB tracked faces here for `monitor --preview` (empty = off)


@dataclass
class AnalyseConfig:
    inputs: list[str] = field(default_factory=list)
    out: str = "emojimation-out"
    fps: float = 10.0
    every_frame: bool = False
    detector: str = DEFAULT_DETECTOR
    model: str = ""
    workers: int = 1  # classifier workers
    detector_workers: int = 2
    store: str = ""
    annotate: bool = False
    thumbnails: bool = False
    json: bool = False
    progress: bool = True
    max_side: int = 1280
    transport: str = "ipc"  # ipc | tcp (loopback)
    stall_timeout_s: float = 60.0  # no progress for this long = a stuck pipeline: fail clearly


@dataclass
class MonitorConfig:
    """`emojimation monitor`: live cameras until SIGINT/SIGTERM. Cameras and alert rules may also
    come from the config file's [[cameras]] and [[alerts]] tables (emojimation.monitor)."""

    sources: list[str] = field(default_factory=list)  # URL or NAME=URL
    fps: float = 5.0
    detector: str = DEFAULT_DETECTOR
    model: str = ""
    workers: int = 1  # classifier workers
    detector_workers: int = 1
    store: str = ""
    loop: bool = False
    rtsp_transport: str = "tcp"
    stall_s: float = 5.0
    backoff_max_s: float = 30.0
    max_age_s: float = 1.0  # frames older than this when a detector gets them are dropped (newest wins)
    retention_days: float = 0.0
    preview: bool = False
    stages: str = "all"  # all | ingest (only the camera ingests, pushing to `push`: see docs/deploy.md)
    push: str = ""
    max_side: int = 1280
    status_every_s: float = 30.0  # how often a per-camera status line is logged
    json: bool = False  # print a JSON summary per camera on stdout at exit
    # Passed on to every stage the monitor starts (see StageLinks):
    curve_dir: str = ""
    metrics_port: int = 0  # the first stage serves here, the next on +1, ... (the log says which is which)
    metrics_host: str = "127.0.0.1"
    log_format: str = "text"


T = TypeVar("T")


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Turn a TOML or environment value into the field's type, with a clear error."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    try:
        if origin in (typing.Union, types.UnionType):
            if value in (None, "", "none", "None"):
                return None
            return _coerce(name, value, next(a for a in args if a is not type(None)))
        if origin is list:
            items = value.split(",") if isinstance(value, str) else list(value)
            return [_coerce(name, item, args[0]) for item in items if item != ""]
        if annotation is bool:
            if isinstance(value, bool):
                return value
            lowered = str(value).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(value)
        if annotation in (int, float, str):
            return annotation(value)
    except (ValueError, TypeError, StopIteration):
        pass
    else:
        return value
    raise ConfigError(f"setting {name}: {value!r} is not a valid {getattr(annotation, '__name__', annotation)}")


def load(cls: type[T], section: str, config_file: str | None = None, overrides: dict[str, Any] | None = None,
         environ: dict[str, str] | None = None, file_values: dict[str, Any] | None = None) -> T:
    """Build `cls` from defaults < TOML file section (or `file_values`, already read and
    checked by the caller) < environment < explicit overrides."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = dict(file_values or {})
    if config_file:
        try:
            table = tomllib.loads(Path(config_file).read_text()).get(section, {})
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise ConfigError(f"{config_file}: cannot read config ({error})") from None
        for key, value in table.items():
            name = key.replace("-", "_")
            if name not in names:
                raise ConfigError(f"{config_file}: [{section}] unknown setting {key!r}")
            values[name] = _coerce(f"{section}.{key}", value, hints[name])
    env = os.environ if environ is None else environ
    for name in names:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = _coerce(ENV_PREFIX + name.upper(), raw, hints[name])
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
    config = cls(**values)
    _validate(config)
    return config


def _validate(config: Any) -> None:
    detector = getattr(config, "detector", None)
    if detector is not None and detector not in DETECTORS:
        raise ConfigError(f"detector {detector!r}: choose one of {', '.join(DETECTORS)}")
    fps = getattr(config, "fps", None)
    if fps is not None and (not math.isfinite(fps) or fps <= 0):
        raise ConfigError(f"fps must be positive, got {fps}")
    transport = getattr(config, "rtsp_transport", None)
    if transport is not None and transport not in ("tcp", "udp"):
        raise ConfigError(f"rtsp_transport {transport!r}: choose tcp or udp")
    for name in ("workers", "detector_workers", "max_batch"):
        value = getattr(config, name, None)
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if isinstance(config, StageLinks):
        if config.log_format not in LOG_FORMATS:
            raise ConfigError(f"log_format {config.log_format!r}: choose one of {', '.join(LOG_FORMATS)}")
        if not 0 <= config.metrics_port <= 65535:
            raise ConfigError(f"metrics_port must be between 0 (off) and 65535, got {config.metrics_port}")
