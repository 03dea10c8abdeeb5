"""Detection on a schedule (`--detect-every K`): the real BlazeFace on synthetic frames, and the
whole pipeline on a clip. Every analysed frame still gets its own row for every face it shows,
and a face that enters between two detections is found within K frames."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import detector.schedule as schedule
from bench.synthetic import background, paste, require_shared_data, val_faces
from detector.backends import make_detector
from detector.schedule import ScheduledDetector
from test_pipeline import analyse, clips  # noqa: F401 (the clips fixture)

K = 5


@pytest.fixture(scope="module")
def face():
    require_shared_data()
    return next(f for f, label, _ in val_faces(1, seed=3) if label == 3)  # a happy face


def frame_with(face: np.ndarray | None, x: int = 240, y: int = 100, size: int = 160) -> np.ndarray:
    frame = background(640, 360)
    if face is not None:
        paste(frame, face, x, y, size)
    return frame


def test_a_face_entering_between_detections_is_found_at_once(face):
    """The motion gate: a face appearing where no track is triggers a full detection at once."""
    detector = ScheduledDetector(make_detector("blazeface"), every=K)
    found = [len(detector.detect("s", i, frame_with(face if i >= 2 else None))[0]) for i in range(6)]
    assert found == [0, 0, 1, 1, 1, 1]


def test_without_the_motion_gate_a_face_is_found_within_k_frames(face, monkeypatch):
    """The schedule alone: one face is followed from frame 0; a second enters at frame 1, where
    the local search does not look. Frame K is the next full detection, so the newcomer is boxed
    by frame K at the latest, and in every frame after it."""
    monkeypatch.setattr(schedule, "CHANGE_THRESHOLD", math.inf)
    detector = ScheduledDetector(make_detector("blazeface"), every=K)

    def frame(i: int) -> np.ndarray:
        picture = frame_with(face, x=100, size=150)
        if i >= 1:
            paste(picture, face, 430, 100, 150)
        return picture

    runs = [detector.detect("s", i, frame(i)) for i in range(2 * K)]
    found = [len(boxes) for boxes, _, _ in runs]
    full = [was_full for _, _, was_full in runs]
    assert full[0] and full[K] and not any(full[1:K])
    assert found[:K] == [1] * K and found[K:] == [2] * K


def test_frames_without_a_face_are_always_detected(face, monkeypatch):
    """Nothing to follow: every frame gets a full detection, so a face that enters is found in
    its first frame even without the motion gate."""
    monkeypatch.setattr(schedule, "CHANGE_THRESHOLD", math.inf)
    detector = ScheduledDetector(make_detector("blazeface"), every=K)
    runs = [detector.detect("s", i, frame_with(face if i >= 2 else None)) for i in range(4)]
    assert [len(boxes) for boxes, _, _ in runs] == [0, 0, 1, 1]
    assert [full for _, _, full in runs] == [True, True, True, False]


def test_carried_boxes_follow_a_moving_face(face):
    """A face moving 6 px per frame: between detections the carried box keeps up with it."""
    detector = ScheduledDetector(make_detector("blazeface"), every=K)
    errors = []
    for i in range(3 * K):
        boxes, _, full = detector.detect("s", i, frame_with(face, x=150 + 6 * i))
        assert len(boxes) == 1, f"frame {i}"
        if not full and i > K:  # after two detections the velocity is known
            truth, _ = make_detector("blazeface").detect(frame_with(face, x=150 + 6 * i))
            errors.append(abs((boxes[0, 0] + boxes[0, 2] / 2) - (truth[0, 0] + truth[0, 2] / 2)))
    assert errors and max(errors) < 8.0, errors  # pixels, for a 160 px face


def test_every_one_detects_every_frame(face):
    detector = ScheduledDetector(make_detector("blazeface"), every=1)
    assert all(detector.detect("s", i, frame_with(face))[2] for i in range(4))


def test_pipeline_with_a_schedule_has_a_row_for_every_face_in_every_frame(clips, tmp_path):  # noqa: F811
    """`analyse --every-frame --detect-every K` on a clip of faces with empty stretches: the frames
    with a face row are the same as with --detect-every 1, nearly every frame has as many rows
    (boxes are carried, not dropped, between detections), and every track covers its frames
    without gaps."""
    tables = {}
    for every in (1, K):
        out = tmp_path / f"k{every}"
        result = analyse(clips["gaps"], "--every-frame", "--detect-every", every, "--out", out,
                         "--store", f"sqlite:///{tmp_path}/k{every}.db", home=tmp_path)
        assert result.returncode == 0, result.stderr
        tables[every] = pd.read_csv(out / "detections.csv")
    plain, scheduled = tables[1], tables[K]
    assert len(plain) > 50
    assert set(scheduled.frame) == set(plain.frame)
    rows_plain, rows_scheduled = plain.groupby("frame").size(), scheduled.groupby("frame").size()
    same = (rows_scheduled.reindex(rows_plain.index) == rows_plain).mean()
    assert same >= 0.9, f"only {same:.0%} of frames have as many face rows as with every frame detected"
    for _track, rows in scheduled.groupby("track_id"):
        frames = rows.frame.sort_values().to_numpy()
        assert (np.diff(frames) == 1).all(), "a track with a hole"


def test_a_face_that_leaves_between_detections_loses_its_box_at_once(face, monkeypatch):
    """The local search finds no face where the track was: the track is lost, a full detection
    runs on that frame, and no box is carried over an empty picture (motion gate off, so only
    the local search can notice)."""
    monkeypatch.setattr(schedule, "CHANGE_THRESHOLD", math.inf)
    detector = ScheduledDetector(make_detector("blazeface"), every=K)
    runs = [detector.detect("s", i, frame_with(face if i < 2 else None)) for i in range(4)]
    assert [len(boxes) for boxes, _, _ in runs] == [1, 1, 0, 0]
    assert [full for _, _, full in runs] == [True, False, True, True]


def test_the_local_search_refines_a_carried_box(face, monkeypatch):
    """A face that jumps 12 px against its measured velocity (none yet): the motion model alone
    would leave the box 12 px behind; the box the local search finds is centred on the face."""
    monkeypatch.setattr(schedule, "CHANGE_THRESHOLD", math.inf)
    detector = ScheduledDetector(make_detector("blazeface"), every=K)
    first, _, _ = detector.detect("s", 0, frame_with(face, x=240))
    boxes, _, full = detector.detect("s", 1, frame_with(face, x=252))
    assert not full
    face_centre = 252 + 160 / 2  # frame_with pastes a 160 px face at x
    carried_error = abs(first[0, 0] + first[0, 2] / 2 - face_centre)
    refined_error = abs(boxes[0, 0] + boxes[0, 2] / 2 - face_centre)
    assert refined_error < 4.0 and refined_error < carried_error / 2, (refined_error, carried_error)
