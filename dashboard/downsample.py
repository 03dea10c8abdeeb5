"""Server-side downsampling: a bounded number of points per trace, whatever the source length.

An hour at 10 fps is 36,000 points per emotion per track; sending that for 7 emotions and 5
tracks would make the browser draw 1.26 million points on every live update. Instead every
trace is reduced here, on the server, to at most `max_points` points:

- short series go out as they are, with a NaN row inserted where the face was unseen for longer
  than `gap_s`, so the line breaks instead of inventing values across the gap;
- long series are cut into equal time bins and each bin shows the *mean* of its frames (a mean
  keeps the area under the curve, which is what "how happy was this person" reads from; empty
  bins are NaN, which again breaks the line);
- when the user has zoomed to a window, most of the budget goes to that window (so zooming in
  reveals detail) and a little to each side (so the full extent stays visible and a double-click
  "autorange" still shows the whole source).

Everything here is pure NumPy on arrays: no database, no Dash, easy to test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_POINTS_PER_TRACE = 2000
DEFAULT_GAP_S = 1.0  # the aggregator's default track_max_gap_s: a longer gap is a real absence
WINDOW_SHARE = 0.8  # share of the budget spent inside the zoomed window


@dataclass(frozen=True)
class Series:
    """A reduced series: `time[i]` and `values[i, k]`; all-NaN rows are gaps.

    `frames[i]` says how many input rows point i stands for (1 for raw points, 0 for gaps).
    """

    time: np.ndarray
    values: np.ndarray
    frames: np.ndarray

    def __len__(self) -> int:
        return int(self.time.shape[0])

    def dominant(self) -> np.ndarray:
        """Index of the largest value per point, -1 for gap points."""
        filled = np.where(np.isnan(self.values), -np.inf, self.values)
        index = np.argmax(filled, axis=1) if self.values.shape[1] else np.zeros(len(self), dtype=int)
        return np.where(np.isnan(self.values).all(axis=1), -1, index)


def empty_series(columns: int) -> Series:
    return Series(np.empty(0), np.empty((0, columns), dtype=np.float32), np.empty(0, dtype=np.int64))


def downsample(times: np.ndarray, values: np.ndarray, max_points: int = MAX_POINTS_PER_TRACE,
               window: tuple[float, float] | None = None, gap_s: float = DEFAULT_GAP_S) -> Series:
    """Reduce (times, values) to at most `max_points` points; see the module docstring.

    `values` has one row per time and one column per emotion. Input need not be sorted.
    """
    if max_points < 1:
        raise ValueError(f"max_points must be at least 1, got {max_points}")
    times = np.asarray(times, dtype=np.float64)
    values = np.asarray(values, dtype=np.float32).reshape(times.shape[0], -1)
    order = np.argsort(times, kind="stable")
    times, values = times[order], values[order]
    if window is None or max_points < 3:
        return _reduce(times, values, max_points, gap_s)
    start, end = sorted(window)
    low = int(np.searchsorted(times, start, side="left"))
    high = int(np.searchsorted(times, end, side="right"))
    inner = max(1, int(max_points * WINDOW_SHARE))
    side = (max_points - inner) // 2
    parts = [
        _reduce(times[:low], values[:low], side, gap_s),
        _reduce(times[low:high], values[low:high], inner, gap_s),
        _reduce(times[high:], values[high:], side, gap_s),
    ]
    return Series(np.concatenate([p.time for p in parts]),
                  np.concatenate([p.values for p in parts]),
                  np.concatenate([p.frames for p in parts]))


def _reduce(times: np.ndarray, values: np.ndarray, budget: int, gap_s: float) -> Series:
    """Raw points with gap breaks if they fit in `budget`, else `budget` time bins of means."""
    columns = values.shape[1]
    if times.shape[0] == 0 or budget < 1:
        return empty_series(columns)
    raw = _with_gaps(times, values, gap_s)
    if len(raw) <= budget:
        return raw
    edges = np.linspace(times[0], times[-1], budget + 1)
    return _bin_means(times, values, edges)


def _with_gaps(times: np.ndarray, values: np.ndarray, gap_s: float) -> Series:
    """The raw points, plus one NaN point in the middle of every gap longer than `gap_s`."""
    ones = np.ones(times.shape[0], dtype=np.int64)
    gaps = np.flatnonzero(np.diff(times) > gap_s)
    if gaps.size == 0:
        return Series(times, values, ones)
    gap_times = (times[gaps] + times[gaps + 1]) / 2
    gap_values = np.full((gaps.size, values.shape[1]), np.nan, dtype=np.float32)
    insert_at = gaps + 1
    return Series(np.insert(times, insert_at, gap_times),
                  np.insert(values, insert_at, gap_values, axis=0),
                  np.insert(ones, insert_at, 0))


def _bin_means(times: np.ndarray, values: np.ndarray, edges: np.ndarray) -> Series:
    """Mean time and mean values per bin; empty bins become NaN gap points at the bin centre."""
    bins = edges.shape[0] - 1
    index = np.clip(np.searchsorted(edges, times, side="right") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    filled = counts > 0
    safe = np.where(filled, counts, 1)
    mean_time = np.where(filled, np.bincount(index, weights=times, minlength=bins) / safe,
                         (edges[:-1] + edges[1:]) / 2)
    means = np.full((bins, values.shape[1]), np.nan, dtype=np.float32)
    for column in range(values.shape[1]):
        sums = np.bincount(index, weights=values[:, column].astype(np.float64), minlength=bins)
        means[filled, column] = (sums[filled] / counts[filled]).astype(np.float32)
    return Series(mean_time, means, counts.astype(np.int64))
