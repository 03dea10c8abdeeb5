"""Typed configuration for every stage and command, in one place, read by one loader (`load`).

Precedence (lowest to highest): the dataclass defaults below, a TOML or YAML file (`--config
FILE`, one table per command: `[analyse]`, `[detector]`, `[train]`, `[dashboard]`, ...),
environment variables `EMOJIMATION_<FIELD>` (e.g. `EMOJIMATION_STORE`, `EMOJIMATION_FPS`; a field
may name its own, as the dashboard's password does), then CLI flags.

The monitor's file (a [monitor] table, [[cameras]] and [[alerts]]) is read and checked whole by
`read_monitor_file`, and alert rules are typed (`AlertRule`) and checked here too, so the
monitor, the aggregator and `--check-config` share one validator.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tomllib
import types
import typing
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from core.emotions import EMOTIONS
from core.errors import ConfigError, redact_url

ENV_PREFIX = "EMOJIMATION_"
ENV = "env"  # field metadata key: the field's own environment variable instead of EMOJIMATION_<FIELD>
PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The trained Keras weights: what training fine-tunes, distils and exports from.
DEFAULT_MODEL_PATH = PROJECT_ROOT / "models" / "emojimation_cnn.keras"
DEFAULT_FER_DATA = PROJECT_ROOT.parent / "shared" / "data" / "fer2013"
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
PRECISIONS = ("auto", "float32", "bfloat16")
TTA_MODES = ("auto", "on", "off")


def data_dir() -> Path:
    """Where the default store lives: $EMOJIMATION_HOME, else $XDG_DATA_HOME/emojimation."""
    if os.environ.get("EMOJIMATION_HOME"):
        return Path(os.environ["EMOJIMATION_HOME"])
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "emojimation"


def default_store_url() -> str:
    return f"sqlite:///{data_dir() / 'emojimation.db'}"


def cache_dir() -> Path:
    """Where decoded datasets and detector crops are cached: $EMOJIMATION_CACHE, else ~/.cache/emojimation."""
    return Path(os.environ.get("EMOJIMATION_CACHE", Path.home() / ".cache" / "emojimation"))


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
    insecure: bool = False  # allow a plain (unencrypted) tcp:// bind beyond loopback (one warning line)
    # File runs: the ingest binds its acknowledgement input here; the aggregator connects to it.
    acks: str = ""
    restarts: int = 0  # times the supervisor restarted this stage (set on respawn; a metric)
    # ZeroMQ high-water mark of this stage's input (RCVHWM) and output (SNDHWM): messages queued
    # per link on each side before a sender blocks (files) or a camera drops (live). 64 keeps a
    # file run's workers busy; the monitor gives every stage MonitorConfig.queue_messages.
    queue_messages: int = 64


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
    # File runs with `acks`: frames not yet stored are kept (at most `window` messages and
    # `window_mb` MB) and sent again when a stage restarts, or when nothing was stored for
    # `resend_after_s` (then twice as long). Measured (docs/benchmarks.md section 11): a window of
    # 64 frames cost 8 % of megamind.avi's frames/s (ingest waited for acks); 192 cost nothing.
    # The byte bound is most of ingest's memory. With I420 frames, on the 60 s 1280x720 clip:
    # 192 MB gave a peak of 1,133 MB for the whole run in 15.8 s, 128 MB 1,030 MB in 16.1 s, 96 MB
    # 964 MB in 18.2 s (medians; 64 MB: 21 s); on the 640x360 clip 128 MB cost no time.
    window: int = 256
    window_mb: float = 128.0
    # File runs: send a video's frames in FrameGroups of this many (the detection schedule's
    # unit: one detector worker follows the faces through a group, so results never depend on
    # which worker got which frames); 0 = one Frame message each (cameras, a stage run alone).
    group_frames: int = 0
    resend_after_s: float = 20.0
    run: str = ""  # the run's id, in each Start's options: a restarted aggregator or --resume finds its sources
    resume_command: str = ""  # the command that resumes the run, in each Start's options (the dashboard shows it)


@dataclass
class DetectorConfig(StageLinks):
    detector: str = DEFAULT_DETECTOR
    # None = the detector's measured default (BlazeFace short range also takes weaker candidates
    # that a close window confirms: detector/schedule.py); a value set here is the full detections'
    # only threshold.
    min_score: float | None = None
    min_face: int = 24  # pixels in the (possibly downscaled) frame
    margin: float | None = None  # crop margin; None = the preprocessing default
    threads: int = 1
    max_age_s: float = 0.0  # live: frames captured longer ago are dropped as stale (0 = never)
    # Full detection every K-th frame a worker sees of a stream (and at scene changes, and when a
    # face is lost); between, each box is carried and refined by a local search (detector.schedule).
    # 1 = every frame. 5: per-segment agreement within a segment or two of every frame's on 244
    # composed-clip segments, at a fraction of the detector's cost (docs/benchmarks.md 3 and 10).
    detect_every: int = 5
    # Between full detections the local search runs on every N-th frame; the frames between carry
    # each clear face's box by its velocity alone (no model call; while a weak box is followed,
    # every frame is searched). 1 = a search on every frame. 2: the detector's CPU fell by a fifth
    # to a quarter and analyse's wall time by 5-12 %, with the same rows on megamind.avi, the
    # WolfgangLanger clip and the 720p clip and the same per-segment agreement on six composed
    # clips (docs/benchmarks.md, section 10).
    search_every: int = 2


@dataclass
class ClassifierConfig(StageLinks):
    model: str = ""  # empty = the shipped model
    max_batch: int = 64
    max_wait_ms: float = 15.0
    threads: int = 1
    flip_tta: str = "auto"  # auto (the model's setting) | on | off
    precision: str = "auto"  # auto (bfloat16 on CPUs with native bf16) | float32 | bfloat16
    # Send the face crops on to the aggregator (it needs them only for track thumbnails): off,
    # each face's crop crosses one socket instead of two.
    forward_crops: bool = True
    max_age_s: float = 0.0  # live: faces of frames captured longer ago are dropped as stale (0 = never)


@dataclass
class AggregatorConfig(StageLinks):
    store: str = ""
    thumbnails: bool = False
    smoothing_s: float = 0.5  # time constant of the per-track exponential smoothing
    min_segment_s: float = 0.5  # shorter emotion runs merge into their neighbours
    track_max_gap_s: float = 1.0  # a face unseen for longer starts a new track
    track_min_iou: float = 0.2
    # A track of fewer frames is short: its face rows are stored (with the tracker's ID, so a live
    # track that grows past it keeps its rows), but it gets no track summary, so no row in
    # tracks.csv, summary.json or the tracks table, and the dashboard draws no panel for it. Not
    # applied to images (each face in a picture is its own one-frame track). 1 = every face's track.
    min_track_frames: int = 3
    model_name: str = ""
    # Live cameras:
    reorder_window_s: float = 0.5  # a missing (dropped) camera frame is waited for this long, then skipped
    # Faces of a frame captured longer ago are dropped on arrival, as the detector and classifier
    # do (the kernel's buffer on the classifier's link holds hundreds of small messages); counted
    # as the camera's dropped frames. 0 = never (file runs).
    max_age_s: float = 0.0
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
    min_track_frames: int = 3  # a face followed for fewer analysed frames gets no track (AggregatorConfig)
    json: bool = False
    progress: bool = True
    max_side: int = 1280
    transport: str = "ipc"  # ipc | tcp (loopback)
    stall_timeout_s: float = 60.0  # no progress for this long = a stuck pipeline: fail clearly
    detect_every: int = 5  # full face detection every K-th frame, boxes tracked between (DetectorConfig)
    search_every: int = 2  # between detections, a local search every N-th frame, velocity alone between (DetectorConfig)
    resume: bool = False  # continue the latest interrupted run of these inputs from what the store holds
    # A stage silent (no heartbeat) this long is hung: killed and restarted, as is a stage that died,
    # at most `restart_limit` times per stage within 60 s.
    heartbeat_timeout_s: float = 10.0
    restart_limit: int = 5


@dataclass
class MonitorConfig:
    """`emojimation monitor`: live cameras until SIGINT/SIGTERM. Cameras and alert rules may also
    come from the config file's [[cameras]] and [[alerts]] tables (`read_monitor_file`)."""

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
    detect_every: int = 5  # full face detection every K-th frame, boxes tracked between (DetectorConfig)
    search_every: int = 2  # between detections, a local search every N-th frame, velocity alone between (DetectorConfig)
    # Frames older than this when a detector gets them are dropped (newest wins), and so are faces
    # older than this when a classifier gets them: no stage works on stale frames. Past capacity
    # this bounds the latency (below capacity queues stay empty): 1.0 gave p95 about 1 s at twice
    # capacity, where the target is under 1 s; 0.5 keeps it near 0.5 s (docs/benchmarks.md 6).
    max_age_s: float = 0.5
    # Messages queued per link on each side (ZeroMQ SNDHWM and RCVHWM of every stage): small, so a
    # full pipeline drops frames at the camera ingest instead of queueing them. A link of 1.1 MB
    # frames over ipc holds 3 frames per camera with 1 (sender, socket, receiver), 5 with 2, 128
    # with 64; each camera's queue moves once per round of all cameras, so a frame waits about
    # 3 x cameras / (frames per second the detectors manage): 0.6 s at 1.25x overload of 5 fps
    # cameras, where with 2 or more max_age_s is reached first. Below capacity queues stay empty.
    # Measured, 8 file cameras at 30 fps with every frame detected (4x overload, a loaded 2-core
    # machine, tests/test_live_overload.py): 1 gave p95 0.75-0.93 s with the drops at the ingests;
    # 2 gave 1.02 s (max_age_s reached) and 154 frames analysed to 1's 731; with 64 the first
    # camera had 18 frames analysed in the whole run. Past capacity the latency is then bounded
    # by max_age_s, not by the queues: 0.5 s gave p95 0.52 s in the same test.
    queue_messages: int = 1
    retention_days: float = 0.0
    min_track_frames: int = 3  # a face followed for fewer analysed frames gets no track (AggregatorConfig)
    preview: bool = False
    # Keep each camera's newest annotated frame in the store for the dashboard's camera page
    # (off by default: it stores images of faces). At most one frame per camera every live_view_every_s.
    live_view: bool = False
    live_view_every_s: float = 1.0
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
    # A stage that sends no status report (stages beat every 2 s) for this long is hung: killed and restarted.
    heartbeat_timeout_s: float = 10.0


