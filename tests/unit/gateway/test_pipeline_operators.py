"""Worked examples of the built-in pipeline operators: exactly which detections they keep."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from evc.gateway.pipeline import (
    Drop,
    Frame,
    MinDetections,
    MinDetectionsConfig,
    Threshold,
    ThresholdConfig,
    Zones,
    ZonesConfig,
    inside,
)


def frame(
    classes: list[int], scores: list[float], centres: list[tuple[float, float]] | None = None,
    *, origin: str = "cam-1",
) -> Frame:
    """A 640x480 frame; each box is 10x10 pixels around its centre."""
    centres = centres or [(100.0, 100.0)] * len(classes)
    boxes = [(x - 5, y - 5, x + 5, y + 5) for x, y in centres]
    return Frame(
        origin=origin, epoch=1, seq=1, ts_ms=0, model_version="m", width=640, height=480,
        class_ids=np.array(classes, dtype=np.uint16),
        scores=np.array(scores, dtype=np.float32),
        boxes=np.array(boxes, dtype=np.float32).reshape(-1, 4),
    )


def threshold(**settings: Any) -> Threshold:
    return Threshold(ThresholdConfig(type="threshold", **settings))


def zones(mode: str, devices: dict[str, Any]) -> Zones:
    return Zones(ZonesConfig.model_validate({"type": "zones", "mode": mode, "devices": devices}))


# -- threshold ---------------------------------------------------------------------------------


def test_threshold_default_applies_to_every_class() -> None:
    out = threshold(default=0.5)(frame([0, 1, 2], [0.4, 0.5, 0.9]))
    assert out.class_ids.tolist() == [1, 2]


def test_threshold_per_class_by_id_and_name_override_the_default() -> None:
    op = threshold(
        default=0.5, min_score={"person": 0.8, 2: 0.1}, class_names=["person", "car", "dog"]
    )
    out = op(frame([0, 0, 1, 1, 2], [0.7, 0.9, 0.4, 0.6, 0.2]))
    assert out.class_ids.tolist() == [0, 1, 2]
    assert out.scores.tolist() == pytest.approx([0.9, 0.6, 0.2])


def test_threshold_allow_and_deny_lists() -> None:
    detections = frame([0, 1, 2, 3], [0.9] * 4)
    named = threshold(allow=[1, "dog"], class_names=["a", "b", "dog"])
    assert named(detections).class_ids.tolist() == [1, 2]
    assert threshold(deny=[0, 3])(detections).class_ids.tolist() == [1, 2]
    assert threshold(allow=[1, 2], deny=[2])(detections).class_ids.tolist() == [1]


def test_threshold_returns_the_same_frame_when_nothing_is_removed() -> None:
    detections = frame([0, 1], [0.9, 0.8])
    assert threshold(default=0.5)(detections) is detections


def test_threshold_rejects_unknown_class_names() -> None:
    with pytest.raises(ValidationError, match="not in class_names"):
        ThresholdConfig(type="threshold", min_score={"person": 0.5})


# -- zones -------------------------------------------------------------------------------------

SQUARE = [[0, 0], [200, 0], [200, 200], [0, 200]]
# A U shape open at the top: the notch x 80..120, y 0..150 is outside.
U_SHAPE = [[0, 0], [80, 0], [80, 150], [120, 150], [120, 0], [200, 0], [200, 200], [0, 200]]


def test_zones_drop_removes_detections_centred_inside() -> None:
    detections = frame([0, 1, 2], [0.9] * 3, [(100, 100), (300, 100), (150, 190)])
    out = zones("drop", {"cam-1": [SQUARE]})(detections)
    assert out.class_ids.tolist() == [1]


def test_zones_keep_keeps_only_detections_centred_inside_any_zone() -> None:
    far = [[400, 400], [500, 400], [500, 470]]
    detections = frame([0, 1, 2], [0.9] * 3, [(100, 100), (300, 100), (480, 410)])
    out = zones("keep", {"cam-1": [SQUARE, far]})(detections)
    assert out.class_ids.tolist() == [0, 2]


def test_zones_concave_polygon() -> None:
    detections = frame([0, 1, 2, 3], [0.9] * 4, [(100, 50), (40, 50), (160, 50), (100, 175)])
    out = zones("keep", {"cam-1": [U_SHAPE]})(detections)
    assert out.class_ids.tolist() == [1, 2, 3]  # (100, 50) sits in the notch


def test_zones_of_another_device_leave_a_frame_untouched() -> None:
    detections = frame([0], [0.9], [(100, 100)], origin="cam-2")
    assert zones("keep", {"cam-1": [SQUARE]})(detections) is detections
    assert zones("drop", {"cam-1": [SQUARE]})(detections) is detections


def test_ray_through_a_vertex_counts_once() -> None:
    diamond = np.array([[5, 0], [10, 5], [5, 10], [0, 5]], dtype=np.float64)
    points = np.array([[2, 5], [12, 5], [5, 5], [-1, 5], [5, 0.5]], dtype=np.float32)
    assert inside(points, diamond).tolist() == [True, False, True, False, True]


def test_degenerate_and_empty_inputs() -> None:
    line = np.array([[0, 0], [10, 0], [20, 0]], dtype=np.float64)  # zero area: nothing inside
    assert inside(np.array([[5, 0], [5, 1]], dtype=np.float32), line).tolist() == [False, False]
    empty = frame([], [])
    assert zones("keep", {"cam-1": [SQUARE]})(empty) is empty


def test_a_polygon_needs_three_points() -> None:
    with pytest.raises(ValidationError, match="at least 3"):
        ZonesConfig.model_validate({"type": "zones", "devices": {"cam-1": [[[0, 0], [1, 1]]]}})


# -- min_detections ----------------------------------------------------------------------------


def test_min_detections_drops_frames_with_too_few() -> None:
    op = MinDetections(MinDetectionsConfig(type="min_detections", count=2))
    two = frame([0, 1], [0.9, 0.9])
    assert op(two) is two
    with pytest.raises(Drop) as dropped:
        op(frame([0], [0.9]))
    assert dropped.value.reason == "too_few_detections"
