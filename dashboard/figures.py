"""Plotly figures: the per-track emotion timeline, and reading the user's zoom back from Plotly.

The timeline is one figure with two rows per track: a thin dominant-emotion ribbon (a one-row
heatmap) above the seven probability lines. Every x axis `matches` the first one, so zooming or
panning any track moves all of them: the zoom is shared by all tracks of the source, as the issue
asks. The y axes are fixed to [0, 1] so a zoom is always a time range.

`uirevision` is what keeps the user's zoom across live updates: Plotly keeps UI state (axis
ranges, hidden legend items) while `uirevision` is unchanged, whatever new data arrives.
"""

from __future__ import annotations

import base64
from typing import Any, Mapping

import numpy as np
import plotly.graph_objects as go

from core.emotions import EMOTIONS
from dashboard.data import Timeline, TrackSeries
from dashboard.theme import EMOTION_COLOURS

RIBBON_PX = 16
PLOT_PX = 150
INNER_GAP_PX = 4
TRACK_GAP_PX = 46
THUMBNAIL_PX = 32  # a track's face beside its title (with --thumbnails), in the gap above its ribbon
THUMBNAIL_GAP_PX = 62  # the gap between tracks when faces are shown: the axis ticks above, then the face
FLOAT32_TIME_LIMIT_S = 86_400.0
DEFAULT_STEP_S = 0.1  # the pipeline's default sampling (10 fps): the width of a lone ribbon cell
MARGIN = {"l": 56, "r": 16, "t": 64, "b": 40}
GRAPH_CONFIG: dict[str, Any] = {
    "displaylogo": False,
    "modeBarButtonsToRemove": ["select2d", "lasso2d", "autoScale2d"],
    "toImageButtonOptions": {"format": "png", "scale": 2},
}


def uirevision_for(source_id: int, track_id: int | None = None) -> str:
    """Constant per view: Plotly keeps the zoom as long as this string does not change."""
    return f"source-{source_id}" if track_id is None else f"source-{source_id}-track-{track_id}"


def _ribbon_colourscale() -> list[list[Any]]:
    """A stepwise colourscale mapping index i (0..6) to EMOTION_COLOURS[EMOTIONS[i]]."""
    scale: list[list[Any]] = []
    count = len(EMOTIONS)
    for index, emotion in enumerate(EMOTIONS):
        colour = EMOTION_COLOURS[emotion]
        scale.append([index / count, colour])
        scale.append([(index + 1) / count, colour])
    return scale


RIBBON_COLOURSCALE = _ribbon_colourscale()


def empty_figure(message: str, uirevision: str = "empty") -> go.Figure:
    """A blank figure with a centred message (no faces yet, unknown source)."""
    figure = go.Figure()
    figure.update_layout(
        height=260, margin=MARGIN, uirevision=uirevision, template="plotly_white",
        xaxis={"visible": False}, yaxis={"visible": False},
        annotations=[{"text": message, "showarrow": False, "x": 0.5, "y": 0.5, "xref": "paper", "yref": "paper",
                      "font": {"size": 15, "color": "#666"}}],
    )
    return figure


