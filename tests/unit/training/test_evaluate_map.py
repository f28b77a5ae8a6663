"""mAP@0.5 against hand-worked cases."""

from __future__ import annotations

import numpy as np
import pytest

from evc.inference.evaluate import (
    GroundTruth,
    Prediction,
    average_precision,
    box_iou,
    class_average_precisions,
    mean_average_precision,
)

A = [0.0, 0.0, 10.0, 10.0]
B = [20.0, 20.0, 40.0, 40.0]
C = [50.0, 0.0, 60.0, 10.0]


def pred(boxes: list[list[float]], scores: list[float], classes: list[int]) -> Prediction:
    return Prediction(
        np.array(boxes, dtype=np.float32).reshape(-1, 4),
        np.array(scores, dtype=np.float32),
        np.array(classes, dtype=np.int64),
    )


def truth(boxes: list[list[float]], classes: list[int]) -> GroundTruth:
    return GroundTruth(
        np.array(boxes, dtype=np.float32).reshape(-1, 4), np.array(classes, dtype=np.int64)
    )


def map50(preds: list[Prediction], truths: list[GroundTruth], num_classes: int = 3) -> float:
    return mean_average_precision(preds, truths, num_classes=num_classes)


def test_box_iou() -> None:
    iou = box_iou(np.array([A, B]), np.array([A, [5.0, 0.0, 15.0, 10.0], C]))
    assert iou[0] == pytest.approx([1.0, 50 / 150, 0.0])
    assert iou[1] == pytest.approx([0.0, 0.0, 0.0])
    assert box_iou(np.zeros((0, 4)), np.array([A])).shape == (0, 1)


def test_perfect_detections_score_one() -> None:
    truths = [truth([A, B], [0, 1]), truth([C], [2])]
    preds = [pred([B, A], [0.6, 0.9], [1, 0]), pred([C], [0.7], [2])]
    assert map50(preds, truths) == pytest.approx(1.0)


def test_a_false_positive_ranked_above_the_true_positive_halves_precision() -> None:
    # Ranked: FP (P=0, R=0), TP (P=1/2, R=1): the envelope is 1/2 over all recall.
    preds = [pred([C, A], [0.9, 0.8], [0, 0])]
    assert map50(preds, [truth([A], [0])]) == pytest.approx(0.5)
    # Ranked below the TP it costs nothing.
    preds = [pred([C, A], [0.7, 0.8], [0, 0])]
    assert map50(preds, [truth([A], [0])]) == pytest.approx(1.0)


def test_a_missed_object_caps_recall() -> None:
    preds = [pred([A], [0.9], [0]), pred([], [], [])]
    truths = [truth([A], [0]), truth([B], [0])]
    assert map50(preds, truths) == pytest.approx(0.5)


def test_duplicate_detections_count_as_false_positives() -> None:
    # Ranked: A (TP, P=1, R=.5), A again (FP, P=.5), B (TP, P=2/3, R=1).
    # AP = .5 * 1 + .5 * 2/3.
    preds = [pred([A, A, B], [0.9, 0.8, 0.7], [0, 0, 0])]
    truths = [truth([A, B], [0, 0])]
    assert map50(preds, truths) == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_the_wrong_class_is_no_match_and_absent_classes_do_not_count() -> None:
    assert map50([pred([A], [0.9], [1])], [truth([A], [0])]) == pytest.approx(0.0)
    # Class 0 found, class 1 missed, class 2 never in the ground truth: mean of {1, 0}.
    preds = [pred([A, C], [0.9, 0.9], [0, 2])]
    truths = [truth([A, B], [0, 1])]
    per_class = class_average_precisions(preds, truths, num_classes=3)
    assert per_class == {0: pytest.approx(1.0), 1: pytest.approx(0.0)}
    assert map50(preds, truths) == pytest.approx(0.5)


def test_the_iou_threshold_decides_a_match() -> None:
    shifted = [4.0, 0.0, 14.0, 10.0]  # IoU with A = 60 / 140 = 0.43
    preds, truths = [pred([shifted], [0.9], [0])], [truth([A], [0])]
    assert map50(preds, truths) == pytest.approx(0.0)
    at_03 = mean_average_precision(preds, truths, num_classes=1, iou_threshold=0.3)
    assert at_03 == pytest.approx(1.0)


def test_a_detection_matches_across_images_only_its_own_image() -> None:
    preds = [pred([], [], []), pred([A], [0.9], [0])]
    truths = [truth([A], [0]), truth([], [])]
    assert map50(preds, truths) == pytest.approx(0.0)


def test_average_precision_by_hand() -> None:
    # Ranked TP, FP, TP, FP with 3 objects: points (1/3, 1), (2/3, 2/3); envelope area = 5/9.
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    hits = np.array([True, False, True, False])
    assert average_precision(scores, hits, 3) == pytest.approx(1 / 3 + (1 / 3) * (2 / 3))
    assert average_precision(scores[::-1], hits[::-1], 3) == pytest.approx(5 / 9)
    assert average_precision(np.array([]), np.array([], dtype=bool), 2) == 0.0
    assert average_precision(scores, hits, 0) == 0.0


def test_no_ground_truth_and_mismatched_inputs() -> None:
    assert map50([pred([A], [0.9], [0])], [truth([], [])]) == 0.0
    with pytest.raises(ValueError, match="predictions"):
        map50([pred([], [], [])], [])
