"""Upload page (`/upload`): drop a video or image; the real pipeline analyses it in the background.

The file goes to `dashboard.jobs` (saved to a temporary folder, then `emojimation analyse` in a
subprocess). Progress is read from the store, where the pipeline writes it, and once the source
is done the page moves on to its timeline.

The size limit is the browser's (`dcc.Upload max_size`) and the server's: the request body is
capped before it is read (dashboard.guard), and an upload above the limit that reaches the
callback anyway is refused from its base64 length, before it is decoded.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import dash
from dash import Dash, Input, Output, State, dcc, html, no_update
from dash.exceptions import PreventUpdate

from dashboard import components, ids, jobs
from dashboard.data import current

PATH = "/upload"
POLL_MS = 1000
ACCEPT = ",".join(["video/*", "image/*", *jobs.ACCEPTED_SUFFIXES])


def register(app: Dash) -> None:
    dash.register_page(__name__, path=PATH, name="Analyse a file", title="Emojimation · analyse a file",
                       layout=layout, order=2)
    _register_callbacks(app)


def layout(**_query: Any) -> html.Div:
    max_bytes = jobs.current().max_upload_bytes
    return html.Div([
        dcc.Store(id=ids.UPLOAD_JOB, data=None),
        dcc.Interval(id=ids.UPLOAD_INTERVAL, interval=POLL_MS, disabled=True),
        dcc.Location(id=ids.UPLOAD_REDIRECT, refresh="callback-nav"),
        html.H2("Analyse a file"),
        html.P(["A video or an image goes through the full pipeline (face detection, emotion model, "
                "tracking), the same as ", html.Code("emojimation analyse"), ". Its timeline opens when done."],
               className="muted"),
        dcc.Upload(
            id=ids.UPLOAD_DROP, accept=ACCEPT, multiple=False, max_size=max_bytes,
            className="dropzone", className_active="dropzone dropzone-active",
            children=html.Div([html.Strong("Drop a video or image here"), html.Span(" or click to choose one"),
                               html.Div(f"up to {max_bytes / (1024 * 1024):g} MB",
                                        className="muted small")]),
        ),
        html.Div(id=ids.UPLOAD_STATUS, className="upload-status"),
        html.Div(id=ids.UPLOAD_PROGRESS),
        html.Div(id=ids.UPLOAD_RESULT),
    ], className="page page-upload")


def _decode(contents: str, filename: str) -> bytes:
    """The bytes of a dcc.Upload `contents` value (`data:<type>;base64,<data>`); an upload above
    the limit is refused from its length, without decoding it."""
    _, _, encoded = contents.partition(",")
    jobs.current().check_size(filename, len(encoded) // 4 * 3 - encoded[-2:].count("="))
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error as error:
        raise jobs.UploadError(f"the upload could not be decoded ({error})") from None


def _register_callbacks(app: Dash) -> None:
    @app.callback(
        Output(ids.UPLOAD_JOB, "data"),
        Output(ids.UPLOAD_INTERVAL, "disabled"),
        Output(ids.UPLOAD_STATUS, "children"),
        Output(ids.UPLOAD_RESULT, "children", allow_duplicate=True),
        Input(ids.UPLOAD_DROP, "contents"),
        State(ids.UPLOAD_DROP, "filename"),
        prevent_initial_call=True,
    )
    def start(contents: str | None, filename: str | None) -> tuple[Any, bool, Any, Any]:
        if not contents or not filename:
            raise PreventUpdate
        try:
            job = jobs.current().submit(filename, _decode(contents, filename))
        except jobs.UploadError as error:
            return None, True, html.Div(str(error), className="error"), None
        return job.id, False, f"{filename}: queued for analysis…", None

    @app.callback(
        Output(ids.UPLOAD_STATUS, "children", allow_duplicate=True),
        Output(ids.UPLOAD_PROGRESS, "children"),
        Output(ids.UPLOAD_RESULT, "children"),
        Output(ids.UPLOAD_INTERVAL, "disabled", allow_duplicate=True),
        Output(ids.UPLOAD_REDIRECT, "pathname"),
        Input(ids.UPLOAD_INTERVAL, "n_intervals"),
        State(ids.UPLOAD_JOB, "data"),
        prevent_initial_call=True,
    )
    def poll(_ticks: int, job_id: str | None) -> tuple[Any, Any, Any, bool, Any]:
        """Follow the job: process state from `jobs`, frames from the store."""
        job = jobs.current().get(job_id)
        if job is None:
            raise PreventUpdate
        source = current().source_for_uri(str(job.path))
        if source is not None and source["status"] == "done":
            link = dcc.Link(f"Open the timeline of {job.filename}", href=f"/source/{int(source['id'])}")
            return f"{job.filename}: done.", None, link, True, f"/source/{int(source['id'])}"
        if (source is not None and source["status"] == "failed") or job.state == "failed":
            reason = (source or {}).get("error") or job.error_tail() or f"exit code {job.returncode}"
            return (html.Div([f"{job.filename}: the analysis failed. ", html.Pre(reason)], className="error"),
                    None, None, True, no_update)
        if job.state == "finished":
            return f"{job.filename}: the analysis ended without a result.", None, None, True, no_update
        if source is None:
            text = "waiting for another analysis to finish…" if job.state == "queued" else "starting the pipeline…"
            return f"{job.filename}: {text}", components.progress(0, 0, "queued"), None, False, no_update
        done, expected = int(source["frames_analysed"] or 0), int(source["expected_frames"] or 0)
        return f"{job.filename}: analysing…", components.progress(done, expected, "analysing"), None, False, no_update