@dataclass
class TrainConfig:
    """`emojimation train`: the emotion CNN on FER2013, resumably (training.train)."""

    data: Path = DEFAULT_FER_DATA
    split: str = "train"
    out: Path = PROJECT_ROOT / "models"
    epochs: int = 60
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.02
    label_smoothing: float = 0.1
    warmup_epochs: int = 2
    holdout_fraction: float = 0.05
    class_weight_power: float = 0.3  # 0 = none, 1 = inverse frequency; mild keeps accuracy
    # Ship the average of the last N epochs' weights (0/1 = the best single epoch instead).
    # Measured on the shipped run (models/README.md): val accuracy with flip TTA 69.99 % for the
    # last epoch alone, 69.99 % for the last 8 averaged, 70.24 % for the last 24.
    average_last: int = 24
    # Horizontal-flip test-time augmentation on by default: +1.0 point of val accuracy for
    # twice the classifier compute, which is not the pipeline's bottleneck.
    flip_tta: bool = True
    width: int = 32
    seed: int = 0
    limit: int | None = None  # train on the first N faces of a shuffled subset (tests, smoke runs)
    restart: bool = False  # ignore existing checkpoints and start over
    precision: str = "auto"  # auto | bfloat16 | float32
    threads: int | None = None


@dataclass
class FinetuneConfig:
    """`emojimation finetune`: the detector-crop fine-tune of a trained model (training.finetune)."""

    pairs: Path | None = None  # the detector crops (default: made and cached by `emojimation finetune`)
    detectors: list[str] = field(default_factory=lambda: ["haar", "blazeface"])  # whose crops to make
    renders: int = 2  # frames per face, each cut by every detector
    # Real pictures for half the renders' backgrounds: photo files, video files (a frame every
    # 2 s) or folders of them. A default folder that is missing is skipped (synthetic only).
    backgrounds: list[Path] = field(default_factory=lambda: [DEFAULT_FER_DATA.parent / "images",
                                                             DEFAULT_FER_DATA.parent / "videos"])
    start: Path = DEFAULT_MODEL_PATH  # the trained model to fine-tune
    data: Path = DEFAULT_FER_DATA
    split: str = "train"
    # Not models/: the start model stays as it was. Ship a result by copying it (and its .json)
    # into models/ and running `python -m training.export`.
    out: Path = PROJECT_ROOT / "runs" / "finetune"
    epochs: int = 3  # an epoch: every face once, each with one of its crops drawn at random
    batch_size: int = 64  # faces per step (the step sees these and as many crops)
    learning_rate: float = 1e-4  # peak; a short warm-up, then cosine decay
    weight_decay: float = 0.02
    label_smoothing: float = 0.1
    # Weight of the symmetric KL between the face's and the crop's answers. Measured
    # (models/README.md): 1 raised val accuracy and crop agreement; 2 and 5 agreed a little more
    # on single crops but cost accuracy (fear recall most).
    consistency: float = 1.0
    class_weight_power: float = 0.3
    seed: int = 0  # the crops' renders and the epochs' shuffles; the hold-out comes from the start model
    restart: bool = False
    precision: str = "auto"
    threads: int | None = None


