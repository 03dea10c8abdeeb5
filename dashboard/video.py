"""The video a source's page plays, and the HTTP route that serves it.

Which file: the annotated MP4 `analyse --annotate` wrote (its path is in the store,
`sources.annotated_video`), else the original file (`sources.uri`), transcoded once by ffmpeg to
H.264/yuv420p MP4 (`+faststart`, so playback starts before the whole file is read) and cached under
the data folder (`$EMOJIMATION_HOME/video-cache`, 0700, files 0600). The cache key is the original's
path, size and modification time: a replaced file is transcoded again. Transcoding runs in a
background thread, one per file however many pages ask; the page says "preparing" until it is done.

The route is `/video/<source id>.mp4`: the file is looked up from the store by id, never from a path
in the request. Range requests are answered by Werkzeug's `send_file(conditional=True)` (206 with
Content-Range, Accept-Ranges, 416 for an unsatisfiable range): a browser needs them to seek. The
route sits behind the same guard (Host, body limits) and basic auth as every page, because both
wrap the whole Flask app.

Cameras: `/live/<source id>.jpg` is the camera's newest annotated frame, which the store holds only
while `emojimation monitor --live-view` runs (off by default: it keeps images of faces).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import flask

from core.config import data_dir
from dashboard.data import display_name

logger = logging.getLogger(__name__)

EXTENSION_KEY = "emojimation_dashboard_videos"
ROUTE = "/video/<int:source_id>.mp4"
TRANSCODE_TIMEOUT_S = 3600.0


def video_url(source_id: int) -> str:
    return f"/video/{int(source_id)}.mp4"


@dataclass(frozen=True)
class VideoState:
    """What the page can show for a source's video.

    `status`: "ready" (`path` plays), "preparing" (being transcoded), "missing" (the file is gone),
    "failed" (ffmpeg could not transcode it) or "none" (cameras and images have no video)."""

    status: str
    message: str = ""
    path: Path | None = None
    kind: str = ""  # "annotated" or "original"


def current() -> "Videos":
    return flask.current_app.extensions[EXTENSION_KEY]


class Videos:
    """Finds, transcodes and caches the video of each source; one per app."""

    def __init__(self, cache_dir: str | Path | None = None, private_dirs: tuple[Path, ...] = ()) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else data_dir() / "video-cache"
        # Files under these folders are never copied into the cache: an upload is deleted as soon
        # as its analysis ends (docs/security.md), and a converted copy must not outlive it.
        self.private_dirs = tuple(Path(d).resolve() for d in private_dirs)
        self._lock = threading.Lock()
        self._running: dict[Path, threading.Thread] = {}
        self._failures: dict[Path, str] = {}

    # --- which file ---------------------------------------------------------------------
    def state(self, source: Mapping[str, Any] | None, start: bool = True) -> VideoState:
        """The video of `source` (a store row); starts the transcode when `start` and needed."""
        if source is None:
            return VideoState("none", "No such source")
        if source.get("kind") != "video":
            return VideoState("none")
        annotated = source.get("annotated_video")
        if isinstance(annotated, str) and annotated and Path(annotated).is_file():
            return VideoState("ready", path=Path(annotated), kind="annotated")
        original = Path(str(source.get("uri") or ""))
        if any(original.resolve().is_relative_to(folder) for folder in self.private_dirs):
            return VideoState("missing", f"{display_name(source)} was an upload: its file was deleted after "
                                         f"the analysis, so only its timelines can be shown.")
        if not original.is_absolute() or not original.is_file():
            return VideoState("missing", f"The video file is gone: {original} no longer exists (moved or "
                                         f"deleted), so only its timelines can be shown.")
        try:
            cached = self.cache_path(original)
        except OSError as error:
            return VideoState("missing", f"The video file cannot be read: {original} ({error.strerror or error})")
        if cached.is_file():
            return VideoState("ready", path=cached, kind="original")
        with self._lock:
            if cached in self._failures:
                return VideoState("failed", self._failures[cached])
            if start and cached not in self._running:
                thread = threading.Thread(target=self._transcode, args=(original, cached),
                                          name=f"transcode-{cached.stem}", daemon=True)
                self._running[cached] = thread
                thread.start()
        return VideoState("preparing", f"Preparing {display_name(source)} for the browser (a one-time "
                                       f"conversion to H.264 MP4)…")

    def cache_path(self, original: Path) -> Path:
        info = original.stat()
        key = hashlib.sha256(f"{original.resolve()}|{info.st_size}|{info.st_mtime_ns}".encode()).hexdigest()[:24]
        return self.cache_dir / f"{key}.mp4"

    # --- transcoding --------------------------------------------------------------------
    def _transcode(self, original: Path, cached: Path) -> None:
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            os.chmod(self.cache_dir, 0o700)  # the videos show faces: private, like the store
            handle, temporary = tempfile.mkstemp(prefix=".transcode-", suffix=".mp4", dir=self.cache_dir)
            os.close(handle)
            # Niced: a conversion must not slow the pages the dashboard is serving meanwhile.
            command = [
                "nice", "-n", "10", "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", str(original),
                "-map", "0:v:0", "-map", "0:a:0?", "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",
                "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt", "yuv420p",
                "-c:a", "aac", "-b:a", "128k", "-movflags", "+faststart", "-f", "mp4", temporary,
            ]
            try:
                result = subprocess.run(command, capture_output=True, text=True, timeout=TRANSCODE_TIMEOUT_S)
                if result.returncode != 0:
                    lines = [line for line in result.stderr.splitlines() if line.strip()]
                    raise RuntimeError(lines[-1] if lines else f"ffmpeg exit code {result.returncode}")
                os.chmod(temporary, 0o600)
                os.replace(temporary, cached)
            finally:
                Path(temporary).unlink(missing_ok=True)
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            message = f"The video could not be converted for the browser: {error}"
            logger.warning("%s: %s", original, message)
            with self._lock:
                self._failures[cached] = message
        finally:
            with self._lock:
                self._running.pop(cached, None)


def live_url(source_id: int, at: float) -> str:
    """The camera's newest frame; `at` in the query makes every new frame a new URL."""
    return f"/live/{int(source_id)}.jpg?at={at:.3f}"


