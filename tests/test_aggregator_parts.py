"""The aggregator's parts, each alone: re-ordering (pure), tracks and timelines (pure), the store
writer (against a real SQLite file), the preview socket; then the wired Aggregator once."""

from __future__ import annotations

import dataclasses
import json
import logging
import time

import cv2
import numpy as np
import pandas as pd
import pytest
import zmq

from aggregator import reorder
from aggregator.alerts import AlertEvaluator
from aggregator.preview import Preview
from aggregator.reorder import MAX_EARLY, Reorder
from aggregator.stage import Aggregator
from aggregator.tracks import StreamTracks, frame_step_s
from aggregator.writer import FLUSH_EVERY_S, TRACKS_EVERY_S, SourceWriter, Writer
from core.config import AggregatorConfig, AlertRule
from core.emotions import EMOTIONS, NUM_EMOTIONS
from core.messages import CROP_SIZE, Classified, End, Faces, Message, Start, Status, Tracked, decode
from core.security import LinkSecurity
from core.store import FaceRow, Store

HAPPY = [0.05, 0.0, 0.0, 0.8, 0.05, 0.05, 0.05]
SAD = [0.05, 0.0, 0.0, 0.05, 0.8, 0.05, 0.05]


def classified(stream: str, seq: int, boxes: list[list[float]] | None = None, probs: list[list[float]] | None = None,
               capture_time: float = 0.0) -> Classified:
    """Frame `seq - 1` of a 10 fps stream, with a face per box (each with its probabilities)."""
    boxes = boxes or []
    probs = probs or [HAPPY] * len(boxes)
    n = len(boxes)
    return Classified(stream=stream, seq=seq, source_time=(seq - 1) / 10, capture_time=capture_time,
                      frame_index=seq - 1, boxes=np.asarray(boxes, np.float32).reshape(n, 4),
                      scores=np.linspace(0.9, 0.5, n, dtype=np.float32),
                      crops=np.full((n, CROP_SIZE, CROP_SIZE), 7, np.uint8),
                      probs=np.asarray(probs, np.float32).reshape(n, NUM_EMOTIONS))


def seqs(messages: list[Message]) -> list[int]:
    return [m.seq for m in messages]


