"""Timeline page (`/source/<source_id>`): every face track of one source over time.

One row per track: the seven emotion probabilities and a dominant-emotion ribbon, all sharing one
zoom. Below the figure, one card per track (thumbnail, dominant emotion, distribution, segments).
A `dcc.Interval` polls the store; when the source changed the figure is rebuilt with the same
`uirevision`, so a live source grows on screen while the user's zoom stays where it was.
The "Export CSV" button sends every face row of the visible time range, read fresh from the store.

Above the timeline, a video source's page plays its video (dashboard/video.py picks the file and
serves it by id). The playback cursor, seeking by a click on a timeline or a drag along a ribbon, and
the cards' "first seen" buttons run in the browser only (dashboard/assets/player.js): following the
<video> element's currentTime costs no server round-trip.
"""

from __future__ import annotations

from typing import Any

import dash
from dash import Dash, Input, Output, State, dcc, html
from dash.exceptions import PreventUpdate

from dashboard import components, ids
from dashboard import video as video_module
from dashboard.data import Timeline, TrackSummary, current, display_name
from dashboard.figures import GRAPH_CONFIG, empty_figure, timeline_figure, uirevision_for
from dashboard.pages.common import parse_id, register_range_memory, view_state, window_from
from dashboard.theme import LIVE_INTERVAL_MS

PATH_TEMPLATE = "/source/<source_id>"
VALUE_OPTIONS = [
    {"label": "smoothed per track", "value": "smoothed"},
    {"label": "per frame (calibrated)", "value": "frame"},
]


def register(app: Dash) -> None:
    dash.register_page(__name__, path_template=PATH_TEMPLATE, name="Timeline", title=title, layout=layout)
    register_range_memory(app, ids.TIMELINE_GRAPH, ids.TIMELINE_RANGE)
    _register_callbacks(app)


def title(source_id: str | None = None, **_: Any) -> str:
    return f"Emojimation · source {source_id}" if source_id else "Emojimation · timeline"


def layout(source_id: str | None = None, **_query: Any) -> html.Div:
    """The page for one source; unknown ids get the same skeleton with a "not found" message."""
    source_number = parse_id(source_id)
    data = current()
    timeline = data.timeline(source_number) if source_number is not None else None
    figure, header, tracks = _content(source_number, timeline)
    state = video_module.current().state(timeline.source if timeline else None)
    camera = timeline is not None and timeline.source.get("kind") == "camera"
    live = data.live_frame(source_number, image=False) if camera else None
    return html.Div([
        dcc.Store(id=ids.TIMELINE_VIDEO_STATE, data=state.status),
        dcc.Store(id=ids.TIMELINE_LIVE_AT, data=(live["at"] if live else None) if camera else "off"),
        # Their own timers, disabled when there is nothing to follow: no request per poll for nothing.
        dcc.Interval(id=ids.TIMELINE_VIDEO_INTERVAL, interval=LIVE_INTERVAL_MS, disabled=state.status != "preparing"),
        dcc.Interval(id=ids.TIMELINE_LIVE_INTERVAL, interval=LIVE_INTERVAL_MS, disabled=not camera),
        dcc.Store(id=ids.TIMELINE_SOURCE, data=source_number),
        dcc.Store(id=ids.TIMELINE_VERSION, data=view_state(timeline.source if timeline else None, None)),
        dcc.Store(id=ids.TIMELINE_RANGE, data=None),
        dcc.Interval(id=ids.TIMELINE_INTERVAL, interval=LIVE_INTERVAL_MS),
        html.Div(header, id=ids.TIMELINE_HEADER),
        html.Div([
            dcc.RadioItems(id=ids.TIMELINE_VALUES, options=VALUE_OPTIONS, value="smoothed", inline=True,
                           className="radio"),
            html.Span(_range_text(data.rows_in_window(source_number, None) if timeline else 0, None),
                      id=ids.TIMELINE_RANGE_LABEL, className="muted"),
            html.Button("Export CSV of the visible range", id=ids.TIMELINE_EXPORT, className="button",
                        disabled=timeline is None),
            dcc.Download(id=ids.TIMELINE_DOWNLOAD),
        ], className="toolbar"),
        html.Div(_video_panel(source_number, state), id=ids.TIMELINE_VIDEO_BOX, className="video-box"),
        html.Div(_live_panel(source_number, live) if camera else [], id=ids.TIMELINE_LIVE_BOX, className="video-box"),
        html.Div([
            dcc.Graph(id=ids.TIMELINE_GRAPH, figure=figure, config=GRAPH_CONFIG, className="timeline-graph"),
            html.Div(id=ids.TIMELINE_CURSOR, className="playhead", style={"display": "none"}),
        ], className="graph-wrap"),
        html.Div(tracks, id=ids.TIMELINE_TRACKS, className="track-cards"),
    ], className="page page-timeline")


