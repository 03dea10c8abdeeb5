"""Small HTML building blocks shared by the pages (chips, bars, badges, cards).

Kept apart from the pages so the same emotion is drawn the same way everywhere, and free of
callbacks and data access: each function turns plain values into Dash components.
"""

from __future__ import annotations

import base64
import time
from typing import Mapping, Sequence

from dash import dcc, html

from dashboard import ids
from dashboard.data import TrackSummary
from dashboard.theme import EMOTION_COLOURS, STATUS_COLOURS
from core.emotions import EMOTIONS

MAX_SEGMENT_CHIPS = 8


def format_seconds(seconds: float) -> str:
    """12.3 s below a minute, else m:ss or h:mm:ss: the way a video player shows time."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_clock(unix_time: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix_time))


def emotion_chip(emotion: str, text: str | None = None) -> html.Span:
    colour = EMOTION_COLOURS.get(emotion, "#999")
    return html.Span(text or emotion, className="chip", style={"backgroundColor": colour})


def status_badge(status: str) -> html.Span:
    return html.Span(status, className="badge", style={"backgroundColor": STATUS_COLOURS.get(status, "#999")})


def mix_bar(shares: Mapping[str, float], title_prefix: str = "") -> html.Div:
    """A horizontal stacked bar of emotion shares (they need not sum exactly to 1)."""
    total = sum(max(shares.get(e, 0.0), 0.0) for e in EMOTIONS)
    if total <= 0:
        return html.Div("—", className="mix-empty")
    parts = []
    for emotion in EMOTIONS:
        share = max(shares.get(emotion, 0.0), 0.0) / total
        if share <= 0.005:
            continue
        parts.append(html.Div(className="mix-part", title=f"{title_prefix}{emotion} {share:.0%}",
                              style={"width": f"{share * 100:.2f}%", "backgroundColor": EMOTION_COLOURS[emotion]}))
    return html.Div(parts, className="mix-bar")


def legend() -> html.Div:
    """The emotion colour key, shown once per page."""
    return html.Div([emotion_chip(e) for e in EMOTIONS], className="legend")


def progress(done: int, expected: int, status: str) -> html.Div:
    """Frames analysed against frames expected; indeterminate while the total is unknown."""
    label = f"{done:,} / {expected:,} frames" if expected else f"{done:,} frames"
    bar = html.Progress(value=str(min(done, expected)), max=str(expected)) if expected else html.Progress()
    return html.Div([bar, html.Span(label, className="progress-label")], className=f"progress progress-{status}")


def thumbnail(png: bytes | None, size: int = 72) -> html.Img | html.Div:
    if not png:
        return html.Div("no thumbnail", className="thumb thumb-empty", style={"width": size, "height": size})
    source = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
    return html.Img(src=source, className="thumb", style={"width": size, "height": size}, alt="face thumbnail")


def segment_chips(segments: Sequence[tuple[str, float, float]], limit: int = MAX_SEGMENT_CHIPS) -> html.Div:
    chips = [emotion_chip(emotion, f"{emotion} {format_seconds(start)}–{format_seconds(end)}")
             for emotion, start, end in segments[:limit]]
    if len(segments) > limit:
        chips.append(html.Span(f"+{len(segments) - limit} more", className="more"))
    return html.Div(chips, className="segments")


def jump_button(seconds: float) -> html.Button:
    """Seeks the page's video to `seconds` (dashboard/assets/player.js reads `data-seek`)."""
    return html.Button(f"▶ first seen at {format_seconds(seconds)}", className="button jump-button",
                       title="Show this face's first appearance in the video", **{"data-seek": f"{seconds:.3f}"})


def track_card(source_id: int, track: TrackSummary, shown: bool = True, jump: bool = False) -> html.Div:
    """Per-track summary: thumbnail, dominant emotion, span, distribution and segments; with `jump`,
    a button that seeks the page's video to the track's first appearance."""
    note = " (so far)" if track.provisional else ""
    return html.Div([
        thumbnail(track.thumbnail),
        html.Div([
            html.Div([
                dcc.Link(f"Track {track.track_id}", href=f"/track/{source_id}/{track.track_id}",
                         className="track-link"),
                emotion_chip(track.dominant, f"mostly {track.dominant}"),
                html.Span(f"{format_seconds(track.start_s)} – {format_seconds(track.end_s)} · "
                          f"{track.frames:,} frames{note}" + ("" if shown else " · not drawn above"),
                          className="muted"),
                *([jump_button(track.start_s)] if jump else []),
            ], className="track-title"),
            mix_bar(track.means),
            segment_chips(track.segments),
        ], className="track-body"),
    ], className="card track-card", id={"type": ids.TRACK_CARD, "index": track.track_id})
