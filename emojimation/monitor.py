"""`emojimation monitor`: live cameras until SIGINT/SIGTERM.

One ingest process per camera (each reconnects by itself, so a dead camera never holds up
the others), shared detector and classifier workers that batch across cameras, and the
aggregator writing every camera's timeline, status events and alerts to the store. The
supervisor here restarts any stage process that dies, logs camera status changes, and on
SIGINT/SIGTERM stops every child (the aggregator flushes its rows first) within 5 s.

Configuration: defaults < the config file (TOML or YAML: a [monitor] table, [[cameras]] and
[[alerts]]) < EMOJIMATION_* environment variables < CLI flags. `--check-config FILE`
validates a file and reports every wrong key.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from core import config as cfg
from core.config import (
    AggregatorConfig, ClassifierConfig, DetectorConfig, IngestConfig, MonitorConfig, default_store_url,
)
from core.errors import ConfigError, EmojimationError, ModelError, database_errors, redact_url
from core.messages import Frame, MessageError, Status, StatusEvent, Tracked, decode
from core.model_io import model_members
from core.security import LinkSecurity
from core.store import Store
from emojimation.analysis import model_name
from emojimation.supervisor import (
    RESTART_LIMIT, RESTART_WINDOW_S, RestartBudget, Supervisor, describe_death, record_event,
)
from emojimation.topology import SharedLinks, Topology, boot

logger = logging.getLogger("emojimation.monitor")


@dataclass
class MonitorPlan:
    """Everything `monitor` needs, validated: settings, cameras and alert rules."""

    config: MonitorConfig
    cameras: list[cfg.Camera]
    alert_rules: list[dict[str, Any]] = field(default_factory=list)


def source_problem(url: str) -> str:
    """Why a camera source can never work (a typo'd file), or "" (network cameras and webcams
    that are down now are retried, not refused)."""
    text = url.strip()
    if not text:
        return "empty source"
    if "://" in text:
        scheme = text.split("://", 1)[0].lower()
        return "" if scheme in ("rtsp", "rtsps", "http", "https") else \
            f"unsupported scheme {scheme!r} (rtsp, rtsps, http, https)"
    if text.isdigit() or text.startswith("/dev/video"):
        return ""
    return "" if Path(text).is_file() else f"{redact_url(text)}: no such file (and not a URL or webcam)"


def plan(sources: list[str], config_file: str | None, overrides: dict[str, Any],
         environ: dict[str, str] | None = None) -> tuple[MonitorPlan | None, list[str]]:
    """Validate everything; returns the plan, or None and one message per problem."""
    file, problems = cfg.MonitorFile(), []
    if config_file:
        try:
            file, problems = cfg.read_monitor_file(config_file)
        except ConfigError as error:
            return None, [str(error)]
    cameras = file.cameras + [cfg.parse_camera(text) for text in sources]
    for camera in cameras:
        problem = source_problem(camera.url)
        if problem:
            problems.append(f"camera {camera.name!r}: {problem}")
    names = [c.name for c in cameras]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"camera name {name!r} is used twice; name cameras with NAME=URL")
    config = None
    try:
        config = cfg.load(MonitorConfig, "monitor", None, {**overrides}, environ=environ, file_values=file.settings)
    except ConfigError as error:
        problems.append(str(error))
    if config is not None and not cameras:
        problems.append("no cameras: give SOURCE arguments (URL or NAME=URL) or [[cameras]] in --config")
    if config is not None and config.stages not in ("all", "ingest"):
        problems.append(f"stages {config.stages!r}: choose all or ingest")
    if config is not None and config.stages == "ingest" and not config.push:
        problems.append("--stages ingest needs --push ADDR (where the camera frames go)")
    if config is not None and config.stages == "all":  # this monitor classifies: its model must be there
        problems += model_problems(config.model)
    if problems or config is None:
        return None, problems
    return MonitorPlan(config, cameras, [dataclasses.asdict(rule) for rule in file.alerts]), []


def model_problems(model: str) -> list[str]:
    """What is wrong with a `model` setting (a file, `ensemble` or a comma list): one line each."""
    try:
        members = model_members(model)
    except ModelError as error:
        return [f"model: {error}"]
    return [f"model: {path}: model file not found" for path in members if not path.is_file()]


def check_config_command(path: str) -> int:
    result, problems = plan([], path, {})
    real = [p for p in problems if not p.startswith("no cameras")]
    if real:
        for problem in real:
            print(f"emojimation: config error: {problem}", file=sys.stderr)
        return 2
    cameras = len(result.cameras) if result else 0
    rules = len(result.alert_rules) if result else 0
    print(f"{path}: OK ({cameras} camera(s), {rules} alert rule(s))")
    return 0


# --- running --------------------------------------------------------------------------------
@dataclass
class CameraStats:
    name: str
    status: str = "connecting"
    frames_analysed: int = 0
    frames_dropped: int = 0  # the aggregator's count: sequence gaps, wherever the frames were dropped
    # Dropped by the camera's ingest because the pipeline was full (or a newer frame came first), as
    # its process counted them: the front's share. It may exceed frames_dropped by the last few
    # frames: the aggregator never learns of drops after the last frame it got before stopping.
    frames_dropped_at_ingest: int = 0
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None


class Monitor:
    """The running monitor: its stage processes, their restarts, status lines and the preview."""

    def __init__(self, plan: MonitorPlan, supervisor: Supervisor, stop: threading.Event) -> None:
        self.plan = plan
        self.config = plan.config
        self.supervisor = supervisor
        self.stop = stop
        self.cameras = {f"cam{i}/{c.name}": CameraStats(c.name) for i, c in enumerate(plan.cameras)}
        self.budget = RestartBudget()
        self.paused_until: dict[str, float] = {}  # a crash-looping camera ingest waits until then
        self.ready: set[str] = set()
        self.preview: Preview | None = None
        self.preview_addresses: list[str] = []
        self.results_address = ""

    def topology(self) -> Topology:
        """The monitor's pipeline: one ingest per camera, shared detectors and classifiers, one
        aggregator; with `--stages ingest`, the camera ingests alone, pushing to `push`."""
        settings = self.config
        local = settings.stages == "all"
        ingests = {}
        for i, camera in enumerate(self.plan.cameras):
            ingests[f"camera-{i}"] = IngestConfig(
                camera=camera.url, name=camera.name, fps=camera.fps or settings.fps,
                loop=camera.loop if camera.loop is not None else settings.loop,
                rtsp_transport=camera.rtsp_transport or settings.rtsp_transport, stall_s=settings.stall_s,
                backoff_max_s=settings.backoff_max_s, max_side=settings.max_side, stream_prefix=f"cam{i}",
                preview_bind=self.preview_addresses[i] if self.preview_addresses else "",
                push=[] if local else [settings.push])
        # Every link small (queue_messages), and no stage works on a frame older than max_age_s:
        # past capacity, frames are dropped at the cameras' ingests (counted as gaps per camera
        # by the aggregator) instead of queueing between the stages.
        shared = SharedLinks(curve_dir=settings.curve_dir, metrics_port=settings.metrics_port,
                             metrics_host=settings.metrics_host, log_format=settings.log_format,
                             queue_messages=settings.queue_messages)
        if not local:
            return Topology(ingests=ingests, shared=shared)
        return Topology(
            ingests=ingests, shared=shared,
            detector=DetectorConfig(detector=settings.detector, max_age_s=settings.max_age_s,
                                    detect_every=settings.detect_every, search_every=settings.search_every),
            detectors=settings.detector_workers,
            classifier=ClassifierConfig(model=settings.model, max_age_s=settings.max_age_s, forward_crops=False),
            classifiers=settings.workers,
            aggregator=AggregatorConfig(
                store=settings.store or default_store_url(), model_name=model_name(settings.model),
                alert_rules=json.dumps(self.plan.alert_rules) if self.plan.alert_rules else "",
                retention_days=settings.retention_days, min_track_frames=settings.min_track_frames,
                results_bind=self.results_address, max_age_s=settings.max_age_s,
                reorder_window_s=self.reorder_window_s()))

    def reorder_window_s(self) -> float:
        """How long the aggregator waits for a camera frame missing from the sequence. With one
        detector and one classifier every link is first in, first out, so a missing frame was
        dropped and waiting for it only adds latency: under overload, when every other frame is
        dropped, most frames would wait the whole window. Workers racing in parallel can reorder
        frames, so then the aggregator's own window applies."""
        if self.config.detector_workers == 1 and self.config.workers == 1:
            return 0.0
        return AggregatorConfig.reorder_window_s

    def start(self) -> None:
        settings = self.config
        sup = self.supervisor
        live_view = settings.live_view and settings.stages == "all"  # a remote pipeline's store is not ours
        if settings.preview or live_view:
            self.preview_addresses = [sup.address(f"preview-{i}") for i in range(len(self.plan.cameras))]
            self.results_address = sup.address("results") if settings.stages == "all" else ""
        boot(sup, self.topology(), inherit_output=True, log_level="INFO")
        if settings.metrics_port:
            logger.info("metrics: %s", ", ".join(f"{c.name} on :{settings.metrics_port + i}"
                                                  for i, c in enumerate(sup.children)))
        if settings.preview or live_view:
            # Through the same security layer as every stage's sockets (Curve on tcp://, size limit).
            sink = LiveFrames(settings.store or default_store_url(), settings.live_view_every_s,
                              {f"cam{i}/{c.name}": c.name for i, c in enumerate(self.plan.cameras)}) if live_view else None
            self.preview = Preview(sup.context, LinkSecurity(sup.context, "monitor", settings.curve_dir),
                                   self.preview_addresses, self.results_address,
                                   {f"cam{i}/{c.name}": c.name for i, c in enumerate(self.plan.cameras)},
                                   show=settings.preview, sink=sink)

    def expected_ready(self) -> set[str]:
        names = {c.name for c in self.supervisor.children}
        return {n for n in names if not n.startswith("camera-")}

    def run(self) -> None:
        self.start()
        logger.info("monitoring %d camera(s): %s", len(self.plan.cameras),
                    ", ".join(c.name for c in self.plan.cameras))
        next_status_line = time.monotonic() + self.config.status_every_s
        announced = False
        while not self.stop.is_set():
            for report in self.supervisor.statuses(20 if self.preview else 200):
                self._apply(report)
            if not announced and self.ready >= self.expected_ready():
                announced = True
                logger.info("pipeline ready")
                print("emojimation: pipeline ready", file=sys.stderr, flush=True)
            self._watch()
            if self.preview is not None:
                self.preview.pump()
            if time.monotonic() >= next_status_line:
                next_status_line = time.monotonic() + self.config.status_every_s
                for stats in self.cameras.values():
                    logger.info("camera %s: %s, %d frames analysed, %d dropped", stats.name, stats.status,
                                stats.frames_analysed, stats.frames_dropped)

    def _apply(self, report: Status) -> None:
        if report.event == StatusEvent.READY:
            child = next((c for c in self.supervisor.children
                          if c.process and c.process.pid == report.detail.get("pid")), None)
            if child is not None:
                self.ready.add(child.name)
        stats = self.cameras.get(report.stream.split("#")[0])  # the stream id without its run token
        if stats is None:
            return
        if report.event == StatusEvent.CAMERA_STATUS:
            stats.status = str(report.detail.get("status", stats.status))
        elif report.event == StatusEvent.PROGRESS:
            stats.frames_analysed = int(report.detail.get("frames_analysed", stats.frames_analysed))
        elif report.event == StatusEvent.CAMERA_STOPPED:
            for key in ("frames_analysed", "frames_dropped", "latency_p50_ms", "latency_p95_ms"):
                if key in report.detail:
                    setattr(stats, key, report.detail[key])
        elif report.event == StatusEvent.STOPPED and report.stage == "ingest":  # one per ingest run of the camera
            stats.frames_dropped_at_ingest += int(report.detail.get("frames_dropped", 0))

    def _watch(self) -> None:
        """Kill what hung, restart what died. A stage keeps RESTART_LIMIT restarts per
        RESTART_WINDOW_S; past that a camera's ingest waits a window before trying again (the
        other cameras go on), while a shared stage, which every camera needs, ends the monitor."""
        if self.stop.is_set():
            return
        for child in self.supervisor.kill_hung(self.config.heartbeat_timeout_s):
            self._record_event("stage-hung", f"{child.name} sent no status for "
                                             f"{self.config.heartbeat_timeout_s:.0f} s and was killed")
        now = time.monotonic()
        for child in list(self.supervisor.children):
            if child.process is None or child.process.poll() is None or now < self.paused_until.get(child.name, 0):
                continue
            if self.budget.spend(child.name, now) is None:  # restarted at once: cameras wait for no one
                gave_up = f"{describe_death(child)}; restarted {RESTART_LIMIT} times in {RESTART_WINDOW_S:.0f} s"
                if not child.name.startswith("camera-"):
                    raise ConfigError(f"{gave_up}, giving up")
                self.paused_until[child.name] = now + RESTART_WINDOW_S
                self.budget.clear(child.name)
                logger.error("%s; trying again in %.0f s (the other cameras go on)", gave_up, RESTART_WINDOW_S)
                self._record_event("stage-paused", f"{gave_up}; next try in {RESTART_WINDOW_S:.0f} s")
                continue
            logger.error("%s; restarting it", describe_death(child))
            self._record_event("stage-restarted", describe_death(child))
            self.supervisor.respawn(child)
            if child.name == "aggregator":  # a new aggregator must hear every camera's Start again
                for camera in self.supervisor.children:
                    if camera.name.startswith("camera-") and camera.process and camera.process.poll() is None:
                        camera.process.terminate()  # reaped and restarted by this loop
                        camera.process.wait(5)
                        self.supervisor.respawn(camera)

    def _record_event(self, kind: str, message: str) -> None:
        if self.config.stages == "all":  # a remote pipeline's store is not ours to write
            record_event(self.config.store or default_store_url(), kind, message)

    def summary(self) -> list[dict[str, Any]]:
        for report in self.supervisor.statuses(300):
            self._apply(report)
        return [dataclasses.asdict(s) for s in self.cameras.values()]