@dataclass
class DistillConfig:
    """`emojimation distill`: one smaller student trained on the teachers' averaged soft answers
    plus the true labels (training.distill), resumably; then calibrated and exported to int8 LiteRT."""

    teachers: list[str] = field(default_factory=list)  # trained .keras models (at least one)
    data: Path = DEFAULT_FER_DATA
    split: str = "train"
    # Detector crops of the training faces (the fine-tune's cache, `emojimation finetune`): each
    # crop is learnt with its face's soft answer, so the student also answers steadily on crops.
    pairs: Path | None = None
    crops_per_face: int = 1  # an epoch: every face once and this many of its crops, drawn anew each epoch
    out: Path = PROJECT_ROOT / "runs" / "distill"  # not models/: ship a result by copying it there
    epochs: int = 60
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 0.02
    warmup_epochs: int = 2
    holdout_fraction: float = 0.05
    class_weight_power: float = 0.3
    # The loss: (1 - soft_weight) * label cross-entropy + soft_weight * T^2 * KL(teachers || student)
    # at temperature T (Hinton et al. 2015; T^2 keeps the soft term's gradients at the label term's scale).
    soft_weight: float = 0.7
    temperature: float = 4.0
    # Consistent teaching: the teachers answer, at every step, the same augmented picture the
    # student sees (Beyer et al. 2022, "Knowledge distillation: a good teacher is patient and
    # consistent"), instead of their answer on the plain face, cached once. Each step then runs
    # every teacher too (the three teachers: 1.5 times a width-24 student's training FLOPs per step).
    consistent: bool = False
    label_smoothing: float = 0.0  # the soft answers already smooth the targets
    # The student: today's net at width 24 costs about 0.56x the FLOPs per crop of width 32; without
    # flip TTA that is 0.28x per face. Both settings are choices to measure, not fixed facts.
    width: int = 24
    flip_tta: bool = False
    average_last: int = 20  # ship the average of the last N epochs' weights (0/1: the last epoch)
    seed: int = 0
    limit: int | None = None  # distil on a shuffled subset of N faces (tests, smoke runs)
    restart: bool = False
    precision: str = "auto"
    threads: int | None = None


