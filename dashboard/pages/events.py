"""Events page (`/events`): alert events and camera status changes, newest first.

Filter by source with the dropdown, or link straight to `/events?source=<id>`. The page works
with whatever events the store holds (`Store.add_event`); it knows no event kinds in advance.
"""

from __future__ import annotations

import json
from typing import Any

import dash
import pandas as pd
from dash import Dash, Input, Output, State, ctx, dcc, html
from dash.exceptions import PreventUpdate

from dashboard import components, ids
from dashboard.data import current
from dashboard.pages.common import parse_id
from dashboard.theme import LIVE_INTERVAL_MS

PATH = "/events"
EVENT_LIMIT = 500


def register(app: Dash) -> None:
    dash.register_page(__name__, path=PATH, name="Events", title="Emojimation · events", layout=layout, order=1)
    _register_callbacks(app)


def layout(source: str | None = None, **_query: Any) -> html.Div:
    data = current()
    source_id = parse_id(source)
    return html.Div([
        dcc.Interval(id=ids.EVENTS_INTERVAL, interval=LIVE_INTERVAL_MS),
        dcc.Store(id=ids.EVENTS_VERSION, data=data.events_token(source_id)),
        html.Div([html.H2("Events"),
                  dcc.Dropdown(id=ids.EVENTS_SOURCE, options=data.source_options(), value=source_id,
                               placeholder="All sources", clearable=True, className="source-filter")],
                 className="title-row"),
        html.Div(events_table(data.events(source_id, EVENT_LIMIT)), id=ids.EVENTS_TABLE),
    ], className="page page-events")


def events_table(events: pd.DataFrame) -> html.Table | html.Div:
    if events.empty:
        return html.Div("No events yet. Alerts and camera status changes appear here as they happen.",
                        className="empty")
    rows = []
    for event in events.to_dict("records"):
        source_cell: Any = (dcc.Link(event["source_name"], href=f"/source/{int(event['source_id'])}")
                            if pd.notna(event["source_id"]) else "—")
        rows.append(html.Tr([
            html.Td(components.format_clock(float(event["at"])), className="small nowrap"),
            html.Td(source_cell),
            html.Td(html.Span(event["kind"], className="kind")),
            html.Td(event["message"]),
            html.Td(html.Code(_details(event.get("data"))) if _details(event.get("data")) else "", className="small"),
        ], className="event-row"))
    return html.Table([
        html.Thead(html.Tr([html.Th(name) for name in ("time", "source", "kind", "message", "details")])),
        html.Tbody(rows),
    ], className="table events-table")


def _details(text: Any) -> str:
    """The event's JSON data, compact; empty for `{}`."""
    if not isinstance(text, str) or not text.strip():
        return ""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return "" if not value else json.dumps(value, separators=(", ", ": "), ensure_ascii=False)


def _register_callbacks(app: Dash) -> None:
    @app.callback(
        Output(ids.EVENTS_TABLE, "children"),
        Output(ids.EVENTS_VERSION, "data"),
        Input(ids.EVENTS_SOURCE, "value"),
        Input(ids.EVENTS_INTERVAL, "n_intervals"),
        State(ids.EVENTS_VERSION, "data"),
        prevent_initial_call=True,
    )
    def refresh(source_id: int | None, _ticks: int, version: str | None) -> tuple[Any, str]:
        data = current()
        token = data.events_token(source_id)
        if ctx.triggered_id == ids.EVENTS_INTERVAL and token == version:
            raise PreventUpdate
        return events_table(data.events(source_id, EVENT_LIMIT)), token