def install_live_route(server: flask.Flask, read_frame: Any) -> None:
    """`GET /live/<id>.jpg`: a camera's newest annotated frame (`monitor --live-view`), by id."""

    @server.route("/live/<int:source_id>.jpg", methods=["GET", "HEAD"])
    def serve_live_frame(source_id: int) -> flask.Response:
        frame = read_frame(source_id)
        if frame is None:
            return flask.Response("no live frame for this source\n", status=404, mimetype="text/plain")
        return flask.Response(frame["jpeg"], mimetype="image/jpeg", headers={
            "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


def install_route(server: flask.Flask, read_source: Any) -> None:
    """`GET /video/<id>.mp4`: the source's video by id, with range requests.

    `read_source(source_id)` returns the store row (through dashboard.data)."""

    @server.route(ROUTE, methods=["GET", "HEAD"])
    def serve_video(source_id: int) -> flask.Response:
        state = current().state(read_source(source_id))
        if state.status == "ready" and state.path is not None:
            response = flask.send_file(state.path, mimetype="video/mp4", conditional=True, etag=True,
                                       max_age=0)
            response.headers["Accept-Ranges"] = "bytes"
            response.headers["Cache-Control"] = "private, no-cache"
            response.headers["X-Content-Type-Options"] = "nosniff"
            return response
        status = {"preparing": 503, "failed": 500}.get(state.status, 404)
        response = flask.Response((state.message or "no video for this source") + "\n", status=status,
                                  mimetype="text/plain")
        if status == 503:
            response.headers["Retry-After"] = "2"
        return response