@dataclass
class EvaluateConfig:
    """`emojimation evaluate`: a model's scores on a labelled split (training.evaluate)."""

    data: str = ""  # emotion-folder root, split root, or fer2013.csv
    # empty = the shipped model (core.model_io.default_model); several, comma-separated: an
    # ensemble, scored on the mean of their calibrated probabilities
    model: str = ""
    split: str = ""  # empty = val for folders, PrivateTest for a CSV
    json: bool = False  # one JSON object on stdout, nothing else
    tta: str = "auto"  # auto (the model's setting) | on | off
    confusion_png: str = "confusion_matrix.png"
    precision: str = "auto"  # auto (bfloat16 where the CPU has it natively) | float32 | bfloat16


@dataclass
class DashboardConfig:
    """`emojimation dashboard`. The password comes from EMOJIMATION_DASHBOARD_AUTH, not a flag's
    value (`ps` shows argv to every user); a non-loopback host needs it or `no_auth`."""

    store: str = ""  # empty = default_store_url()
    host: str = "127.0.0.1"
    port: int = 8050  # 0 picks a free one
    auth: str = field(default="", metadata={ENV: "EMOJIMATION_DASHBOARD_AUTH"})  # USER:PASSWORD
    no_auth: bool = False
    # Host names the dashboard answers to besides IP addresses and localhost ("*" = any): a DNS
    # rebinding page sends its own name and is refused (dashboard.guard).
    allowed_hosts: list[str] = field(default_factory=list, metadata={ENV: "EMOJIMATION_DASHBOARD_HOSTS"})
    max_upload_mb: float = 200.0  # larger uploads, and request bodies, are refused before they are read
    max_jobs: int = 4  # uploads waiting or being analysed at once; one more is refused, saying why


