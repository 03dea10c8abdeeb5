"""Synthetic sources for the benchmark, the screenshots and the tests.

Real clips are short (the sample is 11 s); the "large data stays fast" requirement is about an
hour at 10 fps with 5 tracks, about 180,000 rows, which no shipped clip has. This module writes
such a source through the Store's own write API (`create_source`, `add_faces`, `write_tracks`,
`finish_source`), so the dashboard reads it exactly as it reads the aggregator's output.

The emotions are a smooth random walk per track (softmax of drifting logits, then the same
exponential smoothing idea the aggregator uses), so lines, ribbons and segments look like a
plausible conversation rather than noise.
"""

from __future__ import annotations

import argparse
import time
from typing import Sequence

import numpy as np
from scipy.signal import lfilter

from core.emotions import EMOTIONS
from core.store import FaceRow, Store, TrackRow

BATCH_ROWS = 20_000


def emotion_walk(frames: int, fps: float, rng: np.random.Generator, smoothing_s: float = 0.5,
                 mood_s: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """(per-frame probabilities, smoothed probabilities), each of shape (frames, 7).

    The logits follow a mean-reverting random walk (Ornstein-Uhlenbeck, time constant `mood_s`)
    around a per-face bias, so each face has a temperament and moods that come and go; per-frame
    noise plays the classifier's jitter, and an exponential filter plays the aggregator's smoothing.
    """
    keep = 1.0 - 1.0 / (mood_s * fps)
    shocks = rng.normal(0.0, 1.6 * np.sqrt(1.0 - keep ** 2), size=(frames, len(EMOTIONS)))
    moods = lfilter([1.0], [1.0, -keep], shocks, axis=0)
    bias = rng.normal(0.0, 0.8, size=len(EMOTIONS))
    logits = moods + bias + rng.normal(0.0, 0.35, size=moods.shape)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    alpha = 1.0 - np.exp(-1.0 / (fps * smoothing_s))
    smoothed = lfilter([alpha], [1.0, alpha - 1.0], probs, axis=0, zi=np.outer([1.0 - alpha], probs[0]))[0]
    return probs, smoothed


def segments_of(times: np.ndarray, smoothed: np.ndarray, min_s: float = 1.0) -> list[tuple[str, float, float]]:
    """Runs of the top smoothed emotion, runs shorter than `min_s` merged into the previous one."""
    top = smoothed.argmax(axis=1)
    starts = np.flatnonzero(np.r_[True, top[1:] != top[:-1]])
    ends = np.r_[starts[1:], len(top)]
    merged: list[list] = []
    for start, end in zip(starts, ends):
        emotion, begin, finish = EMOTIONS[int(top[start])], float(times[start]), float(times[end - 1])
        if merged and (finish - begin < min_s or merged[-1][0] == emotion):
            merged[-1][2] = finish
        else:
            merged.append([emotion, begin, finish])
    return [(emotion, begin, finish) for emotion, begin, finish in merged]


def write_synthetic_source(store: Store, *, duration_s: float = 3600.0, fps: float = 10.0, tracks: int = 5,
                           name: str = "synthetic-1h.mp4", kind: str = "video", seed: int = 0,
                           finish: bool = True, thumbnails: Sequence[bytes | None] | None = None) -> int:
    """Write one source with `tracks` faces seen in every frame; returns its id.

    Every track is present all the time, so rows = duration_s * fps * tracks (180,000 by default).
    With `finish=False` the source stays "analysing" and has no track summaries, like a live one.
    """
    rng = np.random.default_rng(seed)
    frames = int(round(duration_s * fps))
    started = time.time() - duration_s
    source_id = store.create_source(kind, f"/synthetic/{name}", name, "analysing", source_fps=fps,
                                    width=1280, height=720, expected_frames=frames, duration_s=duration_s,
                                    model="synthetic", options={"fps": fps, "synthetic": True})
    times = np.arange(frames) / fps
    walks = [emotion_walk(frames, fps, rng) for _ in range(tracks)]
    for first in range(0, frames, max(1, BATCH_ROWS // max(tracks, 1))):
        last = min(frames, first + max(1, BATCH_ROWS // max(tracks, 1)))
        rows = [
            FaceRow(frame=frame, time_s=float(times[frame]), captured_at=started + float(times[frame]),
                    track_id=track + 1, box=(80.0 + 240.0 * track, 200.0, 160.0, 160.0), score=0.9,
                    probs=walks[track][0][frame], smoothed=walks[track][1][frame])
            for frame in range(first, last) for track in range(tracks)
        ]
        store.add_faces(source_id, rows, {"frames_analysed": last, "frames_with_faces": last,
                                          "faces": last * tracks})
    if finish:
        store.write_tracks(source_id, [
            TrackRow(track_id=track + 1, start_s=0.0, end_s=float(times[-1]), frames=frames,
                     mean_probs=walks[track][1].mean(axis=0), segments=segments_of(times, walks[track][1]),
                     thumbnail=(thumbnails[track] if thumbnails and track < len(thumbnails) else None))
            for track in range(tracks)
        ])
        store.finish_source(source_id, frames_analysed=frames, frames_with_faces=frames, faces=frames * tracks)
    return source_id


def write_demo_events(store: Store, source_id: int | None) -> None:
    """A few events of the kinds the monitor writes (alerts and camera status changes)."""
    now = time.time()
    store.add_event(source_id, "camera_status", "camera connected", {"status": "live"}, at=now - 600)
    store.add_event(source_id, "alert", "track 2 angry for 5.2 s", {"track_id": 2, "emotion": "angry",
                                                                    "seconds": 5.2}, at=now - 420)
    store.add_event(source_id, "camera_status", "camera disconnected (no frames for 20 s)",
                    {"status": "disconnected"}, at=now - 120)
    store.add_event(None, "system", "dashboard demo data written", at=now - 60)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a synthetic source into a store (benchmarks, demos).")
    parser.add_argument("--store", required=True, help="store URL, e.g. sqlite:///tmp/demo.db")
    parser.add_argument("--duration-s", type=float, default=3600.0)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--tracks", type=int, default=5)
    parser.add_argument("--events", action="store_true", help="also write a few demo events")
    args = parser.parse_args(argv)
    with Store(args.store) as store:
        source_id = write_synthetic_source(store, duration_s=args.duration_s, fps=args.fps, tracks=args.tracks)
        if args.events:
            write_demo_events(store, source_id)
    print(f"wrote source {source_id} to {args.store}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
