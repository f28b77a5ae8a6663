"""The ``track`` operator: worked examples of appeared, moved and left, per device."""

from __future__ import annotations

import numpy as np
import pytest

from evc.gateway.pipeline import Frame, Pipeline, Track, TrackConfig, greedy_match
from evc.wire import EventFrame, EventType, decode, events_from

APPEARED, MOVED, LEFT = EventType.APPEARED, EventType.MOVED, EventType.LEFT
Obj = tuple[int, float, float]  # class, centre x, centre y


def frame(seq: int, objects: list[Obj], origin: str = "cam-1") -> Frame:
    boxes = [[x - 20, y - 20, x + 20, y + 20] for _, x, y in objects]
    return Frame(
        origin=origin, epoch=7, seq=seq, ts_ms=1000 + seq, model_version="m", width=640,
        height=480, class_ids=np.asarray([c for c, _, _ in objects], dtype=np.uint16),
        scores=np.full(len(objects), 0.9, dtype=np.float32),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
    )


def track(**config: object) -> Track:
    return Track(TrackConfig.model_validate({"type": "track", **config}))


def events(op: Track, f: Frame) -> list[tuple[int, int, int]] | None:
    """The (type, track id, class) of each event, or None when the frame was withheld."""
    result = op(f)
    if result.withheld:
        assert result.withheld == "stationary"
        return None
    assert result.events is not None
    ev: EventFrame = result.events
    return list(zip(ev.event_types.tolist(), ev.track_ids.tolist(), ev.class_ids.tolist(),
                    strict=True))


def test_appear_stay_move_leave() -> None:
    op = track(move_threshold_px=15, max_missed_frames=5)
    assert events(op, frame(1, [(0, 100, 100)])) == [(APPEARED, 1, 0)]
    for seq in range(2, 12):  # still for 10 frames (jitter below the threshold)
        assert events(op, frame(seq, [(0, 100 + seq % 2 * 3, 100)])) is None
    assert events(op, frame(12, [(0, 110, 100)])) is None  # 10 px from the anchor
    assert events(op, frame(13, [(0, 118, 100)])) == [(MOVED, 1, 0)]  # 18 px: moved
    assert events(op, frame(14, [(0, 125, 100)])) is None  # 7 px since the last event
    for seq in range(15, 19):  # missing 4 frames: not yet gone
        assert events(op, frame(seq, [])) is None
    assert events(op, frame(19, [])) == [(LEFT, 1, 0)]
    assert events(op, frame(20, [(0, 125, 100)])) == [(APPEARED, 2, 0)]  # a new track


def test_a_left_event_carries_the_last_box() -> None:
    op = track(max_missed_frames=1)
    op(frame(1, [(3, 200, 200)]))
    left = op(frame(2, [])).events
    assert left is not None
    assert left.boxes.tolist() == [[180, 180, 220, 220]]
    assert left.scores.tolist() == pytest.approx([0.9])


def test_devices_are_tracked_independently() -> None:
    op = track()
    assert events(op, frame(1, [(0, 100, 100)], origin="cam-1")) == [(APPEARED, 1, 0)]
    assert events(op, frame(1, [(0, 100, 100)], origin="cam-2")) == [(APPEARED, 1, 0)]
    assert events(op, frame(2, [(0, 100, 100)], origin="cam-1")) is None
    for seq in range(2, 7):
        got = events(op, frame(seq, [], origin="cam-2"))
    assert got == [(LEFT, 1, 0)]
    assert events(op, frame(3, [(0, 100, 100)], origin="cam-1")) is None  # cam-1 unaffected


def test_crossing_objects_of_different_classes_keep_their_tracks() -> None:
    op = track(move_threshold_px=40)
    assert events(op, frame(1, [(0, 100, 100), (1, 160, 100)])) == [
        (APPEARED, 1, 0), (APPEARED, 2, 1),
    ]
    # They walk towards each other 15 px a frame, cover each other exactly at step 2 and swap
    # places: classes never match across, so each track stays with its own object.
    got = [
        events(op, frame(1 + step, [(1, 160 - 15 * step, 100), (0, 100 + 15 * step, 100)]))
        for step in range(1, 5)
    ]
    assert got == [None, None, [(MOVED, 1, 0), (MOVED, 2, 1)], None]
    state = op._devices["cam-1"]
    assert state.ids.tolist() == [1, 2]
    assert state.boxes[:, 0].tolist() == [140, 80]  # person now right, car left


def test_forward_all_and_none() -> None:
    keep_all = track(forward_frames="all")
    keep_all(frame(1, [(0, 100, 100)]))
    still = frame(2, [(0, 100, 100)])
    assert keep_all(still) is still
    events_only = track(forward_frames="none")
    withheld = events_only(frame(1, [(0, 100, 100)]))
    assert withheld.withheld == "events_only"
    assert withheld.events is not None


class Listener:
    def __init__(self) -> None:
        self.frames: list[tuple[str, str, str]] = []
        self.events: dict[str, int] = {}
        self.removed = 0

    def record(self, operator: str, outcome: str, reason: str, removed: int) -> None:
        self.removed += removed  # a dropped frame counts all its detections
        self.frames.append((operator, outcome, reason))

    def record_events(self, operator: str, event_type: str, count: int) -> None:
        assert operator == "track"
        self.events[event_type] = self.events.get(event_type, 0) + count


def test_the_pipeline_keeps_events_of_a_dropped_frame_and_counts_them() -> None:
    listener = Listener()
    pipeline = Pipeline([track(forward_frames="none", max_missed_frames=1)], listener=listener)
    first = pipeline.run(frame(1, [(0, 100, 100), (2, 300, 300)]))
    assert first.frame is None
    assert first.events is not None
    envelope = decode(first.events)
    assert (envelope.origin, envelope.epoch, envelope.seq, envelope.ts_ms) == ("cam-1", 7, 1, 1001)
    assert events_from(envelope).event_types.tolist() == [APPEARED, APPEARED]
    pipeline.run(frame(2, [(0, 100, 100)]))
    assert listener.events == {"appeared": 2, "left": 1}
    stationary = Pipeline([track()], listener=listener).run(frame(1, []))
    assert (stationary.frame, stationary.events) == (None, None)
    assert listener.frames[-1] == ("track", "dropped", "stationary")


def test_an_event_frame_passes_unchanged_detections() -> None:
    listener = Listener()
    result = Pipeline([track()], listener=listener).run(frame(1, [(0, 100, 100)]))
    assert result.frame is not None
    assert listener.frames == [("track", "passed", "")]


def test_greedy_match_takes_best_overlap_first() -> None:
    iou = np.asarray([[0.5, 0.9], [0.4, 0.8], [0.1, 0.0]], dtype=np.float32)
    rows, cols = greedy_match(iou, 0.3)
    assert list(zip(rows.tolist(), cols.tolist(), strict=True)) == [(0, 1), (1, 0)]
