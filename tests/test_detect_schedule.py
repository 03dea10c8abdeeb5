"""Detection on a schedule (`--detect-every K`): the real BlazeFace on synthetic frames, and the
whole pipeline on a clip. Every analysed frame still gets its own row for every face it shows,
and a face that enters between two detections is found within K frames."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

import detector.schedule as schedule
import detector.search as search
from bench.synthetic import background, paste, require_shared_data, val_faces
from detector.backends import make_detector
from core.config import DetectorConfig
from detector.schedule import ScheduledDetector
from detector.stage import candidate_score
from core.boxes import iou_matrix
from test_pipeline import analyse, clips, ffprobe_frames  # noqa: F401 (the clips fixture)

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


def test_search_every_two_carries_boxes_on_the_frames_between_searches(face):
    """`search_every=2`: between full detections the model runs on every second frame only (its
    calls counted); every frame still gets a box on the face, and a carried box moves with the
    face's velocity: a face moving 10 px a frame is boxed within 4 px on the carried frames once
    its velocity is known (a box left where it was would be 10 px off)."""
    backend = make_detector("blazeface")
    calls = []
    original = backend.detect

    def counted(image, min_score=None):
        calls.append(image.shape[:2])
        return original(image, min_score)

    backend.detect = counted
    detector = ScheduledDetector(backend, every=K, search_every=2)
    called, carried_errors = [], []
    for i in range(3 * K):
        before = len(calls)
        boxes, _, _ = detector.detect("s", i, frame_with(face, x=60 + 10 * i))
        called.append(len(calls) > before)
        assert len(boxes) == 1, f"frame {i}"
        if not called[-1] and i > K:
            truth, _ = make_detector("blazeface").detect(frame_with(face, x=60 + 10 * i))
            carried_errors.append(abs((boxes[0, 0] + boxes[0, 2] / 2) - (truth[0, 0] + truth[0, 2] / 2)))
    # Frames 0, K, 2K: full detections; 2 and 4 after each: searches; 1 and 3 after each: carried.
    assert called == [True, False, True, False, True] * 3
    assert len(carried_errors) == 4 and max(carried_errors) < 4.0, carried_errors


def test_search_every_two_still_searches_every_frame_while_a_weak_box_is_followed(face, monkeypatch):
    """Only clear faces are carried without a search: while any followed box never scored
    LOST_FACE_SCORE (here: none can), every frame is searched, so a weak (often false) box that
    a search cannot find again is dropped at once, as with search_every=1."""
    monkeypatch.setattr(schedule, "LOST_FACE_SCORE", math.inf)
    monkeypatch.setattr(schedule, "CONFIRM_BELOW", 0.0)  # (no confirming search for weak boxes)
    backend = make_detector("blazeface")
    calls = []
    original = backend.detect

    def counted(image, min_score=None):
        calls.append(1)
        return original(image, min_score)

    backend.detect = counted
    detector = ScheduledDetector(backend, every=K, search_every=2)
    called = []
    for i in range(K):
        before = len(calls)
        detector.detect("s", i, frame_with(face, x=60 + 10 * i))
        called.append(len(calls) > before)
    assert called == [True] * K


@pytest.mark.parametrize("carry", [True, False])
def test_a_followed_face_a_full_detection_misses_is_kept(face, monkeypatch, carry):
    """A face shrinking from 160 to 80 pixels: followed by the local search, but at 80 pixels too
    small for a full detection of the 640x360 frame (checked). At frame K the full detection
    misses it and the local search, where the face should be, keeps it, in every frame after.
    Without that (carry False: no face counts as once clear), it is lost from frame K on."""
    if not carry:
        monkeypatch.setattr(schedule, "LOST_FACE_SCORE", math.inf)
    sizes = [160, 140, 122, 106, 92] + [80] * (K + 1)

    def frame(size: int) -> np.ndarray:
        return frame_with(face, x=300 + (160 - size) // 2, y=100 + (160 - size) // 2, size=size)

    assert len(make_detector("blazeface").detect(frame(80))[0]) == 0  # the full detection misses it
    # (without the weak candidates a close window confirms: those find it, next test)
    detector = ScheduledDetector(make_detector("blazeface"), every=K, candidate_score=None)
    runs = [detector.detect("s", i, frame(size)) for i, size in enumerate(sizes)]
    assert [full for _, _, full in runs][:K + 1] == [True] + [False] * (K - 1) + [True]
    found = [len(boxes) for boxes, _, _ in runs]
    assert found[:K] == [1] * K
    assert found[K:] == ([1] * (K + 1) if carry else [0] * (K + 1))


def test_a_weak_candidate_confirmed_in_a_close_window_is_a_face(face):
    """The 80-pixel face of the test above: BlazeFace's pass over the 640x360 frame scores it
    under its threshold (0.5), so a full detection without candidates finds nothing. As a
    candidate (0.3 or more) it is searched for in a close window, which scores it 0.7 or more:
    found, with the close window's box on the face. A frame without a face stays empty."""
    picture = frame_with(face, x=340, y=140, size=80)
    backend = make_detector("blazeface")
    assert len(backend.detect(picture)[0]) == 0
    weak = backend.detect(picture, min_score=schedule.CANDIDATE_SCORE)
    assert len(weak[0]) and weak[1].max() < 0.5
    assert len(ScheduledDetector(backend, every=K, candidate_score=None).detect("s", 0, picture)[0]) == 0
    boxes, scores, full = ScheduledDetector(backend, every=K).detect("s", 0, picture)
    assert full and len(boxes) == 1 and scores[0] >= schedule.CONFIRM_SCORE
    assert iou_matrix([(340, 140, 80, 80)], boxes)[0, 0] > 0.5
    empty = frame_with(None)
    assert len(backend.detect(empty, min_score=schedule.CANDIDATE_SCORE)[0])  # weak boxes on the background ...
    assert len(ScheduledDetector(backend, every=K).detect("t", 0, empty)[0]) == 0  # ... none confirmed
    assert len(ScheduledDetector(backend, every=1).detect("u", 0, picture)[0]) == 1  # every frame: the same