# --- alert rules and the monitor's file ------------------------------------------------------
@dataclass
class AlertRule:
    """Fires when a track's smoothed `emotion` stays at or above `min_prob` for `min_duration_s`."""

    name: str
    emotion: str
    min_prob: float = 0.7
    min_duration_s: float = 3.0
    webhook: str = ""
    cameras: list[str] = field(default_factory=list)  # camera names; empty = every camera

    def applies_to(self, camera: str) -> bool:
        return not self.cameras or camera in self.cameras


RULE_FIELDS = {"name": str, "emotion": str, "min_prob": float, "min_duration_s": float, "webhook": str,
               "cameras": list}


def parse_rules(items: list[Any], where: str = "alerts") -> tuple[list[AlertRule], list[str]]:
    """Rules from config tables, plus one clear message per problem (nothing is silently ignored)."""
    rules, problems = [], []
    if not isinstance(items, list):
        return [], [f"{where}: expected a list of tables ([[alerts]])"]
    for index, item in enumerate(items):
        label = f"{where}[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{label}: expected a table with name, emotion, min_prob, min_duration_s")
            continue
        values: dict[str, Any] = {}
        for key, value in item.items():
            kind = RULE_FIELDS.get(key)
            if kind is None:
                problems.append(f"{label}: unknown key {key!r} (allowed: {', '.join(RULE_FIELDS)})")
            elif kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
                values[key] = float(value)
            elif kind is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
                values[key] = value
            elif kind is str and isinstance(value, str):
                values[key] = value
            else:
                problems.append(f"{label}.{key}: {value!r} is not a valid {kind.__name__}")
        for required in ("name", "emotion"):
            if required not in item:
                problems.append(f"{label}: missing {required!r}")
        if values.get("emotion") is not None and values["emotion"] not in EMOTIONS:
            problems.append(f"{label}.emotion: {values['emotion']!r} is not one of {', '.join(EMOTIONS)}")
        if not 0.0 <= values.get("min_prob", 0.7) <= 1.0:
            problems.append(f"{label}.min_prob: must be between 0 and 1")
        if values.get("min_duration_s", 3.0) < 0:
            problems.append(f"{label}.min_duration_s: must not be negative")
        if values.get("webhook") and not values["webhook"].startswith(("http://", "https://")):
            problems.append(f"{label}.webhook: must be an http:// or https:// URL")
        if not problems and "name" in values and "emotion" in values:
            rules.append(AlertRule(**values))
    return rules, problems


