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

from emojimation.errors import ConfigError

ENV_PREFIX = "EMOJIMATION_"
# Input files by name: images are read by OpenCV; videos are whatever ffmpeg reads (ingest
# probes every non-image file), and this list only says which uploads the dashboard offers.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".pgm", ".ppm")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts")
DETECTORS = ("haar", "blazeface", "blazeface-full")


def data_dir() -> Path:
    """Where the default store lives: $EMOJIMATION_HOME, else $XDG_DATA_HOME/emojimation."""
    if os.environ.get("EMOJIMATION_HOME"):
        return Path(os.environ["EMOJIMATION_HOME"])
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "emojimation"


def default_store_url() -> str:
    return f"sqlite:///{data_dir() / 'emojimation.db'}"


@dataclass
class StageLinks:
    """Addresses: each stage binds its output and connects to its upstreams' outputs."""

    connect: list[str] = field(default_factory=list)
    bind: str = ""
    status: str = ""  # the supervisor's status socket (optional when a stage runs alone)


@dataclass
class IngestConfig(StageLinks):
    inputs: list[str] = field(default_factory=list)
    stream_prefix: str = field(default_factory=lambda: f"run-{uuid.uuid4().hex[:8]}")
    fps: float = 10.0
    every_frame: bool = False
    max_side: int = 1280  # larger frames are scaled down inside ffmpeg; boxes come back in source pixels


@dataclass
class DetectorConfig(StageLinks):
    detector: str = "blazeface-full"
    min_score: float | None = None  # None = the detector's measured default
    min_face: int = 24  # pixels in the (possibly downscaled) frame
    margin: float | None = None  # crop margin; None = the preprocessing default
    threads: int = 1


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


@dataclass
class AnalyseConfig:
    inputs: list[str] = field(default_factory=list)
    out: str = "emojimation-out"
    fps: float = 10.0
    every_frame: bool = False
    detector: str = "blazeface-full"
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
         environ: dict[str, str] | None = None) -> T:
    """Build `cls` from defaults < TOML file section < environment < explicit overrides."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
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
    for name in ("workers", "detector_workers", "max_batch"):
        value = getattr(config, name, None)
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
