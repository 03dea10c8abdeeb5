"""How often the detection schedule finds a pasted face, and how many boxes it draws elsewhere.

The detector stage's own schedule (detector/schedule.py), run in this process frame by frame as a
file run does (groups of K frames, each starting with a full detection), on two kinds of
composed clips of FER2013 val faces whose boxes are known:
  - `--seeds`: bench/agreement.py's clips (640x360, one face of 170 pixels, a new face every 2 s);
  - `--slots`: 1280x720, three faces at once (`--slot-px` pixels), each moving, a new face per
    slot every 2 s, over a real photo enlarged and blurred (bench/group_photos.py's scenes),
    JPEG-compressed (quality 90); 45 faces per clip, like the cropping issue's own clip.
A face counts as found in a frame when a box overlaps its pasted square by IoU 0.3 or more;
every other box is counted as elsewhere (on these backgrounds mostly false, but a blurred real
face of the scene counts too). `--videos` also counts the boxes per frame on real videos (no
labels: compare settings side by side). The schedule's settings are module constants; the
flags override them for an experiment.

    .venv/bin/python -m bench.schedule_recall [--seeds 7 11 13] [--slots 5 6 --slot-px 200 260]
        [--detector blazeface] [--every 5] [--search-every 2]
        [--videos megamind wolfgang] [--candidate 0.3] [--confirm-score 0.7] [--close-scale 1.6]
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import cv2
import numpy as np

import detector.schedule as schedule
import detector.search as search
from bench.agreement import decode
from bench.group_photos import backgrounds
from bench.synthetic import SHARED_DATA, compose_clip, val_faces
from core.boxes import iou_matrix
from core.emotions import EMOTIONS
from detector.backends import make_detector

VIDEOS = {"megamind": "megamind.avi", "wolfgang": "WolfgangLanger_Pexels.mp4", "single": "single_face.mp4"}


def scheduled(detector: schedule.ScheduledDetector, frames: list[np.ndarray], every: int) -> list[np.ndarray]:
    """Each frame's boxes, the schedule restarted every `every` frames as a file run's groups are."""
    out = []
    for start in range(0, len(frames), every):
        key = f"group{start}"
        detector.forget(key)
        out += [detector.detect(key, j - start, frames[j])[0] for j in range(start, min(start + every, len(frames)))]
        detector.forget(key)
    return out


def agreement_clip(seed: int, work: Path) -> tuple[list[np.ndarray], list[list[tuple]]]:
    """bench/agreement.py's clip for `seed`: frames and the pasted box per frame."""
    faces = val_faces(int(np.ceil(42 / len(EMOTIONS))) + 1, seed=seed)
    order = np.random.default_rng(seed).permutation(len(faces))[:42]
    picked = [faces[i] for i in order]
    clip = work / f"faces-{seed}-42.mp4"
    plan = compose_clip(clip, [f for f, _, _ in picked], [label for _, label, _ in picked],
                        seconds_per_face=2.0, fps=10.0, face_px=170)
    truth = {frame: [box] for segment in plan for frame, box in segment.boxes.items()}
    frames = list(decode(clip))
    return frames, [truth.get(i, []) for i in range(len(frames))]


def slots_clip(seed: int, face_px: int, seconds_per_face: float = 2.0, fps: float = 10.0
               ) -> tuple[list[np.ndarray], list[list[tuple]]]:
    """Three slots of moving FER2013 val faces in 1280x720 over a blurred real photo."""
    rng = np.random.default_rng(seed)
    faces = val_faces(7, seed=seed + 100)
    order = rng.permutation(len(faces))[:45]
    scene = cv2.resize(backgrounds()[seed % 3], (1280, 720))
    per_face = int(round(seconds_per_face * fps))
    frames, truth = [], []
    for t in range(15 * per_face):
        frame, boxes = scene.copy(), []
        for slot in range(3):
            face = faces[order[slot * 15 + t // per_face]][0]
            x = int(90 + slot * 390 + 70 * np.sin(t / 15 + slot))
            y = int(200 + 120 * np.sin(t / 23 + 2 * slot))
            big = cv2.resize(face, (face_px, face_px), interpolation=cv2.INTER_CUBIC)
            frame[y:y + face_px, x:x + face_px] = cv2.cvtColor(big, cv2.COLOR_GRAY2BGR)
            boxes.append((x, y, face_px, face_px))
        _, jpeg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 90])
        frames.append(cv2.imdecode(jpeg, cv2.IMREAD_COLOR))
        truth.append(boxes)
    return frames, truth


