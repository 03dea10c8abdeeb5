"""The Emojimation dashboard: a multi-page Dash app over the results store.

Layout of the package (read top to bottom):
- `app.py`: the factory `create_app(store_url)`; the only place an app is built.
- `pages/`: one module per page (sources, timeline, track, events, upload), each with `register(app)`.
- `ids.py`: every component id.
- `data.py`: the only data access; reads and writes through `core.store.Store`.
- `downsample.py`, `figures.py`, `components.py`, `theme.py`: values -> points -> figures -> HTML.
- `jobs.py`: uploads analysed by `emojimation analyse` in a subprocess (the stages are never imported).
- `video.py` (+ `assets/player.js`): the video a source's page plays, served by id with range requests.
- `auth.py`: HTTP basic auth; `cli.py`: the `emojimation dashboard` command.
- `demo.py`: synthetic sources for benchmarks and tests; `screenshots.py`: docs/screenshots/*.png.

Importing this package is cheap (no Dash): `emojimation.cli` imports `dashboard.cli` for every
command, so Dash is only loaded by `create_app`.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from dashboard.app import create_app

        return create_app
    raise AttributeError(f"module 'dashboard' has no attribute {name!r}")