def test_candidates_only_for_blazeface_short_range_at_its_own_threshold():
    """The candidates were measured with BlazeFace short range only; a threshold the user sets
    is the only one; Haar, which has no threshold to go under, takes none, and its confident
    boxes come through a full detection untouched."""
    assert candidate_score(DetectorConfig()) == schedule.CANDIDATE_SCORE
    assert candidate_score(DetectorConfig(min_score=0.6)) is None
    assert candidate_score(DetectorConfig(detector="blazeface-full")) is None
    assert candidate_score(DetectorConfig(detector="haar")) is None
    haar = make_detector("haar")
    picture = frame_with(val_faces(1, seed=3)[3][0], x=240, y=100, size=160)
    plain = haar.detect(picture)
    boxes, scores, _ = ScheduledDetector(haar, every=1).detect("s", 0, picture)
    confident = plain[0][plain[1] >= schedule.CONFIRM_BELOW]
    assert len(confident) >= 1
    for box in confident:  # Haar's confident boxes come through untouched
        assert any(np.array_equal(box, kept) for kept in boxes)


def test_a_face_the_wide_window_misses_is_searched_for_in_a_close_one():
    """A fear face (FER2013 val, drawn by seed 3) pasted at 80 pixels: the local search's wide
    window (2.5 times the box) finds nothing at the detector's threshold, the close one (1.6)
    finds it, and `search_around` tries the close one only then."""
    fear = val_faces(3, seed=3)[6]
    assert fear[1] == 2
    picture = frame_with(fear[0], x=240, y=100, size=80)
    box = np.asarray([240, 100, 80, 80], np.float32)
    backend = make_detector("blazeface")
    assert search.search_window(backend, picture, box, search.SEARCH_SCALE)[0] is None
    calls = []
    counting = type("Counting", (), {"detect": lambda _, image, min_score=None: calls.append(image.shape)
                                     or backend.detect(image, min_score)})()
    assert search.search_around(counting, picture, box, None, 0.99)[0] is None  # the close window's own bar
    calls.clear()
    found, score = search.search_around(counting, picture, box)
    assert found is not None and score >= 0.5 and iou_matrix([box], [found])[0, 0] >= search.SAME_FACE_IOU
    assert [shape[0] for shape in calls] == [round(2.5 * 80), round(search.CLOSE_SCALE * 80)]
    calls.clear()
    happy = frame_with(val_faces(3, seed=3)[9][0], x=240, y=100, size=160)
    assert search.search_around(counting, happy, np.asarray([240, 100, 160, 160], np.float32))[0] is not None
    assert len(calls) == 1  # found in the wide window: no second call


def test_every_one_detects_every_frame(face):
    detector = ScheduledDetector(make_detector("blazeface"), every=1)
    assert all(detector.detect("s", i, frame_with(face))[2] for i in range(4))


def test_pipeline_with_a_schedule_has_a_row_for_every_face_in_every_frame(clips, tmp_path):  # noqa: F811
    """`analyse --every-frame --detect-every K` on a clip of faces with empty stretches, against
    where the faces were pasted: nearly every frame showing a face has a row on it (IoU 0.5), as
    with --detect-every 1 (boxes are followed, not dropped, between detections); nearly no frame
    without a face has a row; and every track of the scheduled run covers its frames without gaps."""
    truth = clips["gaps_boxes"]  # frame -> the pasted face's box
    hits = {}
    for every in (1, K):
        out = tmp_path / f"k{every}"
        result = analyse(clips["gaps"], "--every-frame", "--detect-every", every, "--out", out,
                         "--store", f"sqlite:///{tmp_path}/k{every}.db", home=tmp_path)
        assert result.returncode == 0, result.stderr
        rows = pd.read_csv(out / "detections.csv")
        on_face = [frame for frame, box in truth.items()
                   if (iou_matrix([box], rows.loc[rows.frame == frame, ["x", "y", "w", "h"]].to_numpy()) >= 0.5).any()]
        hits[every] = len(on_face) / len(truth)
        total, _ = ffprobe_frames(clips["gaps"])
        empty = set(range(total)) - set(truth)
        assert len(empty) > 50 and len(set(rows.frame) & empty) <= 0.05 * len(empty), f"K={every}: rows without a face"
        for _track, track_rows in rows.groupby("track_id") if every == K else []:  # (K=1 has a flickering false box)
            frames = track_rows.frame.sort_values().to_numpy()
            assert (np.diff(frames) == 1).all(), "a track with a hole"
    assert hits[K] >= 0.95 and hits[K] >= hits[1] - 0.02, hits