class LiveFrames:
    """`--live-view`: each camera's newest annotated frame, as a JPEG, in the store (one row per
    camera, replaced at most every `every_s`), for the dashboard's camera page. Deleted at exit,
    so no stale image of a face stays behind."""

    def __init__(self, store_url: str, every_s: float, cameras: dict[str, str]) -> None:
        # cameras: stream -> the camera's name, which its ingest sends as the source's URI
        self.store_url, self.every_s, self.cameras = store_url, max(0.1, every_s), cameras
        self.last: dict[str, float] = {}
        self.ids: dict[str, int] = {}

    def __call__(self, stream: str, image: Any) -> None:
        import cv2

        now = time.monotonic()
        if now - self.last.get(stream, -1e9) < self.every_s or stream not in self.cameras:
            return
        self.last[stream] = now
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
        if not ok:
            return
        try:
            with Store(self.store_url, migrate=False) as store:
                if stream not in self.ids:
                    source_id = store.camera_id(self.cameras[stream])
                    if source_id is None:  # the aggregator has not opened the camera's row yet
                        return
                    self.ids[stream] = source_id
                store.put_live_frame(self.ids[stream], jpeg.tobytes(), image.shape[1], image.shape[0])
        except (EmojimationError, OSError, *database_errors()) as error:
            logger.warning("could not store the live frame of %s: %s", stream, error)

    def close(self) -> None:
        if not self.ids:
            return
        try:
            with Store(self.store_url, migrate=False) as store:
                store.clear_live_frames(list(self.ids.values()))
        except (EmojimationError, OSError, *database_errors()) as error:
            logger.warning("could not delete the live frames: %s", error)


