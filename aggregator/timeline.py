"""Per-track emotion timelines: time-aware smoothing, means and emotion segments."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from core.emotions import EMOTIONS, NUM_EMOTIONS


@dataclass
class TrackTimeline:
    """What one face track accumulates; `smoothed` is an exponential moving average in time."""

    track_id: int
    smoothing_s: float = 0.5
    times: list[float] = field(default_factory=list)
    dominant: list[int] = field(default_factory=list)  # argmax of the smoothed probabilities
    smoothed: np.ndarray = field(default_factory=lambda: np.zeros(NUM_EMOTIONS))
    smoothed_sum: np.ndarray = field(default_factory=lambda: np.zeros(NUM_EMOTIONS))
    best_score: float = -1.0
    best_crop: np.ndarray | None = None

    def add(self, time_s: float, probs: np.ndarray) -> np.ndarray:
        if not self.times or self.smoothing_s <= 0:
            self.smoothed = np.asarray(probs, np.float64)
        else:
            alpha = 1.0 - math.exp(-max(0.0, time_s - self.times[-1]) / self.smoothing_s)
            self.smoothed = (1 - alpha) * self.smoothed + alpha * np.asarray(probs, np.float64)
        self.times.append(time_s)
        self.dominant.append(int(np.argmax(self.smoothed)))
        self.smoothed_sum += self.smoothed
        return self.smoothed

    def keep_thumbnail(self, score: float, crop: np.ndarray) -> None:
        if score > self.best_score:
            self.best_score, self.best_crop = score, crop.copy()

    @property
    def frames(self) -> int:
        return len(self.times)

    def mean_probs(self) -> np.ndarray:
        return self.smoothed_sum / max(1, len(self.times))

    def segments(self, min_segment_s: float, frame_step_s: float) -> list[tuple[str, float, float]]:
        return emotion_segments(self.times, self.dominant, min_segment_s, frame_step_s)


def emotion_segments(times: list[float], dominant: list[int], min_segment_s: float,
                     frame_step_s: float) -> list[tuple[str, float, float]]:
    """Runs of one dominant emotion as (emotion, start_s, end_s); short runs join a neighbour.

    A segment ends where the next begins; the last ends one frame step after its last frame.
    """
    if not times:
        return []
    runs: list[list] = []  # [label, start, end]
    for i, (t, label) in enumerate(zip(times, dominant)):
        end = times[i + 1] if i + 1 < len(times) else t + frame_step_s
        if runs and runs[-1][0] == label:
            runs[-1][2] = end
        else:
            runs.append([label, t, end])
    merged = True
    while merged and len(runs) > 1:
        merged = False
        shortest = min(range(len(runs)), key=lambda k: runs[k][2] - runs[k][1])
        if runs[shortest][2] - runs[shortest][1] < min_segment_s:
            k = shortest
            # Join the neighbour that is longer (ties: the earlier one).
            if k == 0 or (k + 1 < len(runs) and runs[k + 1][2] - runs[k + 1][1] > runs[k - 1][2] - runs[k - 1][1]):
                runs[k + 1][1] = runs[k][1]
            else:
                runs[k - 1][2] = runs[k][2]
            del runs[k]
            # Neighbours that now carry the same label become one run.
            collapsed: list[list] = []
            for run in runs:
                if collapsed and collapsed[-1][0] == run[0]:
                    collapsed[-1][2] = run[2]
                else:
                    collapsed.append(run)
            runs = collapsed
            merged = True
    return [(EMOTIONS[label], round(start, 3), round(end, 3)) for label, start, end in runs]
