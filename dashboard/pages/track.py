"""Track page (`/track/<source_id>/<track_id>`): one face track's full timeline and all its segments.

Track ids are only unique within a source (the aggregator numbers them per source), so the path
carries both. Like the timeline page it polls the store and keeps the user's zoom on updates.
"""

from __future__ import annotations

from typing import Any

import dash
from dash import Dash, Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate

from dashboard import components, ids
from dashboard.data import TrackSummary, current, display_name
from dashboard.figures import GRAPH_CONFIG, empty_figure, timeline_figure, uirevision_for
from dashboard.pages.common import parse_id, register_range_memory, view_state, window_from
from dashboard.theme import LIVE_INTERVAL_MS

PATH_TEMPLATE = "/track/<source_id>/<track_id>"


def register(app: Dash) -> None:
    dash.register_page(__name__, path_template=PATH_TEMPLATE, name="Track", title=title, layout=layout)
    register_range_memory(app, ids.TRACK_GRAPH, ids.TRACK_RANGE)
    _register_callbacks(app)


def title(source_id: str | None = None, track_id: str | None = None, **_: Any) -> str:
    return f"Emojimation · source {source_id} · track {track_id}" if track_id else "Emojimation · track"


def layout(source_id: str | None = None, track_id: str | None = None, **_query: Any) -> html.Div:
    source_number, track_number = parse_id(source_id), parse_id(track_id)
    figure, header, segments, shown = _content(source_number, track_number, None)
    return html.Div([
        dcc.Store(id=ids.TRACK_KEY, data={"source_id": source_number, "track_id": track_number}),
        dcc.Store(id=ids.TRACK_VERSION, data=shown),
        dcc.Store(id=ids.TRACK_RANGE, data=None),
        dcc.Interval(id=ids.TRACK_INTERVAL, interval=LIVE_INTERVAL_MS),
        html.Div(header, id=ids.TRACK_HEADER),
        dcc.Graph(id=ids.TRACK_GRAPH, figure=figure, config=GRAPH_CONFIG, className="timeline-graph"),
        html.H3("Segments"),
        html.Div(segments, id=ids.TRACK_SEGMENTS),
    ], className="page page-track")


def _content(source_id: int | None, track_id: int | None,
             window: tuple[float, float] | None) -> tuple[Any, Any, Any, dict[str, Any]]:
    """(figure, header, segments table, view state) for one track."""
    data = current()
    timeline = data.timeline(source_id, window, track_id=track_id) if None not in (source_id, track_id) else None
    summary = data.track_summary(source_id, track_id) if timeline is not None and track_id is not None else None
    if timeline is None or summary is None or source_id is None:
        message = "No such track" if timeline is None else f"Source {source_id} has no track {track_id} (yet)"
        back = dcc.Link("Back to the source", href=f"/source/{source_id}") if source_id is not None else dcc.Link(
            "Back to all sources", href="/")
        return (empty_figure(message), [html.H2(message), back], [],
                view_state(timeline.source if timeline is not None else None, window))
    figure = timeline_figure(timeline, uirevision_for(source_id, summary.track_id),
                             {summary.track_id: f"<b>Track {summary.track_id}</b>"})
    return (figure, _header(source_id, display_name(timeline.source), summary), _segments_table(summary),
            view_state(timeline.source, window))


def _header(source_id: int, source_name: str, track: TrackSummary) -> list[Any]:
    note = " (so far: the analysis is still running)" if track.provisional else ""
    return [
        dcc.Link(f"← {source_name}", href=f"/source/{source_id}", className="breadcrumb"),
        html.Div([
            components.thumbnail(track.thumbnail, 96),
            html.Div([
                html.Div([html.H2(f"Track {track.track_id}"), components.emotion_chip(track.dominant,
                                                                                   f"mostly {track.dominant}")],
                         className="title-row"),
                html.Div(f"{components.format_seconds(track.start_s)} – {components.format_seconds(track.end_s)} · "
                         f"{track.frames:,} frames · {len(track.segments)} segments{note}", className="muted"),
                components.mix_bar(track.means),
            ], className="track-body"),
        ], className="card track-card"),
        components.legend(),
    ]


def _segments_table(track: TrackSummary) -> html.Table:
    rows = [html.Tr([html.Td(components.emotion_chip(emotion)), html.Td(components.format_seconds(start)),
                     html.Td(components.format_seconds(end)), html.Td(f"{end - start:.1f} s")])
            for emotion, start, end in track.segments]
    return html.Table([html.Thead(html.Tr([html.Th("emotion"), html.Th("from"), html.Th("to"), html.Th("duration")])),
                       html.Tbody(rows)], className="table segments-table")


def _register_callbacks(app: Dash) -> None:
    @app.callback(
        Output(ids.TRACK_GRAPH, "figure"),
        Output(ids.TRACK_HEADER, "children"),
        Output(ids.TRACK_SEGMENTS, "children"),
        Output(ids.TRACK_VERSION, "data"),
        Input(ids.TRACK_INTERVAL, "n_intervals"),
        Input(ids.TRACK_RANGE, "data"),
        State(ids.TRACK_KEY, "data"),
        State(ids.TRACK_VERSION, "data"),
        prevent_initial_call=True,
    )
    def refresh(_ticks: int, window_data: Any, key: dict[str, Any] | None,
                shown: dict[str, Any] | None) -> tuple[Any, Any, Any, dict[str, Any]]:
        """Rebuild only when the source changed or the zoom did (see timeline.refresh)."""
        if not key or key.get("source_id") is None or key.get("track_id") is None:
            raise PreventUpdate
        window = window_from(window_data)
        if view_state(current().source(key["source_id"]), window) == shown:
            raise PreventUpdate
        return _content(key["source_id"], key["track_id"], window)