class Clock:
    """The re-orderer's clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def drops() -> list[tuple[str, int]]:
    return []


def reorderer(drops: list[tuple[str, int]], clock: Clock | None = None, window_s: float = 0.5) -> Reorder:
    return Reorder(window_s, lambda reason, message: drops.append((reason, message.seq)), clock or Clock())


# --- re-ordering -------------------------------------------------------------------------
def test_reorder_releases_each_stream_in_sequence_order(drops):
    order = reorderer(drops)
    order.open("a", live=False)
    order.open("b", live=False)
    assert order.push(classified("a", 3)) == []
    assert order.push(classified("b", 2)) == []
    assert seqs(order.push(classified("a", 1))) == [1]
    assert order.held == 2
    assert seqs(order.push(classified("a", 2))) == [2, 3]
    assert seqs(order.push(classified("b", 1))) == [1, 2]
    assert order.held == 0 and drops == []


def test_reorder_drops_duplicates_of_released_and_of_waiting_messages(drops):
    order = reorderer(drops)
    order.open("a", live=False)
    order.push(classified("a", 1))
    order.push(classified("a", 3))
    assert order.push(classified("a", 1)) == []  # already released
    assert order.push(classified("a", 3)) == []  # already waiting
    assert drops == [("duplicate", 1), ("duplicate", 3)]
    assert seqs(order.push(classified("a", 2))) == [2, 3]


def test_reorder_holds_messages_that_beat_their_start(drops):
    order = reorderer(drops)
    assert order.push(classified("a", 2)) == []
    assert order.push(classified("a", 1)) == []
    assert order.push(classified("a", 4)) == []
    assert order.held == 3
    assert seqs(order.open("a", live=False)) == [1, 2]  # 4 still waits for 3
    assert order.held == 1
    assert seqs(order.push(classified("a", 3))) == [3, 4]


def test_reorder_drops_the_oldest_early_message_beyond_the_bound(drops):
    order = reorderer(drops)
    for seq in range(1, MAX_EARLY + 2):
        order.push(classified("never-started", seq))
    assert drops == [("no-start", 1)]
    assert order.held == MAX_EARLY


def test_reorder_end_closes_the_stream(drops):
    order = reorderer(drops)
    order.open("a", live=False)
    assert order.push(End(stream="a", seq=3, frames_sent=2)) == []
    assert order.push(classified("a", 2)) == []
    released = order.push(classified("a", 1))
    assert seqs(released) == [1, 2, 3] and isinstance(released[-1], End)
    assert "a" not in order.streams
    assert order.push(classified("a", 4)) == []  # after its End: held as early, never released
    assert list(order.early["a"]) == [4] and order.held == 1


def test_reorder_gives_up_a_gap_beyond_the_bound(drops, monkeypatch):
    monkeypatch.setattr(reorder, "MAX_REORDER", 3)
    order = reorderer(drops)
    order.open("a", live=False)
    assert order.push(classified("a", 1)) != []
    for seq in (3, 4, 5):
        assert order.push(classified("a", seq)) == []
    assert seqs(order.push(classified("a", 6))) == [3, 4, 5, 6]  # 2 is given up as lost
    assert order.push(classified("a", 2)) == [] and drops == [("duplicate", 2)]


def test_reorder_live_gap_is_skipped_after_the_window(drops):
    clock = Clock()
    order = reorderer(drops, clock, window_s=0.5)
    order.open("cam", live=True)
    assert seqs(order.push(classified("cam", 1))) == [1]
    assert order.push(classified("cam", 3)) == []  # 2 is missing from now on
    gap_began = clock.now
    clock.now += 0.2
    assert order.push(classified("cam", 4)) == []
    assert order.skip_gaps(gap_began + 0.49) == []
    [skipped] = order.skip_gaps(gap_began + 0.5)
    assert (skipped.stream, skipped.frames, seqs(skipped.released)) == ("cam", 1, [3, 4])
    assert order.push(classified("cam", 2)) == []
    assert drops == [("late", 2)]  # too late: the stream went on without it


def test_reorder_skipped_gap_reports_frames_and_releases_what_follows(drops):
    clock = Clock()
    order = reorderer(drops, clock, window_s=0.5)
    order.open("cam", live=True)
    order.push(classified("cam", 1))
    order.push(classified("cam", 4))
    order.push(classified("cam", 5))
    order.push(classified("cam", 7))
    clock.now += 0.5
    # 7 came with 4 and 5: gap 6 was waited for as long as gap 2-3, so both go at once (a gap
    # waited for afresh after the one before it let an overloaded camera's latency grow).
    first, second = order.skip_gaps(clock.now)
    assert (first.stream, first.frames, seqs(first.released)) == ("cam", 2, [4, 5])
    assert (second.stream, second.frames, seqs(second.released)) == ("cam", 1, [7])
    assert order.held == 0


def test_reorder_holds_no_live_message_longer_than_the_window(drops):
    """A gap found when the messages before it are released is waited for from when the message
    after it arrived, not from the release: every message leaves within the window of arriving."""
    clock = Clock()
    order = reorderer(drops, clock, window_s=0.5)
    order.open("cam", live=True)
    order.push(classified("cam", 1))
    order.push(classified("cam", 3))  # 2 missing
    clock.now += 0.3
    order.push(classified("cam", 5))  # 4 missing
    clock.now += 0.2
    [skipped] = order.skip_gaps(clock.now)  # 3 waited 0.5 s; 5 only 0.2 s
    assert seqs(skipped.released) == [3]
    assert order.skip_gaps(clock.now + 0.29) == []
    [skipped] = order.skip_gaps(clock.now + 0.3)  # 5 has now waited 0.5 s since it arrived
    assert (skipped.frames, seqs(skipped.released)) == (1, [5])


def test_reorder_never_skips_a_gap_in_a_file_stream(drops):
    order = reorderer(drops)
    order.open("file", live=False)
    order.push(classified("file", 2))
    assert order.skip_gaps(float("inf")) == []
    assert order.held == 1


# --- tracks and timelines ------------------------------------------------------------------
def test_tracks_follow_a_moving_face_and_keep_apart_a_distant_one():
    start = Start(stream="v", seq=0, kind="video", source_fps=10.0)
    tracks = StreamTracks(AggregatorConfig(smoothing_s=0.5, min_segment_s=0.0), start)
    ids = []
    for seq in range(1, 6):
        frame = classified("v", seq, [[10 + 3 * seq, 10, 50, 50], [400, 300, 40, 40]], [HAPPY, SAD])
        rows = tracks.add(frame.source_time, frame)
        assert [row.frame for row in rows] == [seq - 1, seq - 1]
        ids.append([row.track_id for row in rows])
    assert ids == [[1, 2]] * 5
    assert tracks.add(0.6, classified("v", 7)) == []  # a frame without faces adds no row

    first = tracks.add(0.7, classified("v", 8, [[1000, 10, 50, 50]], [SAD]))[0]
    assert first.track_id == 3 and first.smoothed == pytest.approx(SAD)  # a new track starts at its first probabilities
    summaries = {row.track_id: row for row in tracks.track_rows()}
    assert summaries[1].frames == 5 and (summaries[1].start_s, summaries[1].end_s) == (0.0, pytest.approx(0.4))
    assert summaries[1].dominant_emotion == "happy" and summaries[2].dominant_emotion == "sad"
    assert summaries[1].segments == [("happy", 0.0, 0.5)]  # the last frame lasts one frame step
    assert summaries[1].thumbnail is None


def test_tracks_smooth_in_time():
    start = Start(stream="v", seq=0, kind="video", source_fps=10.0)
    tracks = StreamTracks(AggregatorConfig(smoothing_s=0.5), start)
    tracks.add(0.0, classified("v", 1, [[0, 0, 50, 50]], [HAPPY]))
    row = tracks.add(0.1, classified("v", 2, [[0, 0, 50, 50]], [SAD]))[0]
    alpha = 1 - np.exp(-0.1 / 0.5)
    assert row.smoothed == pytest.approx((1 - alpha) * np.array(HAPPY) + alpha * np.array(SAD))
    assert row.probs == pytest.approx(SAD)


def test_tracks_in_an_image_give_every_face_its_own_track_and_continue_from_a_given_id():
    start = Start(stream="i", seq=0, kind="image")
    tracks = StreamTracks(AggregatorConfig(), start, next_track_id=5)
    same_place = [[0, 0, 50, 50], [0, 0, 50, 50]]
    first = tracks.add(0.0, classified("i", 1, same_place))
    second = tracks.add(1.0, classified("i", 2, same_place))
    assert [row.track_id for row in first + second] == [5, 6, 7, 8]


def test_tracks_keep_the_best_scored_crop_as_a_png_thumbnail():
    start = Start(stream="v", seq=0, kind="video", source_fps=10.0)
    tracks = StreamTracks(AggregatorConfig(thumbnails=True, min_track_frames=1), start)
    for seq, value in ((1, 40), (2, 200)):
        frame = classified("v", seq, [[0, 0, 50, 50]])
        frame.crops[:] = value
        frame.scores[:] = 0.5 if value == 40 else 0.9
        tracks.add(frame.source_time, frame)
    [summary] = tracks.track_rows()
    image = cv2.imdecode(np.frombuffer(summary.thumbnail, np.uint8), cv2.IMREAD_UNCHANGED)
    assert image.shape == (CROP_SIZE, CROP_SIZE) and int(image[0, 0]) == 200


def test_a_track_shorter_than_the_minimum_has_rows_but_no_summary():
    """A face seen in one or two frames (default minimum 3) keeps its rows, with the tracker's ID,
    but gets no track summary; a track summarised once it reaches the minimum has all its frames."""
    start = Start(stream="v", seq=0, kind="video", source_fps=10.0)
    tracks = StreamTracks(AggregatorConfig(), start)
    rows = []
    for seq in range(1, 6):  # track 1 throughout; a distant face in frames 2-3 (track 2) and 5 (track 3)
        boxes = [[10, 10, 50, 50]] + ([[400, 300, 40, 40]] if seq in (2, 3) else []) + (
            [[900, 10, 40, 40]] if seq == 5 else [])
        rows += tracks.add((seq - 1) / 10, classified("v", seq, boxes))
        if seq == 2:
            assert [t.track_id for t in tracks.track_rows()] == []  # nobody followed for 3 frames yet
        if seq == 3:
            assert [(t.track_id, t.frames) for t in tracks.track_rows()] == [(1, 3)]  # reached the minimum
    assert [row.track_id for row in rows] == [1, 1, 2, 1, 2, 1, 1, 3]  # every face has its row
    assert [(t.track_id, t.frames) for t in tracks.track_rows()] == [(1, 5)]
    assert [t.track_id for t in tracks.established()] == [1]

    every = StreamTracks(AggregatorConfig(min_track_frames=1), start)  # 1: every face's track, as before
    for seq in range(1, 6):
        boxes = [[10, 10, 50, 50]] + ([[400, 300, 40, 40]] if seq in (2, 3) else [])
        every.add((seq - 1) / 10, classified("v", seq, boxes))
    assert [(t.track_id, t.frames) for t in every.track_rows()] == [(1, 5), (2, 2)]

    image = StreamTracks(AggregatorConfig(min_track_frames=5), Start(stream="i", seq=0, kind="image"))
    image.add(0.0, classified("i", 1, [[0, 0, 50, 50], [100, 0, 50, 50]]))
    assert [t.track_id for t in image.track_rows()] == [1, 2]  # no minimum in pictures


def test_frame_step_is_the_longer_of_source_and_sampling_intervals():
    assert frame_step_s(Start(stream="v", seq=0, source_fps=30.0, options={"fps": 10})) == pytest.approx(0.1)
    assert frame_step_s(Start(stream="v", seq=0, source_fps=5.0, options={"fps": 10})) == pytest.approx(0.2)
    assert frame_step_s(Start(stream="v", seq=0)) == 1.0


# --- the store writer (real SQLite) ----------------------------------------------------------
@pytest.fixture
def store(tmp_path):
    with Store(f"sqlite:///{tmp_path / 'parts.db'}") as store:
        yield store


def face_row(frame: int, track_id: int, captured_at: float) -> FaceRow:
    return FaceRow(frame, frame / 10, captured_at, track_id, (0.0, 0.0, 10.0, 10.0), 0.9, HAPPY, HAPPY)


def video_start(stream: str = "v", uri: str = "/videos/a.mp4") -> Start:
    return Start(stream=stream, seq=0, kind="video", uri=uri, name="a.mp4", source_fps=10.0, expected_frames=3)


def camera_start(stream: str = "c1") -> Start:
    return Start(stream=stream, seq=0, kind="camera", uri="rtsp://cam/1", name="door", source_fps=5.0)


def add_tracked_frames(source: SourceWriter, tracks: StreamTracks, count: int, first_seq: int = 1) -> None:
    for seq in range(first_seq, first_seq + count):
        frame = classified(source.start.stream, seq, [[10, 10, 50, 50]], capture_time=time.time())
        time_s = source.time_of(frame)
        source.add(time_s, tracks.add(time_s, frame))


def test_writer_flushes_rows_with_the_counters_and_finishes_with_the_tracks(store):
    writer = Writer(store, AggregatorConfig(model_name="cnn", min_track_frames=1))
    start = video_start()
    source = writer.open(start)
    assert store.source(source.source_id)["status"] == "analysing"
    assert store.source(source.source_id)["model"] == "cnn"
    tracks = StreamTracks(writer.config, start, source.next_track_id())
    add_tracked_frames(source, tracks, 2)
    source.add(0.2, [])  # a frame without faces counts as analysed
    assert store.faces(source.source_id).empty  # nothing is stored before a flush

    source.flush()
    row = store.source(source.source_id)
    assert (row["frames_analysed"], row["frames_with_faces"], row["faces"]) == (3, 2, 2)
    assert row["duration_s"] == pytest.approx(0.3)
    assert list(store.faces(source.source_id).frame) == [0, 1]
    assert store.tracks(source.source_id).empty and source.rows == []

    source.finish(tracks)
    assert store.source(source.source_id)["status"] == "done"
    [summary] = store.tracks(source.source_id).itertuples()
    assert (summary.track_id, summary.frames, summary.dominant_emotion) == (1, 2, "happy")
    assert len(store.faces(source.source_id)) == 2  # finishing wrote no row twice


def test_writer_finishing_a_rerun_replaces_the_earlier_results(store):
    writer = Writer(store, AggregatorConfig())
    for run in range(2):
        start = video_start(stream=f"run{run}")
        source = writer.open(start)
        tracks = StreamTracks(writer.config, start)
        add_tracked_frames(source, tracks, 2 + run)
        source.finish(tracks)
    [remaining] = store.sources().itertuples()
    assert remaining.id == source.source_id and len(store.faces(source.source_id)) == 3


def test_writer_failing_a_source_leaves_no_partial_rows(store):
    writer = Writer(store, AggregatorConfig())
    start = video_start()
    source = writer.open(start)
    tracks = StreamTracks(writer.config, start)
    add_tracked_frames(source, tracks, 3)
    source.flush(tracks)
    assert len(store.faces(source.source_id)) == 3 and len(store.tracks(source.source_id)) == 1
    source.fail("decoder died")
    row = store.source(source.source_id)
    assert (row["status"], row["error"]) == ("failed", "decoder died")
    assert store.faces(source.source_id).empty and store.tracks(source.source_id).empty


def test_writer_tick_stores_live_rows_at_once_and_file_rows_in_batches(store):
    writer = Writer(store, AggregatorConfig(min_track_frames=1))
    sources = []
    for start in (video_start(), camera_start()):
        source = writer.open(start)
        tracks = StreamTracks(writer.config, start)
        add_tracked_frames(source, tracks, 2)
        sources.append((source, tracks))
    (video, video_tracks), (camera, _camera_tracks) = sources

    writer.tick(sources, writer.last_flush + FLUSH_EVERY_S / 2)
    assert len(store.faces(camera.source_id)) == 2  # live: stored at once
    assert store.faces(video.source_id).empty  # a file waits for its batch
    assert store.tracks(camera.source_id).empty

    batch = writer.last_flush + FLUSH_EVERY_S
    writer.tick(sources, batch)
    assert len(store.faces(video.source_id)) == 2
    assert len(store.tracks(video.source_id)) == 1  # a batch also refreshes due track summaries
    assert video.tracks_written_at == batch
    stored_at = store.source(video.source_id)["updated_at"]
    writer.tick(sources, batch + FLUSH_EVERY_S)
    assert store.source(video.source_id)["updated_at"] == stored_at  # nothing new: nothing written

    add_tracked_frames(video, video_tracks, 1, first_seq=3)
    writer.tick(sources, batch + 2 * FLUSH_EVERY_S)
    assert len(store.faces(video.source_id)) == 3
    assert store.tracks(video.source_id).frames.tolist() == [2]  # summaries at most every TRACKS_EVERY_S
    add_tracked_frames(video, video_tracks, 1, first_seq=4)
    writer.tick(sources, batch + TRACKS_EVERY_S)
    assert store.tracks(video.source_id).frames.tolist() == [4]


def test_writer_camera_reopened_continues_its_counters_timeline_and_track_ids(store):
    writer = Writer(store, AggregatorConfig())
    start = camera_start("c1")
    first = writer.open(start)
    tracks = StreamTracks(writer.config, start, first.next_track_id())
    add_tracked_frames(first, tracks, 2)
    first.frames_dropped = 4
    first.flush(tracks)

    again = writer.open(camera_start("c2"))
    assert again.source_id == first.source_id
    assert (again.frames_analysed, again.faces, again.frames_dropped) == (2, 2, 4)
    assert again.origin == store.source(again.source_id)["created_at"] > 0
    assert again.next_track_id() == 2
    frame = classified("c2", 1, capture_time=again.origin + 90.0)
    assert again.time_of(frame) == pytest.approx(90.0)  # capture time since the camera was first seen
    assert store.source(again.source_id)["status"] == "connecting"


def test_writer_camera_status_changes_and_disconnect(store):
    writer = Writer(store, AggregatorConfig())
    camera = writer.open(camera_start())
    unknown = Status(stream="c1", seq=0, capture_time=10.0, detail={"status": "exploded"})
    assert camera.set_camera_status(unknown) is False
    assert store.events(camera.source_id).empty

    live = Status(stream="c1", seq=0, capture_time=20.0,
                  detail={"status": "live", "message": "connected", "width": 640, "height": 480, "codec": "h264"})
    assert camera.set_camera_status(live) is True
    row = store.source(camera.source_id)
    assert (row["status"], row["width"], row["height"]) == ("live", 640, 480)
    [event] = store.events(camera.source_id).itertuples()
    assert (event.kind, event.message, event.at) == ("camera-live", "connected", 20.0)
    assert '"codec": "h264"' in event.data

    camera.disconnect("monitor stopped")
    camera.disconnect("monitor stopped")  # already disconnected: no second event
    assert store.source(camera.source_id)["status"] == "disconnected"
    assert store.events(camera.source_id).kind.tolist().count("camera-disconnected") == 1


def test_writer_latency_stats_of_stored_camera_rows(store):
    writer = Writer(store, AggregatorConfig())
    camera = writer.open(camera_start())
    assert camera.latency_stats() == {}
    now = time.time()
    camera.add(1.0, [face_row(0, 1, captured_at=now - 2.0), face_row(0, 2, captured_at=now - 1.0)])
    camera.flush()
    stats = camera.latency_stats()
    assert 1500 <= stats["latency_p50_ms"] <= stats["latency_p95_ms"] < 1950 + 2000  # from about 1 s and 2 s


def test_writer_stores_an_alert_as_an_event(store):
    writer = Writer(store, AggregatorConfig())
    camera = writer.open(camera_start())
    evaluator = AlertEvaluator([AlertRule(name="grumpy", emotion="angry", min_prob=0.5, min_duration_s=1.0)])
    angry = np.eye(NUM_EMOTIONS)[EMOTIONS.index("angry")]
    assert evaluator.update(camera.source_id, "door", 3, 0.0, angry, 50.0) == []
    [firing] = evaluator.update(camera.source_id, "door", 3, 1.0, angry, 51.0)
    writer.add_alert(firing)
    [event] = store.events(camera.source_id).itertuples()
    assert (event.kind, event.at) == ("alert", 51.0)
    assert event.message == "door: track 3 angry >= 0.5 for 1 s (grumpy)"


def test_writer_retention_deletes_old_camera_rows_once_a_minute(store):
    writer = Writer(store, AggregatorConfig(retention_days=1.0))
    camera = writer.open(camera_start())
    video = writer.open(video_start())
    old = time.time() - 2 * 86400
    camera.add(0.0, [face_row(0, 1, captured_at=old)])
    video.add(0.0, [face_row(0, 1, captured_at=old)])
    camera.flush()
    video.flush()
    writer.tick([], 1000.0)
    assert store.faces(camera.source_id).empty and len(store.faces(video.source_id)) == 1
    camera.add(1.0, [face_row(1, 1, captured_at=old)])
    camera.flush()
    writer.tick([], 1030.0)  # the next pass is a minute later
    assert len(store.faces(camera.source_id)) == 1


# --- the preview socket ------------------------------------------------------------------
def test_preview_publishes_the_frame_with_its_track_ids():
    context = zmq.Context()
    address = f"inproc://preview-{time.monotonic_ns()}"
    preview = Preview(context, LinkSecurity(context, "test"), address)
    listener = context.socket(zmq.SUB)
    listener.setsockopt(zmq.SUBSCRIBE, b"")
    listener.connect(address)
    try:
        frame = classified("c1", 7, [[1, 2, 3, 4], [5, 6, 7, 8]], capture_time=123.5)
        deadline = time.monotonic() + 5
        while not listener.poll(50) and time.monotonic() < deadline:  # until the subscription has arrived
            preview.publish(frame, [4, 9])
        tracked = decode(listener.recv_multipart())
        assert isinstance(tracked, Tracked)
        assert (tracked.stream, tracked.seq, tracked.capture_time, tracked.frame_index) == ("c1", 7, 123.5, 6)
        assert tracked.track_ids.tolist() == [4, 9] and tracked.boxes.tolist() == frame.boxes.tolist()
    finally:
        listener.close()
        preview.close()
        context.term()


# --- the parts wired ---------------------------------------------------------------------
def test_aggregator_orders_a_raced_file_stream_into_the_store(store):
    aggregator = Aggregator(AggregatorConfig(), store)
    messages = [classified("v", seq, [[10 + seq, 10, 50, 50]]) for seq in range(1, 6)]
    end = End(stream="v", seq=6, frames_sent=5)
    for message in (messages[2], end, messages[4], messages[0], video_start(), messages[0], messages[3],
                    messages[1]):
        aggregator.accept(message)
    [source] = store.sources().itertuples()
    assert source.status == "done" and source.frames_analysed == 5 and aggregator.held == 0
    faces = store.faces(source.id)
    assert faces.frame.tolist() == [0, 1, 2, 3, 4] and set(faces.track_id) == {1}
    assert store.tracks(source.id).frames.tolist() == [5]
    assert aggregator.streams == {}


def test_aggregator_camera_gap_status_and_stop(store):
    config = AggregatorConfig(reorder_window_s=0.0, alert_rules='[{"name": "glad", "emotion": "happy", '
                                                                 '"min_prob": 0.5, "min_duration_s": 0}]')
    aggregator = Aggregator(config, store)
    now = time.time()
    aggregator.accept(Status(stream="c1", seq=0, capture_time=now, detail={"status": "live"}))  # before its Start
    aggregator.accept(camera_start("c1"))
    for seq in (1, 2, 4):  # 3 was dropped upstream
        aggregator.accept(classified("c1", seq, [[10, 10, 50, 50]], capture_time=now + seq / 5))
    aggregator.tick()
    source_id = aggregator.streams["c1"].source.source_id
    assert store.faces(source_id).frame.tolist() == [0, 1, 3]  # stored at once, the gap skipped
    aggregator.stop()
    row = store.source(source_id)
    assert (row["status"], row["frames_analysed"], row["frames_dropped"]) == ("disconnected", 3, 1)
    kinds = store.events(source_id).kind.tolist()
    assert kinds.count("camera-live") == 1 and kinds.count("camera-disconnected") == 1
    assert kinds.count("alert") == 1 and aggregator.alerts_fired == 1
    assert store.tracks(source_id).frames.tolist() == [3]
    assert aggregator.streams == {}


def test_aggregator_drops_stale_live_faces_as_the_cameras_dropped_frames(store):
    """Live, with max_age_s: a Classified captured longer ago is not stored, and counts as a
    dropped frame of its camera (a gap), like the frames dropped upstream."""
    aggregator = Aggregator(AggregatorConfig(reorder_window_s=0.0, max_age_s=0.5), store)
    aggregator.accept(camera_start("c1"))
    now = time.time()
    aggregator.accept(classified("c1", 1, [[10, 10, 50, 50]], capture_time=now))
    aggregator.accept(classified("c1", 2, [[10, 10, 50, 50]], capture_time=now - 2.0))  # stale
    aggregator.accept(classified("c1", 3, [[10, 10, 50, 50]], capture_time=now))
    aggregator.tick()
    source_id = aggregator.streams["c1"].source.source_id
    assert store.faces(source_id).frame.tolist() == [0, 2]
    aggregator.stop()
    assert store.source(source_id)["frames_dropped"] == 1


def test_aggregator_camera_restart_closes_the_earlier_run(store):
    aggregator = Aggregator(AggregatorConfig(), store)
    aggregator.accept(camera_start("run1"))
    aggregator.accept(classified("run1", 1, [[10, 10, 50, 50]], capture_time=time.time()))
    aggregator.accept(camera_start("run2"))  # the same camera's ingest started again
    assert list(aggregator.streams) == ["run2"]
    source_id = aggregator.streams["run2"].source.source_id
    assert store.faces(source_id).track_id.tolist() == [1] and store.tracks(source_id).empty  # one frame: short
    for seq in (1, 2, 3):
        aggregator.accept(classified("run2", seq, [[10, 10, 50, 50]], capture_time=time.time()))
    aggregator.stop()
    # IDs continue across runs, past the short track's too (it has rows but no summary)
    assert store.faces(source_id).track_id.tolist() == [1, 2, 2, 2]
    assert store.tracks(source_id).track_id.tolist() == [2]


def test_a_live_track_is_short_until_it_reaches_the_minimum(store):
    """A camera's new face: rows stored at once, its summary only once it has min_track_frames
    frames; the minimum is recorded in the source's options for the dashboard."""
    aggregator = Aggregator(AggregatorConfig(reorder_window_s=0.0, min_track_frames=3), store)
    aggregator.accept(camera_start("c1"))
    source = aggregator.streams["c1"].source
    assert json.loads(store.source(source.source_id)["options"])["min_track_frames"] == 3
    now = time.time()
    for seq in (1, 2):
        aggregator.accept(classified("c1", seq, [[10, 10, 50, 50]], capture_time=now + seq / 5))
    source.flush(aggregator.streams["c1"].tracks)
    assert len(store.faces(source.source_id)) == 2 and store.tracks(source.source_id).empty
    aggregator.accept(classified("c1", 3, [[10, 10, 50, 50]], capture_time=now + 3 / 5))
    source.flush(aggregator.streams["c1"].tracks)
    assert store.tracks(source.source_id)[["track_id", "frames"]].values.tolist() == [[1, 3]]
    aggregator.stop()


