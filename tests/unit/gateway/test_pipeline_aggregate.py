"""The ``aggregate`` operator: worked examples of windows, statistics and exactly-once counting."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from evc.gateway.pipeline import (
    Aggregate,
    AggregateConfig,
    Drop,
    Frame,
    Pipeline,
    Track,
    TrackConfig,
)
from evc.wire import Kind, decode
from evc.wire.derived import summaries_from


def frame(seq: int, ts_ms: int, dets: list[tuple[int, float]], origin: str = "cam-1",
          epoch: int = 7) -> Frame:
    return Frame(
        origin=origin, epoch=epoch, seq=seq, ts_ms=ts_ms, model_version="m", width=640,
        height=480, class_ids=np.asarray([c for c, _ in dets], dtype=np.uint16),
        scores=np.asarray([s for _, s in dets], dtype=np.float32),
        boxes=np.zeros((len(dets), 4), dtype=np.float32),
    )


def aggregate(**config: object) -> Aggregate:
    return Aggregate(AggregateConfig.model_validate({"type": "aggregate", "window_s": 1,
                                                     **config}))


def feed(op: Aggregate, f: Frame) -> tuple[str, tuple[bytes, ...]]:
    """Why the frame is not forwarded ("" if it is) and the summaries it closed."""
    try:
        out = op(f)
    except Drop as drop:
        return drop.reason, f.summaries
    return out.withheld or "", out.summaries


def test_a_window_closes_on_the_first_frame_past_its_end_with_exact_statistics() -> None:
    op = aggregate()
    assert feed(op, frame(1, 1000, [(0, 0.2), (0, 0.6), (3, 1.0)])) == ("aggregated", ())
    assert feed(op, frame(2, 1500, [(0, 0.4)])) == ("aggregated", ())
    assert feed(op, frame(3, 1999, [])) == ("aggregated", ())
    reason, closed = feed(op, frame(4, 2000, [(3, 0.8)]))
    assert reason == "aggregated"
    assert len(closed) == 1
    envelope = decode(closed[0])
    assert (envelope.kind, envelope.origin, envelope.epoch, envelope.seq, envelope.ts_ms) == (
        Kind.SUMMARY, "cam-1", 7, 1, 2000,
    )
    s = summaries_from(envelope)
    assert (s.window_start_ms, s.window_ms, s.frames, s.model_version) == (1000, 1000, 3, "m")
    assert s.class_ids.tolist() == [0, 3]
    assert s.counts.tolist() == [3, 1]
    assert s.min_scores.tolist() == pytest.approx([0.2, 1.0], abs=1 / 255)
    assert s.max_scores.tolist() == pytest.approx([0.6, 1.0], abs=1 / 255)
    assert s.mean_scores.tolist() == pytest.approx([0.4, 1.0], abs=1 / 255)
    assert s.occupancy.tolist() == pytest.approx([2 / 3, 1 / 3], abs=1 / 255)


def test_devices_have_their_own_windows_and_flush_closes_ended_ones() -> None:
    op = aggregate()
    feed(op, frame(1, 1000, [(0, 0.5)], origin="a"))
    feed(op, frame(1, 5000, [(1, 0.5)], origin="b"))
    assert [decode(r).origin for r in op.flush(2000)] == ["a"]
    assert op.flush(2000) == []
    (last,) = op.flush(None)
    assert summaries_from(decode(last)).counts.tolist() == [1]


def test_redelivered_frames_are_not_counted_twice() -> None:
    op = aggregate()
    feed(op, frame(1, 1000, [(0, 0.5)]))
    feed(op, frame(2, 1100, [(0, 0.5)]))
    assert feed(op, frame(2, 1100, [(0, 0.5)])) == ("duplicate", ())
    assert feed(op, frame(1, 1000, [(0, 0.5)])) == ("duplicate", ())
    feed(op, frame(1, 1200, [(0, 0.5)], epoch=8))  # a device reboot: a new epoch counts
    (record,) = op.flush(None)
    assert summaries_from(decode(record)).counts.tolist() == [3]


def test_forward_frames_passes_frames_on() -> None:
    op = aggregate(forward_frames=True)
    f = frame(1, 1000, [(0, 0.5)])
    assert op(f) is f
    assert op(f) is f  # a duplicate still goes on: the cloud deduplicates it


def test_snapshot_and_restore_resume_windows_and_the_redelivery_mark() -> None:
    op = aggregate()
    feed(op, frame(1, 1000, [(0, 0.5), (2, 0.25)]))
    feed(op, frame(2, 1100, [(0, 0.75)]))
    again = aggregate()
    again.restore(op.snapshot())
    assert again.snapshot() == op.snapshot()
    assert feed(again, frame(2, 1100, [(0, 0.75)])) == ("duplicate", ())
    assert op.flush(None) == again.flush(None)


def test_pipeline_exposes_snapshots_and_summaries() -> None:
    op = aggregate(name="agg")
    pipeline = Pipeline([op])
    assert pipeline.run(frame(1, 1000, [(0, 0.5)])).frame is None
    result = pipeline.run(frame(2, 3000, []))
    assert result.frame is None
    assert len(result.summaries) == 1
    state = pipeline.snapshot()
    assert list(state) == ["pipeline/aggregate/agg"]
    fresh = Pipeline([aggregate(name="agg")])
    fresh.restore(state.get)
    assert fresh.snapshot() == state
    assert len(fresh.flush(None)) == 1


def test_after_track_every_frame_is_counted_even_the_withheld_stationary_ones() -> None:
    still = np.asarray([[100, 100, 140, 140]], dtype=np.float32)
    pipeline = Pipeline([
        Track(TrackConfig.model_validate({"type": "track"})),
        aggregate(window_s=10),
    ])
    forwarded, summaries = 0, []
    for seq in range(1, 21):  # one object that never moves, then a frame past the window
        f = frame(seq, 1000 + seq * 100, [(2, 0.9)])
        result = pipeline.run(_with_boxes(f, still))
        forwarded += result.frame is not None
        summaries.extend(result.summaries)
    late = pipeline.run(_with_boxes(frame(21, 20_000, [(2, 0.9)]), still))
    summaries.extend(late.summaries)
    assert forwarded == 0  # track withheld every frame: appeared-event frame too (aggregate)
    counts = [summaries_from(decode(s)) for s in summaries]
    assert sum(int(c.counts.sum()) for c in counts) == 20  # none lost to track's withholding


def _with_boxes(f: Frame, boxes: np.ndarray) -> Frame:
    return replace(f, boxes=np.repeat(boxes, len(f), axis=0))