def rules_from_json(text: str) -> list[AlertRule]:
    """The aggregator's `alert_rules` setting (a JSON list of rule tables), checked."""
    if not text:
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"alert_rules: not valid JSON ({error})") from None
    rules, problems = parse_rules(data)
    if problems:
        raise ConfigError("; ".join(problems))
    return rules


@dataclass
class Camera:
    """One camera of `emojimation monitor`; a setting left None takes the [monitor] one."""

    name: str
    url: str
    fps: float | None = None
    loop: bool | None = None
    rtsp_transport: str | None = None


CAMERA_KEYS = {"name": str, "url": str, "fps": float, "loop": bool, "rtsp_transport": str}
MONITOR_TABLES = ("monitor", "cameras", "alerts")


@dataclass
class MonitorFile:
    """The monitor's config file, checked: [monitor] settings (typed, for `load`'s `file_values`),
    [[cameras]] and [[alerts]]."""

    settings: dict[str, Any] = field(default_factory=dict)
    cameras: list[Camera] = field(default_factory=list)
    alerts: list[AlertRule] = field(default_factory=list)


def parse_camera(text: str) -> Camera:
    """`NAME=URL` or a bare URL (named by its credential-free URL)."""
    name, sep, url = text.partition("=")
    if sep and "://" not in name and "/" not in name and name:
        return Camera(name=name.strip(), url=url.strip())
    return Camera(name=redact_url(text.strip()), url=text.strip())


def read_monitor_file(path: str) -> tuple[MonitorFile, list[str]]:
    """The whole file checked, with one message per problem (`monitor --check-config` prints
    them all); ConfigError only when the file cannot be read or parsed at all."""
    data = read_file(path, "[monitor], [[cameras]], [[alerts]]")
    problems = [f"{path}: unknown table {key!r} (allowed: {', '.join(MONITOR_TABLES)})"
                for key in data if key not in MONITOR_TABLES]
    settings = _table_values(MonitorConfig, "monitor", data.get("monitor", {}), path, problems, skip={"sources"})
    cameras = _check_cameras(data.get("cameras", []), path, problems)
    rules, rule_problems = parse_rules(data.get("alerts", []), f"{path}: alerts")
    return MonitorFile(settings, cameras, rules), problems + rule_problems


def _check_cameras(items: Any, where: str, problems: list[str]) -> list[Camera]:
    cameras: list[Camera] = []
    if not isinstance(items, list):
        problems.append(f"{where}: cameras must be a list of tables ([[cameras]] with name and url)")
        return cameras
    for index, item in enumerate(items):
        label = f"{where}: cameras[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{label}: expected a table with name and url")
            continue
        ok = True
        for key, value in item.items():
            kind = CAMERA_KEYS.get(key)
            if kind is None:
                problems.append(f"{label}: unknown key {key!r} (allowed: {', '.join(CAMERA_KEYS)})")
                ok = False
            elif not (isinstance(value, kind) or kind is float and isinstance(value, int)) or \
                    isinstance(value, bool) and kind is not bool:
                problems.append(f"{label}.{key}: {value!r} is not a valid {kind.__name__}")
                ok = False
        if not isinstance(item.get("url"), str) or not item.get("url"):
            problems.append(f"{label}: missing 'url'")
            ok = False
        if item.get("rtsp_transport") not in (None, "tcp", "udp"):
            problems.append(f"{label}.rtsp_transport: choose tcp or udp")
            ok = False
        if ok:
            cameras.append(Camera(name=item.get("name") or parse_camera(item["url"]).name, url=item["url"],
                                  fps=float(item["fps"]) if "fps" in item else None, loop=item.get("loop"),
                                  rtsp_transport=item.get("rtsp_transport")))
    return cameras