def _content(source_id: int | None, timeline: Timeline | None) -> tuple[Any, Any, Any]:
    """(figure, header, track cards) for the current state of the source."""
    if source_id is None or timeline is None:
        message = "No such source" if source_id is None else f"Source {source_id} does not exist (deleted?)"
        header = [html.H2(message), dcc.Link("Back to all sources", href="/")]
        return empty_figure(message), header, []
    data = current()
    summaries = data.track_summaries(source_id)
    shown = {track.track_id for track in timeline.tracks}
    titles = {t.track_id: _track_title(t) for t in summaries}
    faces = {t.track_id: t.thumbnail for t in summaries if t.thumbnail}
    figure = timeline_figure(timeline, uirevision_for(source_id), titles, faces)
    playable = video_module.current().state(timeline.source, start=False).status in ("ready", "preparing")
    cards = [components.track_card(source_id, t, t.track_id in shown, jump=playable) for t in summaries]
    return figure, _header(timeline, len(summaries)), cards


def _video_panel(source_id: int | None, state: video_module.VideoState) -> list[Any]:
    """The player, or one line saying why there is none (a camera or an image set shows nothing)."""
    if state.status == "ready" and source_id is not None:
        what = ("annotated video (boxes, track numbers, emotion bars)" if state.kind == "annotated"
                else "original video")
        return [
            html.Video(id=ids.TIMELINE_VIDEO, src=video_module.video_url(source_id), controls=True, muted=True,
                       preload="auto", className="player", **{"playsInline": True}),
            html.Div([html.Span(f"Playing the {what}. "),
                      html.Span("Click a timeline to seek; drag along a track's coloured ribbon to scrub.")],
                     className="muted small player-note"),
        ]
    if state.status == "none":
        return []
    css = "video-note" if state.status == "preparing" else "video-note video-missing"
    return [html.Div(state.message, id=ids.TIMELINE_VIDEO_MESSAGE, className=css)]


def _live_panel(source_id: int | None, frame: dict[str, Any] | None) -> list[Any]:
    """A camera's newest annotated frame, or how to turn the live view on."""
    if frame is None or source_id is None:
        return [html.Div(["Live view is off. Start the monitor with ", html.Code("--live-view"),
                          " to see this camera's newest annotated frame here (off by default: it keeps an "
                          "image of the faces in the store while the monitor runs)."],
                         className="video-note", id=ids.TIMELINE_VIDEO_MESSAGE)]
    return [
        html.Img(src=video_module.live_url(source_id, frame["at"]), id=ids.TIMELINE_LIVE_IMAGE,
                 className="player live-frame", alt="the camera's newest annotated frame",
                 width=frame["width"], height=frame["height"], **{"data-at": f"{frame['at']:.3f}"}),
        html.Div(f"Live: the newest annotated frame, {components.format_clock(frame['at'])}; refreshed every "
                 f"{LIVE_INTERVAL_MS / 1000:g} s.", className="muted small player-note"),
    ]


def _track_title(track: TrackSummary) -> str:
    return (f"<b>Track {track.track_id}</b> · mostly {track.dominant} · "
            f"{components.format_seconds(track.start_s)}–{components.format_seconds(track.end_s)}")


def _header(timeline: Timeline, track_count: int) -> list[Any]:
    source = timeline.source
    status = str(source["status"])
    drawn = len(timeline.tracks)
    duration = float(source["duration_s"] or 0) or (timeline.time_range[1] if timeline.time_range else 0.0)
    facts = [
        f"{source['kind']}",
        f"{components.format_seconds(duration)}",
        f"{int(source['faces'] or 0):,} faces",
        f"{track_count} track{'' if track_count == 1 else 's'}"
        + (f" (the {drawn} longest drawn)" if drawn < timeline.total_tracks else ""),
    ]
    parts: list[Any] = [
        html.Div([html.H2(display_name(source)), components.status_badge(status)], className="title-row"),
        html.Div(" · ".join(facts), className="muted", id=ids.TIMELINE_FACTS),
    ]
    if status not in ("done", "failed", "stopped"):
        parts.append(components.progress(int(source["frames_analysed"] or 0), int(source["expected_frames"] or 0),
                                         status))
    if source.get("error"):
        parts.append(html.Div(f"Error: {source['error']}", className="error"))
    parts.append(components.legend())
    return parts