def test_finishing_a_file_keeps_only_the_summaries_of_its_tracks_now(store):
    """A file carried on with a higher minimum: a summary written earlier of a track that is now
    short is deleted when the file finishes (Store.write_tracks(complete=True))."""
    start = video_start()
    source = Writer(store, AggregatorConfig(min_track_frames=2)).open(start)
    tracks = StreamTracks(AggregatorConfig(min_track_frames=2), start)
    add_tracked_frames(source, tracks, 2)
    source.flush(tracks)
    assert store.tracks(source.source_id).frames.tolist() == [2]
    stricter = StreamTracks(AggregatorConfig(min_track_frames=3), start)
    stricter.replay(store.faces(source.source_id))
    source.finish(stricter)
    assert store.tracks(source.source_id).empty and store.segments(source.source_id).empty
    assert len(store.faces(source.source_id)) == 2


def test_aggregator_stop_interrupts_an_unfinished_file(store):
    """Stopped mid-file: never shown as done; the rows that arrived stay for `analyse --resume`."""
    aggregator = Aggregator(AggregatorConfig(), store)
    aggregator.accept(video_start())
    aggregator.accept(classified("v", 1, [[10, 10, 50, 50]]))
    aggregator.stop()
    [source] = store.sources().itertuples()
    assert source.status == "interrupted" and len(store.faces(source.id)) == 1 and source.frames_analysed == 1


