"""The page for unknown paths. Dash Pages uses a module whose name ends in `not_found_404`."""

from __future__ import annotations

from typing import Any

import dash
from dash import Dash, dcc, html


def register(app: Dash) -> None:
    dash.register_page(__name__, path="/404", name="Not found", title="Emojimation · not found", layout=layout)


def layout(**_query: Any) -> html.Div:
    return html.Div([html.H2("Page not found"), dcc.Link("Back to all sources", href="/")], className="page")
