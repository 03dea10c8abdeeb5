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
import tomllib
import typing
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from core import config as cfg
from core.config import MonitorConfig, default_store_url
from core.errors import ConfigError
from core.messages import Frame, MessageError, Status, StatusEvent, Tracked, decode
from core.runtime import redact
from emojimation.supervisor import Child, Supervisor, describe_death, stage_args

logger = logging.getLogger("emojimation.monitor")

CAMERA_KEYS = {"name": str, "url": str, "fps": float, "loop": bool, "rtsp_transport": str}
RESTART_LIMIT = 5  # restarts of one stage within RESTART_WINDOW_S before the monitor gives up
RESTART_WINDOW_S = 60.0


@dataclass
class Camera:
    name: str
    url: str
    fps: float | None = None
    loop: bool | None = None
    rtsp_transport: str | None = None


@dataclass
class MonitorPlan:
    """Everything `monitor` needs, validated: settings, cameras and alert rules."""

    config: MonitorConfig
    cameras: list[Camera]
    alert_rules: list[dict[str, Any]] = field(default_factory=list)


def read_config_file(path: str) -> dict[str, Any]:
    """A TOML or YAML file (by suffix) as a dict; ConfigError with one line if unreadable."""
    file = Path(path)
    try:
        text = file.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read config ({error.strerror or error})") from None
    try:
        if file.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except Exception as error:  # tomllib.TOMLDecodeError, yaml.YAMLError: a one-line reason either way
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConfigError(f"{path}: not valid {'YAML' if file.suffix.lower() in ('.yaml', '.yml') else 'TOML'} "
                          f"({first})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected tables [monitor], [[cameras]], [[alerts]] at the top level")
    return data


def parse_source(text: str, index: int) -> Camera:
    """`NAME=URL` or a bare URL (named by its credential-free URL)."""
    name, sep, url = text.partition("=")
    if sep and "://" not in name and "/" not in name and name:
        return Camera(name=name.strip(), url=url.strip())
    return Camera(name=redact(text.strip()), url=text.strip())


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
    return "" if Path(text).is_file() else f"{redact(text)}: no such file (and not a URL or webcam)"


def _check_monitor_table(table: Any, where: str, problems: list[str]) -> dict[str, Any]:
    hints = typing.get_type_hints(MonitorConfig)
    names = {f.name for f in dataclasses.fields(MonitorConfig)} - {"sources"}
    values: dict[str, Any] = {}
    if not isinstance(table, dict):
        problems.append(f"{where}: [monitor] must be a table")
        return values
    for key, value in table.items():
        name = key.replace("-", "_")
        if name not in names:
            problems.append(f"{where}: [monitor] unknown setting {key!r}")
            continue
        try:
            values[name] = cfg._coerce(f"monitor.{key}", value, hints[name])
        except ConfigError as error:
            problems.append(f"{where}: {error}")
    return values


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
            camera = parse_source(item["url"], index)
            cameras.append(Camera(name=item.get("name") or camera.name, url=item["url"],
                                  fps=float(item["fps"]) if "fps" in item else None, loop=item.get("loop"),
                                  rtsp_transport=item.get("rtsp_transport")))
    return cameras