def test_aggregator_end_with_an_error_fails_the_source(store):
    aggregator = Aggregator(AggregatorConfig(), store)
    aggregator.accept(video_start())
    aggregator.accept(classified("v", 1, [[10, 10, 50, 50]]))
    source = aggregator.streams["v"].source
    source.flush()
    assert len(store.faces(source.source_id)) == 1
    aggregator.accept(End(stream="v", seq=2, frames_sent=1, error="truncated file"))
    row = store.source(source.source_id)
    assert (row["status"], row["error"]) == ("failed", "truncated file")
    assert store.faces(source.source_id).empty and aggregator.streams == {}


def test_aggregator_drops_unknown_camera_statuses_and_unexpected_messages(store, caplog):
    caplog.set_level(logging.WARNING, logger="aggregator")
    aggregator = Aggregator(AggregatorConfig(), store)
    aggregator.accept(camera_start("c1"))
    aggregator.accept(Status(stream="c1", seq=0, detail={"status": "exploded"}))
    aggregator.accept(Faces(stream="c1", seq=1))  # a detector's output sent here by mistake
    aggregator.accept(classified("c1", 2, [[10, 10, 50, 50]], capture_time=time.time()))
    aggregator.tick()
    dropped = [record.getMessage() for record in caplog.records if record.getMessage().startswith("dropped")]
    assert dropped == ["dropped Status message c1/0 (unexpected)", "dropped Faces message c1/1 (unexpected)"]
    source_id = aggregator.streams["c1"].source.source_id
    assert store.events(source_id).empty
    assert store.faces(source_id).frame.tolist() == [1]  # the stream went on past the dropped message