# --- the loader ------------------------------------------------------------------------------
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
        if annotation in (int, float, str, Path):
            return annotation(value)
    except (ValueError, TypeError, StopIteration):
        pass
    else:
        return value
    raise ConfigError(f"setting {name}: {value!r} is not a valid {getattr(annotation, '__name__', annotation)}")


def read_file(path: str, tables: str) -> dict[str, Any]:
    """A TOML or YAML file (by suffix) as a dict of tables; ConfigError with one line if unreadable."""
    file = Path(path)
    yaml_file = file.suffix.lower() in (".yaml", ".yml")
    try:
        text = file.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror or error})") from None
    try:
        if yaml_file:
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except Exception as error:  # tomllib.TOMLDecodeError, yaml.YAMLError: a one-line reason either way
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{path}: not valid {'YAML' if yaml_file else 'TOML'} ({first})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected tables {tables} at the top level")
    return data


def _table_values(cls: type, section: str, table: Any, where: str, problems: list[str],
                  skip: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """A file's [section] table as typed field values; one message per problem goes to `problems`."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)} - set(skip)
    values: dict[str, Any] = {}
    if not isinstance(table, dict):
        problems.append(f"{where}: [{section}] must be a table")
        return values
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in names:
            problems.append(f"{where}: [{section}] unknown setting {key!r}")
            continue
        try:
            values[name] = _coerce(f"{section}.{key}", value, hints[name])
        except ConfigError as error:
            problems.append(f"{where}: {error}")
    return values


def env_name(f: dataclasses.Field) -> str:
    """The environment variable of a config field: EMOJIMATION_<FIELD> unless it names its own."""
    return f.metadata.get(ENV, ENV_PREFIX + f.name.upper())


def load(cls: type[T], section: str, config_file: str | None = None, overrides: dict[str, Any] | None = None,
         environ: dict[str, str] | None = None, file_values: dict[str, Any] | None = None) -> T:
    """Build `cls` from defaults < the file's [section] table (or `file_values`, already read
    and checked by `read_monitor_file`) < environment < explicit overrides (None = not given)."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = dict(file_values or {})
    if config_file:
        problems: list[str] = []
        table = read_file(config_file, f"[{section}]").get(section, {})
        values.update(_table_values(cls, section, table, config_file, problems))
        if problems:
            raise ConfigError("; ".join(problems))
    env = os.environ if environ is None else environ
    for f in dataclasses.fields(cls):
        raw = env.get(env_name(f))
        if raw is not None:
            values[f.name] = _coerce(env_name(f), raw, hints[f.name])
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce("--" + name.replace("_", "-"), value, hints[name])
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
    precision = getattr(config, "precision", None)
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if isinstance(config, EvaluateConfig) and config.tta not in TTA_MODES:
        raise ConfigError(f"tta {config.tta!r}: choose one of {', '.join(TTA_MODES)}")
    if isinstance(config, AggregatorConfig):
        rules_from_json(config.alert_rules)
    min_track_frames = getattr(config, "min_track_frames", None)
    if min_track_frames is not None and min_track_frames < 1:
        raise ConfigError(f"min_track_frames must be at least 1, got {min_track_frames}")
    for name in ("workers", "detector_workers", "max_batch", "detect_every", "search_every", "queue_messages"):
        value = getattr(config, name, None)
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if isinstance(config, StageLinks):
        if config.log_format not in LOG_FORMATS:
            raise ConfigError(f"log_format {config.log_format!r}: choose one of {', '.join(LOG_FORMATS)}")
        if not 0 <= config.metrics_port <= 65535:
            raise ConfigError(f"metrics_port must be between 0 (off) and 65535, got {config.metrics_port}")
