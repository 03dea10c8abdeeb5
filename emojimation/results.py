"""Result tables from the store, and the output files of `emojimation analyse`.

The file formats are contracts (scripts depend on them): column names and order below
must not change without a version note in the README.

Short tracks (aggregator/tracks.py: followed for fewer than `min_track_frames` frames) have no
track summary, so no row in tracks.csv and no entry in summary.json's `tracks`; their faces
stay in detections.csv with an empty `track_id` (the store keeps the tracker's ID). Every
`track_id` in detections.csv is therefore one of tracks.csv's.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from core.emotions import EMOTIONS
from core.store import MEAN_COLUMNS, PROB_COLUMNS, Store

DETECTION_COLUMNS = ["input", "frame", "time_s", "track_id", "x", "y", "w", "h", *EMOTIONS, "emotion"]
TRACK_COLUMNS = ["input", "track_id", "start_s", "end_s", "frames", "dominant_emotion", *MEAN_COLUMNS, "segments"]


@dataclass
class Results:
    """What an analysis returns: the tables as DataFrames plus the summary object."""

    detections: pd.DataFrame
    tracks: pd.DataFrame
    summary: dict[str, Any]


def collect(store: Store, inputs: list[tuple[str, int]], model: dict[str, Any], elapsed_s: float) -> Results:
    """Tables for `(input path, source id)` pairs, in input order."""
    detections, tracks, summary_inputs = [], [], []
    for path, source_id in inputs:
        source = store.source(source_id) or {}
        faces = store.faces(source_id)
        track_table = store.tracks(source_id)
        frame = faces.rename(columns=dict(zip(PROB_COLUMNS, EMOTIONS)))
        frame["track_id"] = untracked_as_missing(frame["track_id"], track_table["track_id"])
        frame.insert(0, "input", path)
        detections.append(frame.reindex(columns=DETECTION_COLUMNS))
        track_table.insert(0, "input", path)
        tracks.append(track_table.reindex(columns=TRACK_COLUMNS))
        summary_inputs.append({
            "input": path,
            "kind": "image" if source.get("kind") in ("image", "images") else "video",
            "source_fps": source.get("source_fps") or None,
            "frames_analysed": int(source.get("frames_analysed", 0)),
            "frames_with_faces": int(source.get("frames_with_faces", 0)),
            "faces": int(len(faces)),
            "tracks": [
                {"track_id": int(t.track_id), "start_s": float(t.start_s), "end_s": float(t.end_s),
                 "frames": int(t.frames), "dominant_emotion": t.dominant_emotion,
                 "mean_probs": {e: round(float(getattr(t, f"mean_{e}")), 6) for e in EMOTIONS}}
                for t in track_table.itertuples()
            ],
        })
    empty_detections = pd.DataFrame(columns=DETECTION_COLUMNS)
    empty_tracks = pd.DataFrame(columns=TRACK_COLUMNS)
    return Results(
        detections=pd.concat(detections, ignore_index=True) if detections else empty_detections,
        tracks=pd.concat(tracks, ignore_index=True) if tracks else empty_tracks,
        summary={"inputs": summary_inputs, "model": model, "elapsed_s": round(elapsed_s, 3)},
    )


def untracked_as_missing(track_ids: pd.Series, tracks: pd.Series) -> pd.Series:
    """Face rows' track IDs as nullable integers, missing (an empty CSV field) where the track
    has no summary: a short track's faces belong to no track of their own."""
    return track_ids.astype("Int64").where(track_ids.isin(tracks))


def write(results: Results, out_dir: Path, extra_files: dict[str, Path] | None = None) -> list[Path]:
    """Write every output into a temporary folder, then move each into place; summary.json last.

    An interrupted run therefore never leaves a summary.json that describes missing or
    partial tables.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".emojimation-", dir=out_dir))
    try:
        results.detections.to_csv(staging / "detections.csv", index=False, float_format="%.9g")
        results.detections.to_parquet(staging / "detections.parquet", index=False)
        results.tracks.to_csv(staging / "tracks.csv", index=False, float_format="%.9g")
        (staging / "summary.json").write_text(json.dumps(results.summary, indent=2) + "\n")
        for name, path in (extra_files or {}).items():
            shutil.move(str(path), staging / name)
            if not any(path.parent.iterdir()):
                path.parent.rmdir()
        written = []
        # An earlier run's summary must not sit beside half-replaced tables.
        (out_dir / "summary.json").unlink(missing_ok=True)
        names = [p.name for p in staging.iterdir() if p.name != "summary.json"] + ["summary.json"]
        for name in names:
            os.replace(staging / name, out_dir / name)
            written.append(out_dir / name)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)
