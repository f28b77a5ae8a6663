"""Detection accuracy: mean average precision at an IoU threshold (mAP@0.5 by default).

The metric follows PASCAL VOC 2010+ and COCO: per class, detections from all images are ranked
by score; each is a true positive if it overlaps a not-yet-matched ground-truth box of its class
in its image by at least the IoU threshold (the best-overlapping such box is taken), else a
false positive, so duplicates of a found object count against the model. AP is the area under
the precision-recall curve with all-point interpolation (precision made monotone from the
right). mAP averages AP over the classes that have ground truth; a class the model predicts
but the ground truth never contains does not count.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.floating]
IntArray = npt.NDArray[np.integer]


class Prediction(NamedTuple):
    """The detections of one image: ``[n, 4]`` x1, y1, x2, y2 boxes, ``[n]`` scores and classes."""

    boxes: FloatArray
    scores: FloatArray
    class_ids: IntArray


class GroundTruth(NamedTuple):
    """The labelled objects of one image: ``[n, 4]`` x1, y1, x2, y2 boxes and ``[n]`` classes."""

    boxes: FloatArray
    class_ids: IntArray


def box_iou(a: FloatArray, b: FloatArray) -> npt.NDArray[np.float64]:
    """The ``[len(a), len(b)]`` intersection-over-union matrix of two sets of x1y1x2y2 boxes."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0.0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0.0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0.0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    iou: npt.NDArray[np.float64] = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    return iou


def average_precision(
    scores: FloatArray, true_positive: npt.NDArray[np.bool_], num_ground_truth: int
) -> float:
    """All-point interpolated AP of ranked detections of one class.

    Args:
        scores: ``[n]`` detection scores (ranked here, highest first; ties keep input order).
        true_positive: ``[n]`` whether each detection matched a ground-truth object.
        num_ground_truth: how many objects of the class exist; 0 gives AP 0.

    Returns:
        The area under the interpolated precision-recall curve, in 0..1.
    """
    if num_ground_truth <= 0:
        return 0.0
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    hits = np.asarray(true_positive, dtype=np.float64)[order]
    tp = np.cumsum(hits)
    fp = np.cumsum(1.0 - hits)
    recall = np.concatenate([[0.0], tp / num_ground_truth, [1.0]])
    precision = np.concatenate([[1.0], tp / np.maximum(tp + fp, 1e-12), [0.0]])
    # The precision envelope: the best precision at this recall or any higher one.
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def _match_class(
    predictions: Sequence[Prediction], ground_truths: Sequence[GroundTruth], cls: int, iou: float
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_], int]:
    """Scores and true-positive flags of every class-``cls`` detection, and the objects count."""
    all_scores: list[npt.NDArray[np.float64]] = []
    all_hits: list[npt.NDArray[np.bool_]] = []
    total = 0
    for pred, truth in zip(predictions, ground_truths, strict=True):
        keep = np.asarray(pred.class_ids).reshape(-1) == cls
        scores = np.asarray(pred.scores, dtype=np.float64).reshape(-1)[keep]
        boxes = np.asarray(pred.boxes, dtype=np.float64).reshape(-1, 4)[keep]
        objects = np.asarray(truth.boxes).reshape(-1, 4)[np.asarray(truth.class_ids) == cls]
        total += len(objects)
        order = np.argsort(-scores, kind="stable")
        overlaps = box_iou(boxes[order], objects)
        taken = np.zeros(len(objects), dtype=bool)
        hits = np.zeros(len(order), dtype=bool)
        for rank in range(len(order)):
            candidates = np.where(taken, -1.0, overlaps[rank])
            if len(objects) and candidates.max() >= iou:
                best = int(candidates.argmax())
                taken[best] = hits[rank] = True
        all_scores.append(scores[order])
        all_hits.append(hits)
    return np.concatenate(all_scores), np.concatenate(all_hits), total


def class_average_precisions(
    predictions: Sequence[Prediction],
    ground_truths: Sequence[GroundTruth],
    *,
    num_classes: int,
    iou_threshold: float = 0.5,
) -> dict[int, float]:
    """AP of every class that has ground truth, keyed by class id.

    Args:
        predictions: one :class:`Prediction` per image.
        ground_truths: one :class:`GroundTruth` per image, in the same order.
        num_classes: class ids run from 0 to ``num_classes - 1``.
        iou_threshold: the overlap a detection needs to match an object.

    Raises:
        ValueError: if the two sequences differ in length.
    """
    if len(predictions) != len(ground_truths):
        raise ValueError(f"{len(predictions)} predictions for {len(ground_truths)} images")
    result: dict[int, float] = {}
    for cls in range(num_classes):
        scores, hits, total = _match_class(predictions, ground_truths, cls, iou_threshold)
        if total > 0:
            result[cls] = average_precision(scores, hits, total)
    return result


def mean_average_precision(
    predictions: Sequence[Prediction],
    ground_truths: Sequence[GroundTruth],
    *,
    num_classes: int,
    iou_threshold: float = 0.5,
) -> float:
    """mAP: the mean AP over classes present in the ground truth (0.0 if there are none).

    See :func:`class_average_precisions` for the arguments.
    """
    per_class = class_average_precisions(
        predictions, ground_truths, num_classes=num_classes, iou_threshold=iou_threshold
    )
    return float(np.mean(list(per_class.values()))) if per_class else 0.0
