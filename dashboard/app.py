"""The app factory: `create_app(store_url) -> dash.Dash`.

Everything app-specific is built here and attached to the app, nothing lives in module globals:
the store access (`DashboardData`) and the upload jobs (`AnalysisJobs`) go into the Flask
server's `extensions`, where pages find them with `data.current()` / `jobs.current()`. Pages are
registered with Dash Pages from here (`use_pages=True, pages_folder=""`), each with its callbacks
on this app, so several apps can live in one process (tests) without sharing state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import dash
from dash import Dash, dcc, html

from dashboard import data as data_module
from dashboard import ids
from dashboard import jobs as jobs_module
from dashboard import video as video_module
from dashboard.auth import install_basic_auth
from dashboard.guard import RequestGuard, callback_body_limit
from dashboard.pages import PAGES
from core.config import default_store_url

ASSETS = Path(__file__).resolve().parent / "assets"
NAVIGATION = (("Sources", "/"), ("Events", "/events"), ("Analyse a file", "/upload"))


def create_app(store_url: str | None = None, *, auth: tuple[str, str] | None = None,
               upload_dir: str | Path | None = None, allowed_hosts: Iterable[str] = (),
               max_upload_bytes: int = jobs_module.MAX_UPLOAD_BYTES, max_jobs: int = jobs_module.MAX_JOBS,
               video_cache_dir: str | Path | None = None) -> Dash:
    """Build the dashboard over the store at `store_url` (default: the usual store).

    `auth` = (user, password) turns on HTTP basic auth for every request. `upload_dir` is where
    uploads are saved (default: a temporary folder removed at exit). `allowed_hosts`: the names
    the dashboard answers to besides IP addresses and localhost (dashboard.guard; "*" = any).
    `max_upload_bytes` caps an upload (and so every request body), `max_jobs` the uploads
    waiting or running. `video_cache_dir`: where originals transcoded for the player are kept
    (default `$EMOJIMATION_HOME/video-cache`). Raises `core.errors.ConfigError` for a store URL it cannot open.
    """
    url = store_url or default_store_url()
    data = data_module.DashboardData(url)
    app = Dash(
        __name__,
        use_pages=True,
        pages_folder="",
        assets_folder=str(ASSETS),
        title="Emojimation",
        update_title=None,  # keep the tab title steady while the poll runs
        suppress_callback_exceptions=False,
    )
    app.server.extensions[data_module.EXTENSION_KEY] = data
    jobs = jobs_module.AnalysisJobs(url, upload_dir, max_upload_bytes=max_upload_bytes, max_jobs=max_jobs)
    app.server.extensions[jobs_module.EXTENSION_KEY] = jobs
    app.server.extensions[video_module.EXTENSION_KEY] = video_module.Videos(video_cache_dir, (jobs.upload_dir,))
    video_module.install_route(app.server, data.source)  # /video/<id>.mp4, by id, with range requests
    video_module.install_live_route(app.server, data.live_frame)  # /live/<id>.jpg: a camera's newest frame
    # Flask's own cap (413 from werkzeug when a body is read) behind the guard's, which refuses
    # by Content-Length before anything is read. One byte more than the guard's limit: on a
    # chunked body werkzeug reads exactly up to its cap and returns the body cut short, so it
    # must ask for the byte past the guard's limit, where the guard's stream answers 413.
    app.server.config["MAX_CONTENT_LENGTH"] = callback_body_limit(max_upload_bytes) + 1
    app.server.wsgi_app = RequestGuard(app.server.wsgi_app, allowed_hosts, max_upload_bytes)
    for page in PAGES:
        page.register(app)
    app.layout = shell
    if auth is not None:
        install_basic_auth(app.server, *auth)
    return app


def shell() -> html.Div:
    """The frame around every page: a navigation bar and Dash Pages' container."""
    links = [dcc.Link(label, href=path, className="nav-link", id={"type": ids.NAV_LINK, "index": path})
             for label, path in NAVIGATION]
    return html.Div([
        html.Header([dcc.Link("Emojimation", href="/", className="brand"), html.Nav(links)], id=ids.NAV,
                    className="nav"),
        html.Main(dash.page_container, className="content"),
    ])