def test_a_restarted_aggregator_carries_on_with_its_runs_source(tmp_path):
    """Killed mid-file (rows stored, nothing else), a new aggregator given the same run's Start
    replays the stored rows through the tracker, drops what it already has by (stream, seq),
    and ends with the rows and tracks of an undisturbed run, none twice."""
    rng = np.random.default_rng(0)
    frames = [classified("v", seq, [[10 + 3 * seq, 10, 50, 50], [200 - 2 * seq, 80, 40, 40]][:1 + seq % 2],
                         rng.dirichlet(np.ones(NUM_EMOTIONS), 1 + seq % 2).tolist()) for seq in range(1, 41)]
    start = dataclasses.replace(video_start(), expected_frames=40, options={"fps": None, "run": "r1"})
    end = End(stream="v", seq=41, frames_sent=40)
    results = []
    for name, kill_after in (("undisturbed", None), ("restarted", 17)):
        with Store(f"sqlite:///{tmp_path / name}.db") as store:
            aggregator = Aggregator(AggregatorConfig(), store)
            aggregator.accept(start)
            for frame in frames[:kill_after]:
                aggregator.accept(frame)
            if kill_after is not None:
                aggregator.tick()
                aggregator.streams["v"].source.flush()  # what was stored before SIGKILL (no stop())
                aggregator = Aggregator(AggregatorConfig(), store)
                for frame in frames[kill_after - 5:kill_after]:  # in flight: arrive before the Start again
                    aggregator.accept(frame)
                aggregator.accept(start)
                for frame in frames[kill_after - 3:]:  # sent again, some of it twice
                    aggregator.accept(frame)
            aggregator.accept(end)
            [source_id] = store.sources()["id"]
            faces = store.faces(int(source_id)).drop(columns=["id", "captured_at"])
            results.append((faces, store.tracks(int(source_id)), store.source(int(source_id))["status"]))
    (faces, tracks, status), (faces_again, tracks_again, status_again) = results
    assert status == status_again == "done" and len(faces) == sum(1 + seq % 2 for seq in range(1, 41))
    pd.testing.assert_frame_equal(faces, faces_again, check_exact=True)
    pd.testing.assert_frame_equal(tracks, tracks_again, check_exact=True)
