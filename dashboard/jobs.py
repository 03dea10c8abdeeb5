"""Uploaded files analysed by the real pipeline, in a background process.

The dashboard never imports the pipeline stages: an upload is saved to a temporary folder and
handed to `python -m emojimation analyse` in a subprocess, exactly as a user would run it. The
pipeline writes its progress into the store (sources.frames_analysed / expected_frames), and the
upload page reads it from there, so the dashboard shows the same numbers for an upload as for any
other analysis. Jobs run one at a time (the pipeline already uses every core), in arrival order.

Limits and clean-up (issue 16):
- an upload above `max_upload_bytes` is refused here too, not only by the browser;
- at most `max_jobs` uploads wait or run at once; one more is refused with a message saying so;
- the store URL (which may hold a PostgreSQL password) reaches `analyse` through its
  environment (EMOJIMATION_STORE), never its command line, which every local user can read;
- the child is tied to the dashboard: it gets SIGTERM when the dashboard dies, however it dies
  (Linux PR_SET_PDEATHSIG), and is stopped at shutdown;
- the uploaded file and the job's folder are deleted as soon as the job ends (the last lines of
  its log are kept in memory for the page).

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
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from core.config import IMAGE_SUFFIXES, VIDEO_SUFFIXES

logger = logging.getLogger(__name__)

EXTENSION_KEY = "emojimation_dashboard_jobs"
ACCEPTED_SUFFIXES = VIDEO_SUFFIXES + IMAGE_SUFFIXES
MAX_UPLOAD_BYTES = 200 * 1024 * 1024  # the browser sends the whole file base64-encoded in one request
MAX_JOBS = 4  # uploads waiting or running at once
STOP_GRACE_S = 10.0
STDERR_TAIL_LINES = 5
STORE_ENV = "EMOJIMATION_STORE"  # read by `emojimation analyse`
# Not passed on to the analysis: it has no use for the dashboard's own password.
CHILD_ENV_DROPPED = ("EMOJIMATION_DASHBOARD_AUTH",)


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
    tail: str | None = None  # the log's last lines, kept once the job's folder is deleted

    @property
    def folder(self) -> Path:
        return self.path.parent

    @property
    def active(self) -> bool:
        return self.state in ("queued", "running")

    def error_tail(self) -> str:
        """The last lines the pipeline printed on failure, for the page."""
        if self.tail is not None:
            return self.tail
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


def analyse_command(path: Path, out_dir: Path) -> list[str]:
    """The pipeline command for one upload (thumbnails on: the timeline page shows them). The
    store URL is not in it: it goes by environment (`analyse_environment`)."""
    return [sys.executable, "-m", "emojimation", "analyse", str(path), "--out", str(out_dir), "--no-progress",
            "--thumbnails"]


def analyse_environment(store_url: str, base: dict[str, str] | None = None) -> dict[str, str]:
    """The analysis's environment: this process's, with the store URL in EMOJIMATION_STORE (an
    environment is readable by its owner only, unlike argv) and the project importable."""
    env = {k: v for k, v in (os.environ if base is None else base).items() if k not in CHILD_ENV_DROPPED}
    env.update({STORE_ENV: store_url, "PYTHONUNBUFFERED": "1"})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(project_root()), env.get("PYTHONPATH", "")]))
    return env


def _die_with_dashboard(parent: int) -> Callable[[], None]:
    """For `preexec_fn`: in the child, before exec, ask Linux for SIGTERM when the dashboard
    (the thread that started it, which waits for it) dies; if it is already gone, exit."""

    def arrange() -> None:
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass
        if os.getppid() != parent:  # the dashboard died before prctl: no signal would come
            os._exit(1)

    return arrange


class AnalysisJobs:
    """Saves uploads and runs `emojimation analyse` on them, one at a time, in the background."""

    def __init__(self, store_url: str, upload_dir: str | Path | None = None, max_running: int = 1, *,
                 max_upload_bytes: int = MAX_UPLOAD_BYTES, max_jobs: int = MAX_JOBS) -> None:
        self.store_url = store_url
        self.max_upload_bytes = max_upload_bytes
        self.max_jobs = max_jobs
        self._owns_dir = upload_dir is None
        self.upload_dir = Path(upload_dir) if upload_dir else Path(tempfile.mkdtemp(prefix="emojimation-uploads-"))
        self.upload_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(max_running)
        self._counter = itertools.count(1)
        self._stopping = False
        atexit.register(self.shutdown)

    def check_size(self, filename: str, size: int) -> None:
        """UploadError for an upload above the limit (before it is decoded or saved)."""
        if size > self.max_upload_bytes:
            raise UploadError(f"{filename}: {size / 1024 ** 2:.1f} MB is over this dashboard's limit of "
                              f"{self.max_upload_bytes / 1024 ** 2:g} MB")

    def submit(self, filename: str, content: bytes) -> Job:
        """Save the upload and queue its analysis; raises UploadError for files we cannot analyse,
        above the size limit, or when `max_jobs` uploads are already waiting or running."""
        name = safe_filename(filename)
        if not name.lower().endswith(ACCEPTED_SUFFIXES):
            raise UploadError(f"{filename}: not a video or image this dashboard analyses "
                              f"({', '.join(s.lstrip('.') for s in ACCEPTED_SUFFIXES)})")
        if not content:
            raise UploadError(f"{filename}: the file is empty")
        self.check_size(filename, len(content))
        job_id = f"{int(time.time())}-{next(self._counter)}"
        folder = self.upload_dir / job_id
        with self._lock:
            if self._stopping:
                raise UploadError(f"{filename}: the dashboard is shutting down")
            active = sum(job.active for job in self._jobs.values())
            if active >= self.max_jobs:
                raise UploadError(f"{filename}: the analysis queue is full ({active} files waiting or being "
                                  f"analysed, at most {self.max_jobs}); try again when one is done")
            job = Job(id=job_id, filename=filename, path=(folder / name).resolve(), out_dir=folder / "out",
                      log_path=folder / "analyse.log")
            self._jobs[job_id] = job  # counted from now on, before the file is written
        try:
            folder.mkdir(parents=True, mode=0o700)
            descriptor = os.open(job.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "wb") as file:
                file.write(content)
        except OSError as error:
            job.state = "failed"
            self._clean(job)
            raise UploadError(f"{filename}: cannot be saved ({error.strerror or error})") from None
        path = job.path
        threading.Thread(target=self._run, args=(job,), name=f"emojimation-upload-{job_id}", daemon=True).start()
        logger.info("upload %s saved to %s, analysis queued", filename, path)
        return job

    def get(self, job_id: str | None) -> Job | None:
        with self._lock:
            return self._jobs.get(job_id or "")

    def _run(self, job: Job) -> None:
        try:
            with self._slots:
                if self._stopping:
                    job.state = "failed"
                    return
                with open(job.log_path, "wb") as log:
                    job.process = subprocess.Popen(
                        analyse_command(job.path, job.out_dir), cwd=project_root(), stdin=subprocess.DEVNULL,
                        stdout=log, stderr=subprocess.STDOUT, env=analyse_environment(self.store_url),
                        preexec_fn=_die_with_dashboard(os.getpid()))
                    job.state = "running"
                    job.returncode = job.process.wait()
                job.tail = job.error_tail()
                job.state = "finished" if job.returncode == 0 else "failed"
                logger.info("analysis of %s ended with exit code %s", job.filename, job.returncode)
        except OSError as error:
            job.tail = f"the analysis could not start ({error.strerror or error})"
            job.state = "failed"
        finally:
            self._clean(job)

    @staticmethod
    def _clean(job: Job) -> None:
        """Delete the upload and everything its analysis wrote next to it."""
        shutil.rmtree(job.folder, ignore_errors=True)

    def shutdown(self) -> None:
        """Stop running analyses (terminate, then kill) and remove the uploads: this object's
        folder, or every job's folder in a folder it was given."""
        with self._lock:
            self._stopping = True
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
        for job in jobs:
            self._clean(job)
        if self._owns_dir:
            shutil.rmtree(self.upload_dir, ignore_errors=True)
