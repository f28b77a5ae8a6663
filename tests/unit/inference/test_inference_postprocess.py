"""Unit tests of YOLO output decoding, layout detection and class-wise NMS."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from evc.errors import ModelOutputError
from evc.inference import OutputLayout, decode, nms, postprocess, resolve_layout

CHANNELS_FIRST_2 = OutputLayout(num_classes=2, channels_first=True)


def yolo_output(
    anchors: list[tuple[float, float, float, float, list[float]]], *, transposed: bool = False
) -> npt.NDArray[np.float32]:
    """Build a ``[1, 4+nc, N]`` tensor from ``(cx, cy, w, h, class_scores)`` rows."""
    table = np.array([[cx, cy, w, h, *scores] for cx, cy, w, h, scores in anchors], np.float32)
    return table[None] if transposed else table.T[None].copy()


def run_nms(
    boxes: list[list[float]],
    scores: list[float],
    classes: list[int],
    *,
    iou: float = 0.5,
    max_detections: int = 300,
) -> list[int]:
    kept = nms(
        np.array(boxes, np.float32),
        np.array(scores, np.float32),
        np.array(classes),
        iou_threshold=iou,
        max_detections=max_detections,
    )
    return kept.tolist()


class TestDecode:
    def test_known_boxes_are_converted_to_corners(self) -> None:
        output = yolo_output(
            [
                (50, 40, 20, 10, [0.9, 0.1]),
                (10, 10, 4, 4, [0.05, 0.1]),  # below the threshold: dropped
                (100, 200, 50, 30, [0.2, 0.6]),
            ]
        )
        class_ids, scores, boxes = decode(output, CHANNELS_FIRST_2, conf_threshold=0.25)
        assert class_ids.tolist() == [0, 1]
        np.testing.assert_allclose(scores, [0.9, 0.6], rtol=1e-6)
        np.testing.assert_allclose(boxes, [[40, 35, 60, 45], [75, 185, 125, 215]])

    def test_transposed_layout_decodes_the_same(self) -> None:
        anchors = [(50, 40, 20, 10, [0.9, 0.1]), (100, 200, 50, 30, [0.2, 0.6])]
        straight = decode(yolo_output(anchors), CHANNELS_FIRST_2, conf_threshold=0.25)
        layout = OutputLayout(num_classes=2, channels_first=False)
        flipped = decode(yolo_output(anchors, transposed=True), layout, conf_threshold=0.25)
        for a, b in zip(straight, flipped, strict=True):
            np.testing.assert_array_equal(a, b)

    def test_confidence_threshold_is_exclusive(self) -> None:
        output = yolo_output([(5, 5, 2, 2, [0.5, 0.0]), (9, 9, 2, 2, [0.0, 0.75])])
        class_ids, _, _ = decode(output, CHANNELS_FIRST_2, conf_threshold=0.5)
        assert class_ids.tolist() == [1]

    def test_no_candidates_gives_empty_columns(self) -> None:
        output = yolo_output([(5, 5, 2, 2, [0.1, 0.1])])
        class_ids, scores, boxes = postprocess(
            output, CHANNELS_FIRST_2, conf_threshold=0.25, iou_threshold=0.45, max_detections=10
        )
        assert (class_ids.dtype, scores.dtype, boxes.dtype) == (np.uint16, np.float32, np.float32)
        assert class_ids.shape == (0,)
        assert boxes.shape == (0, 4)

    def test_output_of_another_shape_is_rejected(self) -> None:
        output = np.zeros((1, 7, 10), np.float32)
        with pytest.raises(ModelOutputError, match=r"\[1, 6, N\].*\[1, 7, 10\]"):
            decode(output, CHANNELS_FIRST_2, conf_threshold=0.25)

    def test_postprocess_sorts_by_score_and_caps_the_count(self) -> None:
        output = yolo_output(
            [(10 + 30 * i, 10, 10, 10, [0.3 + 0.1 * i, 0.0]) for i in range(5)]
        )
        class_ids, scores, _ = postprocess(
            output, CHANNELS_FIRST_2, conf_threshold=0.25, iou_threshold=0.45, max_detections=3
        )
        np.testing.assert_allclose(scores, [0.7, 0.6, 0.5], rtol=1e-6)
        assert class_ids.tolist() == [0, 0, 0]


class TestResolveLayout:
    @pytest.mark.parametrize(
        ("shape", "num_classes", "expected"),
        [
            ([1, 84, 8400], None, OutputLayout(80, True)),
            ([1, 84, 8400], 80, OutputLayout(80, True)),
            ([1, 8400, 84], None, OutputLayout(80, False)),
            ([1, 8400, 84], 80, OutputLayout(80, False)),
            (["batch", 84, "anchors"], None, OutputLayout(80, True)),
            ([1, 7, 500], 3, OutputLayout(3, True)),
            ([1, 7, 7], None, OutputLayout(3, True)),
            ([1, "n", 7], 3, OutputLayout(3, False)),
            ([1, 4, 6], None, OutputLayout(2, False)),  # 4 is too few channels: 4 anchors
        ],
    )
    def test_layouts(
        self, shape: list[int | str], num_classes: int | None, expected: OutputLayout
    ) -> None:
        assert resolve_layout(shape, num_classes) == expected

    def test_fully_dynamic_output_needs_a_probe(self) -> None:
        assert resolve_layout([1, "c", "n"]) is None

    @pytest.mark.parametrize(
        ("shape", "num_classes"),
        [
            ([1, 84], None),  # wrong rank
            ([2, 84, 8400], None),  # batch of two
            ([1, 4, 4], None),  # no class at all
            ([1, 300, 6], 80),  # an nms=True export of an 80-class model
            ([1, 84, 8400], 3),  # names for another model
        ],
    )
    def test_unusable_shapes_say_what_was_expected(
        self, shape: list[int], num_classes: int | None
    ) -> None:
        with pytest.raises(ModelOutputError, match=r"expected .*\[1, .*N\].*got"):
            resolve_layout(shape, num_classes)


class TestNms:
    def test_overlapping_boxes_of_one_class_keep_the_best(self) -> None:
        kept = run_nms(
            [[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]],
            [0.8, 0.9, 0.7],
            [0, 0, 0],
        )
        assert kept == [1, 2]

    def test_overlapping_boxes_of_different_classes_are_all_kept(self) -> None:
        kept = run_nms([[0, 0, 10, 10], [1, 1, 11, 11]], [0.8, 0.9], [0, 1])
        assert kept == [1, 0]

    def test_iou_equal_to_the_threshold_is_kept(self) -> None:
        # Intersection 3, union 4: IoU is exactly 0.75.
        boxes = [[0, 0, 4, 1], [1, 0, 4, 1]]
        assert run_nms(boxes, [0.9, 0.8], [0, 0], iou=0.75) == [0, 1]
        assert run_nms(boxes, [0.9, 0.8], [0, 0], iou=0.74) == [0]

    def test_suppressed_box_does_not_suppress_others(self) -> None:
        # B overlaps A and C, but A and C do not overlap: greedy NMS keeps A and C.
        boxes = [[0, 0, 10, 10], [5, 0, 15, 10], [10, 0, 20, 10]]
        assert run_nms(boxes, [0.9, 0.8, 0.7], [0, 0, 0], iou=0.3) == [0, 2]

    def test_equal_scores_keep_input_order(self) -> None:
        assert run_nms([[0, 0, 10, 10], [0, 0, 10, 10]], [0.5, 0.5], [0, 0]) == [0]

    def test_max_detections_keeps_the_best(self) -> None:
        boxes = [[20 * i, 0, 20 * i + 10, 10] for i in range(6)]
        kept = run_nms(boxes, [0.1, 0.6, 0.3, 0.9, 0.2, 0.5], [0] * 6, max_detections=3)
        assert kept == [3, 1, 5]

    def test_empty_and_degenerate_boxes(self) -> None:
        assert run_nms([], [], []) == []
        # Zero-area boxes have no IoU with anything, so nothing is suppressed.
        assert run_nms([[5, 5, 5, 5], [5, 5, 5, 5]], [0.9, 0.8], [0, 0]) == [0, 1]

    def test_matches_a_plain_greedy_reference_across_blocks(self) -> None:
        rng = np.random.default_rng(7)
        count = 700  # more than one internal block
        corners = rng.uniform(0, 300, (count, 2))
        boxes = np.hstack([corners, corners + rng.uniform(5, 60, (count, 2))])
        scores = rng.uniform(0, 1, count)
        classes = rng.integers(0, 3, count)
        kept = nms(boxes, scores, classes, iou_threshold=0.5, max_detections=300)
        assert kept.tolist() == reference_nms(boxes, scores, classes, 0.5, 300)


def reference_nms(
    boxes: npt.NDArray[np.float64],
    scores: npt.NDArray[np.float64],
    classes: npt.NDArray[np.int64],
    threshold: float,
    limit: int,
) -> list[int]:
    """Textbook greedy NMS, one box at a time, for comparison."""
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable").tolist():
        if len(kept) == limit:
            break
        if all(classes[i] != classes[k] or iou(boxes[i], boxes[k]) <= threshold for k in kept):
            kept.append(i)
    return kept


def iou(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union)