class Preview:
    """`--preview`: an OpenCV window per camera with boxes, track IDs and emotion bars.

    Frames come from each camera ingest's preview PUB socket and results from the
    aggregator's; a frame is drawn once its results arrive (matched by stream and seq).
    With `sink` (`--live-view`), each drawn frame also goes to it; `show=False` opens no window.
    """

    def __init__(self, context: zmq.Context, security: LinkSecurity, frame_addresses: list[str], results_address: str,
                 windows: dict[str, str], show: bool = True, sink: LiveFrames | None = None) -> None:
        import cv2

        self.cv2 = cv2
        self.show, self.sink = show, sink
        self.windows = windows
        self.frames: dict[str, deque[Frame]] = {}
        self.frames_socket = context.socket(zmq.SUB)
        self.results_socket = context.socket(zmq.SUB)
        for sock in (self.frames_socket, self.results_socket):
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, 20)
        for address in frame_addresses:
            security.connect(self.frames_socket, address)
        if results_address:
            security.connect(self.results_socket, results_address)
        self.shown = 0

    def _messages(self, sock: zmq.Socket):
        while True:
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                yield decode(frames)
            except MessageError:
                continue

    def pump(self) -> None:
        import pandas as pd

        from emojimation.annotate import draw_faces
        from core.emotions import EMOTIONS

        for message in self._messages(self.frames_socket):
            if isinstance(message, Frame):
                self.frames.setdefault(message.stream, deque(maxlen=30)).append(message)
        for result in self._messages(self.results_socket):
            if not isinstance(result, Tracked):
                continue
            frame = next((f for f in self.frames.get(result.stream, ()) if f.seq == result.seq), None)
            if frame is None:
                continue
            image = frame.bgr().copy()
            if len(result.boxes):
                boxes = result.boxes / frame.scale
                table = pd.DataFrame(result.probs, columns=list(EMOTIONS))
                table[["x", "y", "w", "h"]] = boxes
                table["track_id"] = result.track_ids
                table["emotion"] = [EMOTIONS[i] for i in result.probs.argmax(axis=1)]
                draw_faces(image, table)
            if self.sink is not None:
                self.sink(result.stream.split("#")[0], image)
            if self.show:
                self.cv2.imshow(self.windows.get(result.stream, result.stream), image)
            self.shown += 1
        if self.show:
            self.cv2.waitKey(1)

    def close(self) -> None:
        self.frames_socket.close()
        self.results_socket.close()
        if self.sink is not None:
            self.sink.close()
        if self.show:
            self.cv2.destroyAllWindows()


def monitor_command(plan_: MonitorPlan) -> int:
    stop = threading.Event()

    def handler(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    with Supervisor() as supervisor:
        monitor = Monitor(plan_, supervisor, stop)
        try:
            monitor.run()
        finally:
            if monitor.preview is not None:
                monitor.preview.close()
            supervisor.stop()
            summary = monitor.summary()
    logger.info("stopped")
    if plan_.config.json:
        print(json.dumps({"cameras": summary}, indent=2))
    return 0