def timeline_figure(timeline: Timeline, uirevision: str, titles: Mapping[int, str] | None = None,
                    thumbnails: Mapping[int, bytes | None] | None = None) -> go.Figure:
    """The per-track timeline figure; see the module docstring for its shape. `thumbnails`
    (PNG bytes by track id) puts each track's face beside its title."""
    if not timeline.tracks:
        return empty_figure("No faces yet" if timeline.source.get("status") not in ("done", "failed")
                            else "No faces in this source", uirevision)
    count = len(timeline.tracks)
    block = RIBBON_PX + INNER_GAP_PX + PLOT_PX
    shown_faces = any((thumbnails or {}).get(track.track_id) for track in timeline.tracks)
    gap = THUMBNAIL_GAP_PX if shown_faces else TRACK_GAP_PX
    plot_height = count * block + (count - 1) * gap
    figure = go.Figure()
    layout: dict[str, Any] = {}
    annotations = []
    images = []
    for position, track in enumerate(timeline.tracks):
        top = plot_height - position * (block + gap)
        ribbon_domain = [(top - RIBBON_PX) / plot_height, top / plot_height]
        lines_domain = [(top - block) / plot_height, (top - RIBBON_PX - INNER_GAP_PX) / plot_height]
        ribbon_axis, lines_axis = 2 * position + 1, 2 * position + 2
        ribbon_x, ribbon_y = _axis_names(ribbon_axis)
        lines_x, lines_y = _axis_names(lines_axis)
        for trace in _track_traces(track, first=position == 0):
            if isinstance(trace, go.Heatmap):
                trace.update(xaxis=ribbon_x, yaxis=ribbon_y)
            else:
                trace.update(xaxis=lines_x, yaxis=lines_y)
            figure.add_trace(trace)
        layout[_layout_key("xaxis", ribbon_axis)] = {
            "anchor": ribbon_y, "showticklabels": False, "showgrid": False, "zeroline": False,
            **({} if ribbon_axis == 1 else {"matches": "x"})}
        layout[_layout_key("yaxis", ribbon_axis)] = {
            "domain": ribbon_domain, "anchor": ribbon_x, "fixedrange": True, "showticklabels": False,
            "showgrid": False, "zeroline": False, "range": [-0.5, 0.5]}
        layout[_layout_key("xaxis", lines_axis)] = {
            "anchor": lines_y, "matches": "x", "showticklabels": True, "ticksuffix": " s",
            "showgrid": True, "gridcolor": "#EEE"}
        layout[_layout_key("yaxis", lines_axis)] = {
            "domain": lines_domain, "anchor": lines_x, "fixedrange": True, "range": [-0.02, 1.02],
            "tickvals": [0, 0.5, 1], "gridcolor": "#EEE", "zeroline": False}
        face = (thumbnails or {}).get(track.track_id)
        if face:
            images.append({
                "source": "data:image/png;base64," + base64.b64encode(face).decode("ascii"),
                "xref": "paper", "yref": "paper", "x": 0, "y": ribbon_domain[1] + 2 / plot_height,
                "xanchor": "left", "yanchor": "bottom", "sizex": 0.5, "sizey": THUMBNAIL_PX / plot_height,
                "sizing": "contain", "layer": "above", "name": f"track {track.track_id} face",
            })
        annotations.append({
            "text": (titles or {}).get(track.track_id, f"Track {track.track_id}"), "x": 0, "xanchor": "left",
            "y": ribbon_domain[1], "yanchor": "bottom", "xref": "paper", "yref": "paper", "showarrow": False,
            "font": {"size": 13, "color": "#333"}, "yshift": 2, "xshift": THUMBNAIL_PX + 6 if face else 0,
        })
    figure.update_layout(
        **layout,
        height=plot_height + MARGIN["t"] + MARGIN["b"], margin=MARGIN, template="plotly_white",
        uirevision=uirevision, hovermode="x unified", annotations=annotations, images=images,
        legend={"orientation": "h", "x": 0, "y": 1, "yref": "container", "yanchor": "top",
                "groupclick": "togglegroup", "font": {"size": 12}},
    )
    return figure


def _axis_names(number: int) -> tuple[str, str]:
    suffix = "" if number == 1 else str(number)
    return f"x{suffix}", f"y{suffix}"


def _layout_key(kind: str, number: int) -> str:
    return kind if number == 1 else f"{kind}{number}"


def _track_traces(track: TrackSeries, first: bool) -> list[go.BaseTraceType]:
    """The seven probability lines and the ribbon of one track.

    Plain SVG `Scatter`, not `Scattergl`: with a dozen tracks WebGL would need a context per
    subplot and browsers cap those at about 16; the downsampling keeps SVG fast enough.
    """
    series = track.series
    # float32 halves the JSON (Plotly sends typed arrays base64-encoded); up to a day its step
    # stays under 8 ms, below a frame. Longer (camera) timelines keep float64.
    long_run = series.time.size > 0 and float(np.abs(series.time).max()) > FLOAT32_TIME_LIMIT_S
    times = series.time if long_run else series.time.astype(np.float32)
    mode = "lines+markers" if len(series) <= 60 else "lines"
    traces: list[go.BaseTraceType] = []
    for column, emotion in enumerate(EMOTIONS):
        traces.append(go.Scatter(
            x=times, y=series.values[:, column], mode=mode, name=emotion, legendgroup=emotion,
            showlegend=first, line={"color": EMOTION_COLOURS[emotion], "width": 1.6},
            marker={"size": 4, "color": EMOTION_COLOURS[emotion]}, connectgaps=False,
            hovertemplate=f"{emotion} %{{y:.2f}}<extra></extra>",
            meta={"track_id": track.track_id, "emotion": emotion, "rows": track.rows},
        ))
    dominant = series.dominant()
    names = np.array([*EMOTIONS, "no face"], dtype=object)[np.where(dominant < 0, len(EMOTIONS), dominant)]
    traces.append(go.Heatmap(
        x=_cell_edges(times), y=[0], z=[np.where(dominant < 0, np.nan, dominant).astype(np.float32)],
        text=[names.tolist()], zmin=-0.5, zmax=len(EMOTIONS) - 0.5, colorscale=RIBBON_COLOURSCALE,
        showscale=False, hoverongaps=False, name=f"track {track.track_id} dominant",
        hovertemplate="dominant: %{text}<extra></extra>", xgap=0, ygap=0,
        meta={"track_id": track.track_id, "ribbon": True},
    ))
    return traces


def _cell_edges(times: np.ndarray) -> np.ndarray:
    """Ribbon cell boundaries: midway between points, half a step beyond the first and last.

    Given only centres, Plotly makes a lone cell one x unit (one second) wide; explicit edges
    keep a one-frame track one frame wide.
    """
    if times.size == 0:
        return times
    step = float(np.median(np.diff(times))) if times.size > 1 else DEFAULT_STEP_S
    middle = (times[1:] + times[:-1]) / 2
    return np.concatenate([[times[0] - step / 2], middle, [times[-1] + step / 2]]).astype(times.dtype)

