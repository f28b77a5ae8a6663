"""The change filter publishes what changed, suppresses what did not, and keyframes."""

from __future__ import annotations

import numpy as np
import pytest

from evc.device.reduction import ChangeFilter, PublishMode, pairwise_iou

BOXES = np.array([[10, 10, 50, 50], [100, 100, 140, 160]], dtype=np.float32)
CLASSES = np.array([0, 2])


def on_change(keyframe_s: float = 0.0) -> ChangeFilter:
    return ChangeFilter(mode=PublishMode.ON_CHANGE, iou_threshold=0.7,
                        keyframe_interval_s=keyframe_s)


def test_every_frame_mode_publishes_everything() -> None:
    f = ChangeFilter(mode=PublishMode.EVERY_FRAME)
    assert all(f.should_publish(CLASSES, BOXES, now_s=t) for t in range(5))
    assert f.counts.published == 5
    assert f.counts.suppressed == 0


def test_identical_frames_are_suppressed_after_the_first() -> None:
    f = on_change()
    decisions = [f.should_publish(CLASSES, BOXES, now_s=t) for t in range(4)]
    assert decisions == [True, False, False, False]
    assert (f.counts.published, f.counts.suppressed) == (1, 3)


def test_small_jitter_is_suppressed_but_a_real_move_is_published() -> None:
    f = on_change()
    assert f.should_publish(CLASSES, BOXES, now_s=0)
    assert not f.should_publish(CLASSES, BOXES + 1, now_s=1)  # IoU ~0.9
    assert f.should_publish(CLASSES, BOXES + np.array([30, 0, 30, 0]), now_s=2)  # moved 30 px


def test_drift_is_measured_against_the_last_published_frame() -> None:
    f = on_change()
    f.should_publish(CLASSES, BOXES, now_s=0)
    published = [f.should_publish(CLASSES, BOXES + np.array([3 * k, 0, 3 * k, 0]), now_s=k)
                 for k in range(1, 6)]
    # each step alone is small, but by some step the total drift passes the threshold
    assert published.count(True) >= 1
    assert not published[0]


def test_class_change_or_new_object_is_published() -> None:
    f = on_change()
    f.should_publish(CLASSES, BOXES, now_s=0)
    assert f.should_publish(np.array([1, 2]), BOXES, now_s=1)
    assert f.should_publish(np.array([1, 2, 0]), np.vstack([BOXES, [[0, 0, 5, 5]]]), now_s=2)
    assert f.should_publish(np.array([], dtype=int), np.zeros((0, 4)), now_s=3)
    assert not f.should_publish(np.array([], dtype=int), np.zeros((0, 4)), now_s=4)


def test_keyframes_are_published_even_without_change() -> None:
    f = on_change(keyframe_s=10.0)
    decisions = [f.should_publish(CLASSES, BOXES, now_s=t) for t in (0, 5, 9.9, 10, 15, 20.5)]
    assert decisions == [True, False, False, True, False, True]
    assert f.counts.keyframes == 3


def test_pairwise_iou_worked_example() -> None:
    a = np.array([[0, 0, 10, 10]], dtype=np.float32)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=np.float32)
    assert pairwise_iou(a, b) == pytest.approx(np.array([[50 / 150, 0.0, 1.0]]))


def test_invalid_threshold_is_refused() -> None:
    with pytest.raises(ValueError, match="iou_threshold"):
        ChangeFilter(iou_threshold=0)
