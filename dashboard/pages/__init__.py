"""One module per page. Each exposes `register(app)`: it registers the page with Dash Pages
(path, title, layout function) and the page's callbacks on that app.

Callbacks use `app.callback` on the app the factory passes in, not the global `@dash.callback`:
two apps built in one process (the tests do this) then never share or steal callbacks.
Layout functions and callbacks reach the store through `dashboard.data.current()`.
"""

from __future__ import annotations

from dashboard.pages import events, not_found_404, sources, timeline, track, upload

PAGES = (sources, timeline, track, events, upload, not_found_404)
