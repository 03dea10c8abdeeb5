"""Sources page (`/`): every analysed video, image set and camera, with status and emotion mix.

The table re-renders only when some source changed (the poll compares a cheap token), so a
user's hover or click is not disturbed every poll. Delete asks for confirmation first, then
removes the source and all its rows through the store. A file run that stopped before its
end (status `interrupted`, or `analysing` with no write for STALE_S: its run was killed) shows
as interrupted, with the command that resumes it.
"""

from __future__ import annotations

import json
import time
from typing import Any

import dash
from dash import ALL, Dash, Input, Output, State, ctx, dcc, html
from dash.exceptions import PreventUpdate

from dashboard import components, ids
from dashboard.data import SourceSummary, current, display_name
from dashboard.theme import LIVE_INTERVAL_MS

PATH = "/"
RUNNING_STATUSES = ("queued", "analysing", "connecting", "live")
STALE_S = 60.0  # a running file analysis writes every second; this long without a write, its run is gone


def resume_command(source: SourceSummary) -> str | None:
    """For a file source whose run stopped before its end: the command that resumes it ("" if
    the run did not say); None for any other source."""
    if source.kind == "camera" or source.status not in ("interrupted", "analysing"):
        return None
    row = current().source(source.id) or {}
    if source.status == "analysing" and time.time() - float(row.get("updated_at") or 0) < STALE_S:
        return None
    try:
        options = json.loads(row.get("options") or "{}")
    except (TypeError, ValueError):
        options = {}
    return str(options.get("resume") or "") if isinstance(options, dict) else ""


def register(app: Dash) -> None:
    dash.register_page(__name__, path=PATH, name="Sources", title="Emojimation · sources", layout=layout, order=0)
    _register_callbacks(app)


def layout(**_query: Any) -> html.Div:
    data = current()
    return html.Div([
        dcc.Interval(id=ids.SOURCES_INTERVAL, interval=LIVE_INTERVAL_MS),
        dcc.Store(id=ids.SOURCES_VERSION, data=data.sources_token()),
        dcc.Store(id=ids.SOURCES_PENDING_DELETE, data=None),
        dcc.ConfirmDialog(id=ids.SOURCES_CONFIRM, message=""),
        html.Div([
            html.H2("Sources"),
            dcc.Link("Analyse a file", href="/upload", className="button button-primary"),
        ], className="title-row"),
        components.legend(),
        html.Div(id=ids.SOURCES_MESSAGE, className="message"),
        html.Div(sources_table(data.source_summaries()), id=ids.SOURCES_TABLE),
    ], className="page page-sources")


def sources_table(summaries: list[SourceSummary]) -> html.Table | html.Div:
    if not summaries:
        return html.Div(["No sources yet. ", dcc.Link("Analyse a file", href="/upload"),
                         " here, or run ", html.Code("emojimation analyse VIDEO"), "."],
                        id=ids.SOURCES_EMPTY, className="empty")
    header = ["source", "kind", "status", "duration", "faces", "tracks", "emotion mix", "added", ""]
    return html.Table([
        html.Thead(html.Tr([html.Th(name) for name in header])),
        html.Tbody([_row(summary) for summary in summaries]),
    ], className="table sources-table")


def _row(source: SourceSummary) -> html.Tr:
    resume = resume_command(source)
    status_cell: list[Any] = [components.status_badge("interrupted" if resume is not None else source.status)]
    if resume:
        status_cell.append(html.Div(["resume with ", html.Code(resume)], className="small resume-command"))
    elif source.status in RUNNING_STATUSES and resume is None:
        status_cell.append(components.progress(source.frames_analysed, source.expected_frames, source.status))
    if source.error:
        status_cell.append(html.Div(source.error, className="error"))
    return html.Tr([
        html.Td([dcc.Link(source.name, href=f"/source/{source.id}", className="source-link"),
                 html.Div(source.uri, className="muted small", title=source.uri)]),
        html.Td(source.kind),
        html.Td(status_cell),
        html.Td(components.format_seconds(source.duration_s) if source.duration_s > 0 else "—"),
        html.Td(f"{source.faces:,}", className="number"),
        html.Td("…" if source.tracks is None else str(source.tracks), className="number"),
        html.Td(components.mix_bar(source.emotion_mix) if source.emotion_mix else "—", className="mix-cell"),
        html.Td(components.format_clock(source.created_at), className="small"),
        html.Td(html.Button("Delete", id={"type": ids.SOURCES_DELETE, "index": source.id},
                            className="button button-danger", title=f"delete {source.name} and its results")),
    ], id=f"source-row-{source.id}")


def _register_callbacks(app: Dash) -> None:
    @app.callback(
        Output(ids.SOURCES_TABLE, "children"),
        Output(ids.SOURCES_VERSION, "data"),
        Input(ids.SOURCES_INTERVAL, "n_intervals"),
        State(ids.SOURCES_VERSION, "data"),
        prevent_initial_call=True,
    )
    def refresh(_ticks: int, version: str | None) -> tuple[Any, str]:
        data = current()
        token = data.sources_token()
        if token == version:
            raise PreventUpdate
        return sources_table(data.source_summaries()), token

    @app.callback(
        Output(ids.SOURCES_CONFIRM, "displayed"),
        Output(ids.SOURCES_CONFIRM, "message"),
        Output(ids.SOURCES_PENDING_DELETE, "data"),
        Input({"type": ids.SOURCES_DELETE, "index": ALL}, "n_clicks"),
        prevent_initial_call=True,
    )
    def ask_delete(clicks: list[int | None]) -> tuple[bool, str, int]:
        """Ask before deleting: a re-rendered table also fires this, with no click behind it."""
        trigger = ctx.triggered_id
        if not isinstance(trigger, dict) or not ctx.triggered[0].get("value"):
            raise PreventUpdate
        source = current().source(int(trigger["index"]))
        if source is None:
            raise PreventUpdate
        return (True, f"Delete “{display_name(source)}” and all its results? This cannot be undone.",
                int(trigger["index"]))

    @app.callback(
        Output(ids.SOURCES_TABLE, "children", allow_duplicate=True),
        Output(ids.SOURCES_VERSION, "data", allow_duplicate=True),
        Output(ids.SOURCES_MESSAGE, "children"),
        Input(ids.SOURCES_CONFIRM, "submit_n_clicks"),
        State(ids.SOURCES_PENDING_DELETE, "data"),
        prevent_initial_call=True,
    )
    def delete(submitted: int | None, source_id: int | None) -> tuple[Any, str, str]:
        if not submitted or source_id is None:
            raise PreventUpdate
        data = current()
        source = data.source(source_id)
        data.delete_source(source_id)
        name = display_name(source) if source is not None else f"source {source_id}"
        return sources_table(data.source_summaries()), data.sources_token(), f"Deleted {name}."