def _range_text(rows: int, window: tuple[float, float] | None) -> str:
    span = ("whole source" if window is None
            else f"{components.format_seconds(window[0])} – {components.format_seconds(window[1])}")
    return f"Visible: {span} · {rows:,} rows"


def _register_callbacks(app: Dash) -> None:
    @app.callback(
        Output(ids.TIMELINE_GRAPH, "figure"),
        Output(ids.TIMELINE_HEADER, "children"),
        Output(ids.TIMELINE_TRACKS, "children"),
        Output(ids.TIMELINE_VERSION, "data"),
        Output(ids.TIMELINE_RANGE_LABEL, "children"),
        Input(ids.TIMELINE_INTERVAL, "n_intervals"),
        Input(ids.TIMELINE_RANGE, "data"),
        Input(ids.TIMELINE_VALUES, "value"),
        State(ids.TIMELINE_SOURCE, "data"),
        State(ids.TIMELINE_VERSION, "data"),
        prevent_initial_call=True,
    )
    def refresh(_ticks: int, window_data: Any, values: str, source_id: int | None,
                shown: dict[str, Any] | None) -> tuple[Any, Any, Any, dict[str, Any], str]:
        """Rebuild when the source changed (poll), the zoom changed (more detail) or the values switch.

        `shown` is the state the current figure was built for: when nothing differs (a poll with
        no new rows, a repeated zoom event) nothing is rebuilt or sent.
        """
        if source_id is None:
            raise PreventUpdate
        data = current()
        source = data.source(source_id)
        window = window_from(window_data)
        wanted = view_state(source, window, values)
        if wanted == shown:
            raise PreventUpdate
        timeline = data.timeline(source_id, window, values) if source is not None else None
        figure, header, tracks = _content(source_id, timeline)
        return figure, header, tracks, wanted, _range_text(data.rows_in_window(source_id, window), window)

    @app.callback(
        Output(ids.TIMELINE_VIDEO_BOX, "children"),
        Output(ids.TIMELINE_VIDEO_STATE, "data"),
        Output(ids.TIMELINE_VIDEO_INTERVAL, "disabled"),
        Input(ids.TIMELINE_VIDEO_INTERVAL, "n_intervals"),
        State(ids.TIMELINE_SOURCE, "data"),
        State(ids.TIMELINE_VIDEO_STATE, "data"),
        prevent_initial_call=True,
    )
    def video_ready(_ticks: int, source_id: int | None, shown: str | None) -> tuple[Any, str, bool]:
        """Swap "preparing" for the player once the transcode is done, and stop asking; otherwise
        send nothing (re-rendering the <video> would restart playback)."""
        if source_id is None or shown != "preparing":
            raise PreventUpdate
        state = video_module.current().state(current().source(source_id))
        if state.status == shown:
            raise PreventUpdate
        return _video_panel(source_id, state), state.status, True

    @app.callback(
        Output(ids.TIMELINE_LIVE_BOX, "children"),
        Output(ids.TIMELINE_LIVE_AT, "data"),
        Input(ids.TIMELINE_LIVE_INTERVAL, "n_intervals"),
        State(ids.TIMELINE_SOURCE, "data"),
        State(ids.TIMELINE_LIVE_AT, "data"),
        prevent_initial_call=True,
    )
    def live_frame(_ticks: int, source_id: int | None, shown: Any) -> tuple[Any, Any]:
        """A camera page's newest frame: a new image URL when the monitor stored a newer frame."""
        if source_id is None or shown == "off":
            raise PreventUpdate
        frame = current().live_frame(source_id, image=False)
        at = frame["at"] if frame else None
        if at == shown:
            raise PreventUpdate
        return _live_panel(source_id, frame), at

    @app.callback(
        Output(ids.TIMELINE_DOWNLOAD, "data"),
        Input(ids.TIMELINE_EXPORT, "n_clicks"),
        State(ids.TIMELINE_SOURCE, "data"),
        State(ids.TIMELINE_RANGE, "data"),
        prevent_initial_call=True,
    )
    def export(clicks: int | None, source_id: int | None, window_data: Any) -> dict[str, Any]:
        """Every face row of the visible range (not the downsampled points), as CSV."""
        if not clicks or source_id is None:
            raise PreventUpdate
        filename, text = current().export_csv(source_id, window_from(window_data))
        return dcc.send_string(text, filename, type="text/csv")
