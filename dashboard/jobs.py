"""Uploaded files analysed by the real pipeline, in a background process.

The dashboard never imports the pipeline stages: an upload is saved to a temporary folder and
handed to `python -m emojimation analyse` in a subprocess, exactly as a user would run it. The
pipeline writes its progress into the store (sources.frames_analysed / expected_frames), and the
upload page reads it from there, so the dashboard shows the same numbers for an upload as for any
other analysis. Jobs run one at a time (the pipeline already uses every core), in arrival order.

The job list lives in the app (one `AnalysisJobs` per `create_app`), not in a module global, so
two apps in one process (the tests) never see each other's jobs.
"""

from __future__ import annotations

import atexit
import importlib.util
import itertools
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.config import IMAGE_SUFFIXES, VIDEO_SUFFIXES

logger = logging.getLogger(__name__)

EXTENSION_KEY = "emojimation_dashboard_jobs"
ACCEPTED_SUFFIXES = VIDEO_SUFFIXES + IMAGE_SUFFIXES
MAX_UPLOAD_BYTES = 200 * 1024 * 1024  # the browser sends the whole file base64-encoded in one request
STOP_GRACE_S = 10.0
STDERR_TAIL_LINES = 5


def current() -> "AnalysisJobs":
    """The `AnalysisJobs` of the app serving this request."""
    import flask

    return flask.current_app.extensions[EXTENSION_KEY]


class UploadError(ValueError):
    """An upload the dashboard will not analyse (wrong type, empty); the message is for the user."""


@dataclass
class Job:
    """One uploaded file and the analysis process working on it."""

    id: str
    filename: str
    path: Path  # the saved upload; the pipeline stores it as the source URI
    out_dir: Path
    log_path: Path
    state: str = "queued"  # queued | running | finished | failed
    returncode: int | None = None
    submitted_at: float = field(default_factory=time.time)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def error_tail(self) -> str:
        """The last lines the pipeline printed on failure, for the page."""
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-STDERR_TAIL_LINES:])


def safe_filename(filename: str) -> str:
    """The base name with anything but letters, digits, dot, dash and underscore replaced."""
    base = Path(filename.replace("\\", "/")).name
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "upload"
    return cleaned[:120]


def project_root() -> Path:
    """The folder holding the `emojimation` package, so `-m emojimation` works from any cwd."""
    spec = importlib.util.find_spec("emojimation")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the emojimation package is not importable")
    return Path(next(iter(spec.submodule_search_locations))).resolve().parent


def analyse_command(path: Path, store_url: str, out_dir: Path) -> list[str]:
    """The pipeline command for one upload (thumbnails on: the timeline page shows them)."""
    return [sys.executable, "-m", "emojimation", "analyse", str(path), "--store", store_url,
            "--out", str(out_dir), "--no-progress", "--thumbnails"]


class AnalysisJobs:
    """Saves uploads and runs `emojimation analyse` on them, one at a time, in the background."""

    def __init__(self, store_url: str, upload_dir: str | Path | None = None, max_running: int = 1) -> None:
        self.store_url = store_url
        self._owns_dir = upload_dir is None
        self.upload_dir = Path(upload_dir) if upload_dir else Path(tempfile.mkdtemp(prefix="emojimation-uploads-"))
        self.upload_dir.mkdir(parents=True, exist_ok=True)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(max_running)
        self._counter = itertools.count(1)
        self._stopping = False
        atexit.register(self.shutdown)

    def submit(self, filename: str, content: bytes) -> Job:
        """Save the upload and queue its analysis; raises UploadError for files we cannot analyse."""
        name = safe_filename(filename)
        if not name.lower().endswith(ACCEPTED_SUFFIXES):
            raise UploadError(f"{filename}: not a video or image this dashboard analyses "
                              f"({', '.join(s.lstrip('.') for s in ACCEPTED_SUFFIXES)})")
        if not content:
            raise UploadError(f"{filename}: the file is empty")
        job_id = f"{int(time.time())}-{next(self._counter)}"
        folder = self.upload_dir / job_id
        folder.mkdir(parents=True)
        path = folder / name
        path.write_bytes(content)
        job = Job(id=job_id, filename=filename, path=path.resolve(), out_dir=folder / "out",
                  log_path=folder / "analyse.log")
        with self._lock:
            self._jobs[job_id] = job
        threading.Thread(target=self._run, args=(job,), name=f"emojimation-upload-{job_id}", daemon=True).start()
        logger.info("upload %s saved to %s, analysis queued", filename, path)
        return job

    def get(self, job_id: str | None) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id or "")

    def _run(self, job: Job) -> None:
        with self._slots:
            if self._stopping:
                job.state = "failed"
                return
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            root = project_root()
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")]))
            with open(job.log_path, "wb") as log:
                job.process = subprocess.Popen(analyse_command(job.path, self.store_url, job.out_dir), cwd=root,
                                               stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env)
                job.state = "running"
                job.returncode = job.process.wait()
            job.state = "finished" if job.returncode == 0 else "failed"
            logger.info("analysis of %s ended with exit code %s", job.filename, job.returncode)

    def shutdown(self) -> None:
        """Stop running analyses (terminate, then kill) and remove the uploads this object created."""
        self._stopping = True
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            process = job.process
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=STOP_GRACE_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        if self._owns_dir:
            shutil.rmtree(self.upload_dir, ignore_errors=True)
