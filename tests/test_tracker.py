"""Face tracks: IDs survive crossings and brief occlusions; segments and smoothing behave."""

from __future__ import annotations

import numpy as np

from aggregator.timeline import TrackTimeline, emotion_segments
from aggregator.tracker import FaceTracker, best_assignment
from core.boxes import iou_matrix


def test_iou_matrix_values():
    a = np.array([[0, 0, 10, 10]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 10, 10], [20, 20, 5, 5]], np.float32)
    np.testing.assert_allclose(iou_matrix(a, b), [[1.0, 50 / 150, 0.0]], rtol=1e-6)


def test_ids_survive_two_faces_crossing():
    """Two faces move towards each other, overlap, and pass: each keeps its ID."""
    tracker = FaceTracker(max_gap_s=1.0, min_iou=0.2)
    fps = 10
    history = {0: [], 1: []}
    for step in range(60):
        t = step / fps
        left = [20 + 8 * step, 100, 80, 80]  # moves right
        right = [500 - 8 * step, 110, 80, 80]  # moves left
        ids = tracker.update(t, np.array([left, right], np.float32))
        history[0].append(ids[0])
        history[1].append(ids[1])
    assert len(set(history[0])) == 1 and len(set(history[1])) == 1
    assert history[0][0] != history[1][0]


def test_id_survives_brief_occlusion_and_expires_after_long_one():
    tracker = FaceTracker(max_gap_s=1.0, min_iou=0.2)
    ids = []
    for step in range(40):
        t = step / 10
        occluded = 10 <= step < 16  # 0.6 s unseen while moving
        boxes = np.zeros((0, 4), np.float32) if occluded else np.array([[50 + 5 * step, 80, 90, 90]], np.float32)
        got = tracker.update(t, boxes)
        if not occluded:
            ids.append(got[0])
    assert len(set(ids)) == 1
    # Unseen for 2 s: the next face is a new track.
    assert tracker.update(6.0, np.array([[250, 80, 90, 90]], np.float32)) != [ids[0]]


def test_new_face_far_away_gets_new_id():
    tracker = FaceTracker()
    first = tracker.update(0.0, np.array([[0, 0, 50, 50]], np.float32))
    second = tracker.update(0.1, np.array([[0, 0, 50, 50], [400, 300, 50, 50]], np.float32))
    assert second[0] == first[0] and second[1] != first[0]


def test_smoothing_is_time_aware_and_segments_merge_short_runs():
    timeline = TrackTimeline(track_id=1, smoothing_s=0.5)
    happy = np.eye(7)[3]
    sad = np.eye(7)[4]
    for i in range(20):
        timeline.add(i / 10, happy)
    timeline.add(2.0, sad)  # one stray frame: smoothing keeps happy dominant
    for i in range(21, 40):
        timeline.add(i / 10, happy if i < 25 else sad)
    assert timeline.dominant[20] == 3
    segments = timeline.segments(min_segment_s=0.5, frame_step_s=0.1)
    assert [s[0] for s in segments] == ["happy", "sad"]
    assert segments[0][1] == 0.0 and abs(segments[-1][2] - 4.0) < 1e-6
    assert abs(segments[0][2] - segments[1][1]) < 1e-9


def test_emotion_segments_short_run_joins_longer_neighbour():
    times = [i * 0.1 for i in range(30)]
    dominant = [3] * 10 + [0] * 2 + [3] * 18
    assert emotion_segments(times, dominant, 0.5, 0.1) == [("happy", 0.0, 3.0)]


def test_the_small_assignment_solver_matches_scipys():
    """Up to 3x6 faces the tracker solves the assignment itself (no scipy import at start-up):
    the same total IoU as scipy's Hungarian solver, each row and column used once."""
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(0)
    for _ in range(500):
        rows, cols = rng.integers(1, 8, 2)
        score = rng.random((rows, cols))
        got_rows, got_cols = best_assignment(score)
        want_rows, want_cols = linear_sum_assignment(-score)
        assert np.isclose(score[got_rows, got_cols].sum(), score[want_rows, want_cols].sum())
        assert len(set(got_rows)) == len(got_rows) == min(rows, cols) == len(set(got_cols))