def count(found_boxes: list[np.ndarray], truth: list[list[tuple]]) -> dict:
    """Faces found frame by frame, and boxes on no pasted face."""
    found = total = elsewhere = 0
    for boxes, faces in zip(found_boxes, truth):
        total += len(faces)
        if not len(boxes):
            continue
        if not faces:
            elsewhere += len(boxes)
            continue
        overlap = iou_matrix(faces, boxes)
        found += int((overlap.max(axis=1) >= 0.3).sum())
        elsewhere += int((overlap.max(axis=0) < 0.3).sum())
    return {"found": found, "faces": total, "rate": round(found / max(1, total), 4), "elsewhere": elsewhere}


def real_video(name: str, limit: int = 600) -> list[np.ndarray]:
    """Up to `limit` frames of a shared video, at most 1280 pixels wide (as ingest scales)."""
    capture = cv2.VideoCapture(str(SHARED_DATA / "videos" / VIDEOS[name]))
    frames = []
    while len(frames) < limit:
        ok, frame = capture.read()
        if not ok:
            break
        if frame.shape[1] > 1280:
            frame = cv2.resize(frame, (1280, round(frame.shape[0] * 1280 / frame.shape[1])), interpolation=cv2.INTER_AREA)
        frames.append(frame)
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[7, 11, 13])
    parser.add_argument("--slots", type=int, nargs="*", default=[], help="seeds of three-slot 1280x720 clips")
    parser.add_argument("--slot-px", type=int, nargs="+", default=[200, 260], help="face sizes of the slot clips")
    parser.add_argument("--videos", nargs="*", choices=sorted(VIDEOS), default=[])
    parser.add_argument("--detector", default="blazeface")
    parser.add_argument("--every", type=int, default=5)
    parser.add_argument("--search-every", type=int, default=2)
    parser.add_argument("--candidate", type=float, default=schedule.CANDIDATE_SCORE,
                        help="full detections' candidate threshold (the detector's own: no candidates, "
                             "though the close second look stays; the pipeline takes candidates with "
                             "blazeface only)")
    parser.add_argument("--confirm-score", type=float, default=schedule.CONFIRM_SCORE)
    parser.add_argument("--close-scale", type=float, default=search.CLOSE_SCALE)
    parser.add_argument("--work", type=Path, default=Path("/tmp/emojimation-schedule-recall"))
    args = parser.parse_args()
    schedule.CONFIRM_SCORE = args.confirm_score
    schedule.CLOSE_SCALE = search.CLOSE_SCALE = args.close_scale
    args.work.mkdir(parents=True, exist_ok=True)
    backend = make_detector(args.detector)
    settings = {"candidate": args.candidate, "confirm_score": args.confirm_score, "close_scale": args.close_scale}
    clips = [(f"seed {seed}", *agreement_clip(seed, args.work)) for seed in args.seeds]
    clips += [(f"slots {seed} at {px} px", *slots_clip(seed, px)) for seed in args.slots for px in args.slot_px]
    for name, frames, truth in clips:
        detector = schedule.ScheduledDetector(backend, args.every, search_every=args.search_every,
                                              candidate_score=args.candidate)
        started = time.process_time()
        result = count(scheduled(detector, frames, args.every), truth)
        result["detector_ms_per_frame"] = round(1000 * (time.process_time() - started) / len(frames), 2)
        print(json.dumps({"clip": name, **settings, **result}), flush=True)
    for name in args.videos:
        detector = schedule.ScheduledDetector(backend, args.every, search_every=args.search_every,
                                              candidate_score=args.candidate)
        boxes = scheduled(detector, real_video(name), args.every)
        per_frame = collections.Counter(len(b) for b in boxes)
        print(json.dumps({"video": name, **settings, "frames_by_box_count": dict(sorted(per_frame.items()))}), flush=True)


if __name__ == "__main__":
    main()
