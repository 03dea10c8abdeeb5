"""`--annotate`: an MP4 per analysed video with boxes, track IDs and emotion bars, encoded by ffmpeg."""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

import cv2
import ffmpeg
import numpy as np
import pandas as pd

from core.emotions import EMOTIONS
from core.errors import DataError
from emojimation.results import Results

logger = logging.getLogger(__name__)

# One BGR colour per emotion, the same hues as the dashboard's palette.
EMOTION_COLOURS_BGR = {
    "angry": (40, 39, 214), "disgust": (44, 160, 44), "fear": (189, 103, 148), "happy": (14, 201, 255),
    "sad": (180, 119, 31), "surprise": (14, 127, 255), "neutral": (127, 127, 127),
}


def draw_faces(image: np.ndarray, faces: pd.DataFrame) -> np.ndarray:
    """Boxes in the dominant emotion's colour, `#track emotion p` (`emotion p` for a face of a
    short track, which has no track ID in the results), and a 7-bar probability chart."""
    for face in faces.itertuples():
        x, y, w, h = int(face.x), int(face.y), int(face.w), int(face.h)
        colour = EMOTION_COLOURS_BGR[face.emotion]
        cv2.rectangle(image, (x, y), (x + w, y + h), colour, 2)
        probs = [getattr(face, e) for e in EMOTIONS]
        track = "" if pd.isna(face.track_id) else f"#{face.track_id} "
        label = f"{track}{face.emotion} {max(probs):.2f}"
        cv2.putText(image, label, (x, max(12, y - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
        bar_x = x + w + 4 if x + w + 90 < image.shape[1] else max(0, x - 90)
        for i, (emotion, p) in enumerate(zip(EMOTIONS, probs)):
            top = y + i * 12
            cv2.rectangle(image, (bar_x, top), (bar_x + int(60 * p), top + 9), EMOTION_COLOURS_BGR[emotion], -1)
            cv2.putText(image, emotion[:3], (bar_x + 62, top + 8), cv2.FONT_HERSHEY_SIMPLEX, 0.3,
                        (255, 255, 255), 1, cv2.LINE_AA)
    return image


def annotate_video(path: str, faces: pd.DataFrame, out_path: Path, fps: float, width: int, height: int) -> None:
    """Every source frame, each showing the faces of the latest analysed frame at or before it."""
    by_frame = {frame: group for frame, group in faces.groupby("frame")}
    analysed = np.array(sorted(by_frame))
    hold_frames = max(1, int(round(fps)))  # boxes older than ~1 s are not drawn
    # Same frames as ingest: every decoded frame, no rate conversion, upright, at the probed size.
    decoder = subprocess.Popen(
        ffmpeg.compile(ffmpeg.input(path).video.filter("scale", width, height)
                       .output("pipe:", format="rawvideo", pix_fmt="bgr24", fps_mode="passthrough")
                       .global_args("-hide_banner", "-loglevel", "error", "-nostdin")),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    encoder = subprocess.Popen(
        ffmpeg.compile(ffmpeg.input("pipe:", format="rawvideo", pix_fmt="bgr24", s=f"{width}x{height}",
                                    framerate=fps)
                       .video.filter("pad", "ceil(iw/2)*2", "ceil(ih/2)*2")  # yuv420p needs even sizes
                       .output(str(out_path), vcodec="libx264", pix_fmt="yuv420p", preset="veryfast", crf=23,
                               movflags="+faststart")
                       .global_args("-hide_banner", "-loglevel", "error", "-y")),
        stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    frame_bytes = width * height * 3
    index = 0
    try:
        while True:
            raw = decoder.stdout.read(frame_bytes)
            if len(raw) < frame_bytes:
                break
            image = np.frombuffer(raw, np.uint8).reshape(height, width, 3).copy()
            position = np.searchsorted(analysed, index, side="right") - 1
            if position >= 0 and index - analysed[position] < hold_frames:
                draw_faces(image, by_frame[analysed[position]])
            encoder.stdin.write(image.tobytes())
            index += 1
    except BrokenPipeError:
        pass  # the encoder died: its exit code and message are reported below
    finally:
        decoder.stdout.close()
        decoder.kill()  # never left blocked writing into a pipe nobody reads
        decoder.wait()
        try:
            encoder.stdin.close()
        except BrokenPipeError:
            pass
        message = encoder.stderr.read().decode(errors="replace").strip().splitlines()
        encoder.wait()
    if encoder.returncode != 0:
        detail = message[-1] if message else f"exit code {encoder.returncode}"
        raise DataError(f"{out_path.name}: ffmpeg could not encode the annotated video ({detail})")


def annotate_videos(results: Results, out_dir: Path) -> dict[str, Path]:
    """Annotated MP4s for the video inputs, in a staging folder: {output file name: path}."""
    from ingest.media import probe

    staging = Path(tempfile.mkdtemp(prefix="emojimation-annotate-"))
    files: dict[str, Path] = {}
    try:
        for entry in results.summary["inputs"]:
            if entry["kind"] != "video":
                continue
            info = probe(entry["input"])
            faces = results.detections[results.detections["input"] == entry["input"]]
            stem, number = Path(entry["input"]).stem, 1
            name = f"{stem}.annotated.mp4"
            while name in files:  # same file name from different folders
                number += 1
                name = f"{stem}-{number}.annotated.mp4"
            annotate_video(entry["input"], faces, staging / name, info.fps, info.width, info.height)
            files[name] = staging / name
            entry["annotated"] = name
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return files


def record_annotated(store_url: str, done: list[tuple[str, int]], summary: dict, out_dir: Path) -> None:
    """Tell the store where each video's annotated MP4 now is (the dashboard plays it). Best
    effort: the outputs are written already, so a store that refuses costs a warning only."""
    from core.errors import EmojimationError, database_errors
    from core.store import Store

    entries = {entry["input"]: entry for entry in summary["inputs"]}
    try:
        with Store(store_url) as store:
            for path, source_id in done:
                name = entries.get(path, {}).get("annotated")
                if name and (out_dir / name).is_file():
                    store.update_source(source_id, annotated_video=str((out_dir / name).resolve()))
    except (EmojimationError, OSError, *database_errors()) as error:
        logger.warning("could not record the annotated videos in the store: %s", error)
