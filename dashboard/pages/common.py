"""Helpers shared by the pages that draw a timeline (timeline and track pages)."""

from __future__ import annotations

from typing import Any

from dash import Dash, Input, Output, State

from dashboard.data import source_token

# Reads the zoom from the drawn figure itself, in the browser. A server callback on
# `relayoutData` loses zooms: Plotly often sends a second event right after a zoom (e.g.
# {"autosize": true}), the renderer then drops the first request's answer as superseded, and the
# zoom never reaches the store. Reading `_fullLayout` in the browser is synchronous and sees the
# real state whatever event fired ("everything" when the x axis is on autorange).
VISIBLE_RANGE_JS = """
function(relayout, current, graphId) {
    const noUpdate = window.dash_clientside.no_update;
    const outer = document.getElementById(graphId);
    const graph = outer && outer.querySelector('.js-plotly-plot');
    const axis = graph && graph._fullLayout && graph._fullLayout.xaxis;
    if (!axis) { return noUpdate; }
    const next = axis.autorange ? null : [Number(axis.range[0]), Number(axis.range[1])].sort((a, b) => a - b);
    return JSON.stringify(next) === JSON.stringify(current === undefined ? null : current) ? noUpdate : next;
}
"""


def parse_id(text: Any) -> int | None:
    """A path variable as a non-negative int, None if it is not one (the page then says so)."""
    try:
        value = int(str(text))
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None


def window_from(data: Any) -> tuple[float, float] | None:
    """The zoom window kept in a dcc.Store ([start, end] or None)."""
    if isinstance(data, (list, tuple)) and len(data) == 2:
        return float(data[0]), float(data[1])
    return None


def view_state(source: dict[str, Any] | None, window: tuple[float, float] | None, values: str = "smoothed"
               ) -> dict[str, Any]:
    """What a drawn figure shows: the source's version, the zoom window and the values kind.

    Pages keep the state their figure was built for and rebuild only when the wanted state
    differs, so a poll without new rows, a repeated zoom event or a spurious trigger costs one
    source-row read and no figure.
    """
    return {"token": source_token(source) if source is not None else None,
            "window": list(window) if window is not None else None, "values": values}


def register_range_memory(app: Dash, graph_id: str, range_id: str) -> None:
    """Keep the graph's visible x range in a dcc.Store, so exports and refreshes know the zoom."""
    app.clientside_callback(
        VISIBLE_RANGE_JS,
        Output(range_id, "data"),
        Input(graph_id, "relayoutData"),
        State(range_id, "data"),
        State(graph_id, "id"),
        prevent_initial_call=True,
    )