def plan(sources: list[str], config_file: str | None, overrides: dict[str, Any],
         environ: dict[str, str] | None = None) -> tuple[MonitorPlan | None, list[str]]:
    """Validate everything; returns the plan, or None and one message per problem."""
    from aggregator.alerts import parse_rules

    problems: list[str] = []
    data: dict[str, Any] = {}
    if config_file:
        try:
            data = read_config_file(config_file)
        except ConfigError as error:
            return None, [str(error)]
    where = config_file or "config"
    for key in data:
        if key not in ("monitor", "cameras", "alerts"):
            problems.append(f"{where}: unknown table {key!r} (allowed: monitor, cameras, alerts)")
    file_values = _check_monitor_table(data.get("monitor", {}), where, problems)
    cameras = _check_cameras(data.get("cameras", []), where, problems)
    _rules, rule_problems = parse_rules(data.get("alerts", []), f"{where}: alerts")
    problems += rule_problems
    cameras += [parse_source(text, i) for i, text in enumerate(sources)]
    for camera in cameras:
        problem = source_problem(camera.url)
        if problem:
            problems.append(f"camera {camera.name!r}: {problem}")
    names = [c.name for c in cameras]
    for name in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"camera name {name!r} is used twice; name cameras with NAME=URL")
    config = None
    try:
        config = cfg.load(MonitorConfig, "monitor", None, {**overrides}, environ=environ, file_values=file_values)
    except ConfigError as error:
        problems.append(str(error))
    if config is not None and not cameras:
        problems.append("no cameras: give SOURCE arguments (URL or NAME=URL) or [[cameras]] in --config")
    if config is not None and config.stages not in ("all", "ingest"):
        problems.append(f"stages {config.stages!r}: choose all or ingest")
    if config is not None and config.stages == "ingest" and not config.push:
        problems.append("--stages ingest needs --push ADDR (where the camera frames go)")
    if problems or config is None:
        return None, problems
    return MonitorPlan(config, cameras, data.get("alerts", [])), []


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
    frames_dropped: int = 0
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
        self.restarts: dict[str, deque] = {}
        self.ready: set[str] = set()
        self.preview: Preview | None = None

    def _shared(self) -> dict[str, Any]:
        """Settings every stage gets. Each gets its own metrics port (flags beat the inherited
        EMOJIMATION_* environment, so children never all bind the monitor's port)."""
        settings = self.config
        port = settings.metrics_port + len(self.supervisor.children) if settings.metrics_port else 0
        return {"curve_dir": settings.curve_dir, "metrics_port": port, "metrics_host": settings.metrics_host,
                "log_format": settings.log_format, "log_level": "INFO"}

    def start(self) -> None:
        settings = self.config
        sup = self.supervisor
        local = settings.stages == "all"
        camera_addresses = [sup.address(f"camera-{i}") for i in range(len(self.plan.cameras))]
        preview_addresses = [sup.address(f"preview-{i}") for i in range(len(self.plan.cameras))] \
            if settings.preview else []
        results_address = sup.address("results") if settings.preview and local else ""
        if local:
            detectors = [sup.address(f"detector-{i}") for i in range(settings.detector_workers)]
            classifiers = [sup.address(f"classifier-{i}") for i in range(settings.workers)]
            # The store URL goes by environment, not argv: `ps` shows argv to every user.
            sup.spawn("aggregator", stage_args("aggregator", classifiers, "", sup.status_address, {
                "alert_rules": json.dumps(self.plan.alert_rules) if self.plan.alert_rules else "",
                "retention_days": settings.retention_days, "results_bind": results_address, **self._shared()}),
                env={"EMOJIMATION_STORE": settings.store or default_store_url()}, inherit_output=True)
            for i, address in enumerate(classifiers):
                sup.spawn(f"classifier-{i}", stage_args("classifier", detectors, address, sup.status_address,
                                                        {"model": settings.model, **self._shared()}),
                          inherit_output=True)
            for i, address in enumerate(detectors):
                sup.spawn(f"detector-{i}", stage_args("detector", camera_addresses, address, sup.status_address,
                                                      {"detector": settings.detector, "max_age_s": settings.max_age_s,
                                                       **self._shared()}), inherit_output=True)
        for i, camera in enumerate(self.plan.cameras):
            options = {"name": camera.name, "fps": camera.fps or settings.fps,
                       "loop": camera.loop if camera.loop is not None else settings.loop,
                       "rtsp_transport": camera.rtsp_transport or settings.rtsp_transport,
                       "stall_s": settings.stall_s, "backoff_max_s": settings.backoff_max_s, "max_side": settings.max_side,
                       "stream_prefix": f"cam{i}", **self._shared(),
                       "preview_bind": preview_addresses[i] if preview_addresses else ""}
            if not local:
                options["push"] = [settings.push]
            # The URL goes by environment, not argv: `ps` shows argv to every user, and URLs hold passwords.
            sup.spawn(f"camera-{i}", stage_args("ingest", [], camera_addresses[i] if local else "",
                                                sup.status_address, options),
                      env={"EMOJIMATION_CAMERA": camera.url}, inherit_output=True)
        if settings.metrics_port:
            logger.info("metrics: %s", ", ".join(f"{c.name} on :{settings.metrics_port + i}"
                                                  for i, c in enumerate(sup.children)))
        if settings.preview:
            self.preview = Preview(sup.context, preview_addresses, results_address,
                                   {f"cam{i}/{c.name}": c.name for i, c in enumerate(self.plan.cameras)})

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
            self._restart_dead()
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

    def _restart_dead(self) -> None:
        for child in list(self.supervisor.children):
            if child.process is None or child.process.poll() is None or self.stop.is_set():
                continue
            history = self.restarts.setdefault(child.name, deque())
            now = time.monotonic()
            while history and now - history[0] > RESTART_WINDOW_S:
                history.popleft()
            if len(history) >= RESTART_LIMIT:
                raise ConfigError(f"{describe_death(child)}; restarted {RESTART_LIMIT} times in "
                                  f"{RESTART_WINDOW_S:.0f} s, giving up")
            history.append(now)
            logger.error("%s; restarting it", describe_death(child))
            self.supervisor.respawn(child)
            if child.name == "aggregator":  # a new aggregator must hear every camera's Start again
                for camera in self.supervisor.children:
                    if camera.name.startswith("camera-") and camera.process and camera.process.poll() is None:
                        camera.process.terminate()  # reaped and restarted by this loop
                        camera.process.wait(5)
                        self.supervisor.respawn(camera)

    def summary(self) -> list[dict[str, Any]]:
        for report in self.supervisor.statuses(300):
            self._apply(report)
        return [dataclasses.asdict(s) for s in self.cameras.values()]


class Preview:
    """`--preview`: an OpenCV window per camera with boxes, track IDs and emotion bars.

    Frames come from each camera ingest's preview PUB socket and results from the
    aggregator's; a frame is drawn once its results arrive (matched by stream and seq).
    """

    def __init__(self, context: zmq.Context, frame_addresses: list[str], results_address: str,
                 windows: dict[str, str]) -> None:
        import cv2

        self.cv2 = cv2
        self.windows = windows
        self.frames: dict[str, deque[Frame]] = {}
        self.frames_socket = context.socket(zmq.SUB)
        self.results_socket = context.socket(zmq.SUB)
        for sock in (self.frames_socket, self.results_socket):
            sock.setsockopt(zmq.SUBSCRIBE, b"")
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, 20)
        for address in frame_addresses:
            self.frames_socket.connect(address)
        if results_address:
            self.results_socket.connect(results_address)
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
            image = frame.image.copy()
            if len(result.boxes):
                boxes = result.boxes / frame.scale
                table = pd.DataFrame(result.probs, columns=list(EMOTIONS))
                table[["x", "y", "w", "h"]] = boxes
                table["track_id"] = result.track_ids
                table["emotion"] = [EMOTIONS[i] for i in result.probs.argmax(axis=1)]
                draw_faces(image, table)
            self.cv2.imshow(self.windows.get(result.stream, result.stream), image)
            self.shown += 1
        self.cv2.waitKey(1)

    def close(self) -> None:
        self.frames_socket.close()
        self.results_socket.close()
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
