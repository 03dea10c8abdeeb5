"""Colours and display constants shared by every page and figure.

One colour per emotion across the whole app: the timeline lines, the dominant-emotion ribbon,
the distribution bars and the emotion chips all read `EMOTION_COLOURS`, so a reader learns the
mapping once. The palette is colour-blind aware (Okabe-Ito based) with the conventional
associations kept where they help (happy = yellow, sad = blue, angry = red-orange), and no two
emotions share a hue family, so neighbouring lines stay distinguishable.
"""

from __future__ import annotations

from core.emotions import EMOTIONS

EMOTION_COLOURS: dict[str, str] = {
    "angry": "#D55E00",
    "disgust": "#009E73",
    "fear": "#7B4FA6",
    "happy": "#F0C419",
    "sad": "#0072B2",
    "surprise": "#CC79A7",
    "neutral": "#8C8C8C",
}
if set(EMOTION_COLOURS) != set(EMOTIONS):  # a new label must get a colour, not a silent default
    raise RuntimeError(f"EMOTION_COLOURS covers {sorted(EMOTION_COLOURS)}, the labels are {sorted(EMOTIONS)}")

NO_FACE_COLOUR = "#E8E8E8"

STATUS_COLOURS: dict[str, str] = {
    "queued": "#8C8C8C",
    "analysing": "#0072B2",
    "done": "#009E73",
    "failed": "#D55E00",
    "connecting": "#E69F00",
    "live": "#0072B2",
    "disconnected": "#D55E00",
    "stopped": "#8C8C8C",
}

# How often open pages poll the store. The issue asks for "at least every 2 s".
LIVE_INTERVAL_MS = 1500
