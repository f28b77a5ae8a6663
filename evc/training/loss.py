"""Targets and loss of the sample detector.

Assignment is centre sampling: an output cell is positive for an object when the cell centre
lies within ``max(w / 4, 4 px)`` of the object's centre horizontally (``h`` vertically); where
two objects claim a cell the smaller one wins. The loss is a per-class binary cross-entropy over
every cell (positives want their class at 1, everything else wants 0) plus smooth-L1 on the
positive cells' centre offsets and log sizes (both in stride units), each summed and divided by
the number of positive cells.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from evc.training.layers import Array
from evc.training.model import OUTPUT_STRIDE, ModelConfig, sigmoid

MIN_RADIUS_PX = 4.0
SMOOTH_L1_BETA = 0.1


@dataclass(frozen=True, slots=True)
class Targets:
    """What every output cell of a batch should predict.

    Attributes:
        classes: ``[N, G, G]`` the class of the object a cell is assigned to, -1 if none.
        boxes: ``[N, G, G, 4]`` dx, dy, log w, log h of that object, in stride units.
    """

    classes: npt.NDArray[np.int64]
    boxes: npt.NDArray[np.float32]


def assign(
    boxes: Sequence[npt.NDArray[np.floating]],
    class_ids: Sequence[npt.NDArray[np.integer]],
    config: ModelConfig,
) -> Targets:
    """Centre-sampling targets of a batch, given each image's x1y1x2y2 boxes and classes."""
    grid = config.grid
    classes = np.full((len(boxes), grid, grid), -1, dtype=np.int64)
    targets = np.zeros((len(boxes), grid, grid, 4), dtype=np.float32)
    centres = (np.arange(grid, dtype=np.float32) + 0.5) * OUTPUT_STRIDE
    for i, (image_boxes, image_classes) in enumerate(zip(boxes, class_ids, strict=True)):
        sizes = image_boxes[:, 2:] - image_boxes[:, :2]
        # Largest first, so smaller objects overwrite the cells they share with larger ones.
        for j in np.argsort(-sizes.prod(axis=1), kind="stable"):
            (x1, y1, x2, y2), (w, h) = image_boxes[j], sizes[j]
            cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
            cols = np.flatnonzero(np.abs(centres - cx) <= max(w / 4.0, MIN_RADIUS_PX))
            rows = np.flatnonzero(np.abs(centres - cy) <= max(h / 4.0, MIN_RADIUS_PX))
            if not len(cols) or not len(rows):
                continue
            block = np.ix_(rows, cols)
            classes[i][block] = int(image_classes[j])
            cell = targets[i][block]
            cell[..., 0] = cx / OUTPUT_STRIDE - (cols[None, :] + 0.5)
            cell[..., 1] = cy / OUTPUT_STRIDE - (rows[:, None] + 0.5)
            cell[..., 2] = np.log(max(w, 1.0) / OUTPUT_STRIDE)
            cell[..., 3] = np.log(max(h, 1.0) / OUTPUT_STRIDE)
            targets[i][block] = cell
    return Targets(classes, targets)


@dataclass(frozen=True, slots=True)
class LossParts:
    """The loss of a batch, its two components and the number of positive cells."""

    total: float
    classification: float
    box: float
    positives: int


def _smooth_l1(diff: Array) -> tuple[Array, Array]:
    """Smooth-L1 of ``diff`` and its derivative."""
    absolute = np.abs(diff)
    quadratic = absolute < SMOOTH_L1_BETA
    value = np.where(quadratic, 0.5 * diff**2 / SMOOTH_L1_BETA, absolute - 0.5 * SMOOTH_L1_BETA)
    grad = np.where(quadratic, diff / SMOOTH_L1_BETA, np.sign(diff))
    return value, grad


def detection_loss(
    raw: Array, targets: Targets, *, box_weight: float = 1.0
) -> tuple[LossParts, Array]:
    """The loss of raw head outputs ``[N, G, G, 4 + nc]`` and its gradient w.r.t. them."""
    positive = targets.classes >= 0
    norm = max(int(positive.sum()), 1)
    logits = raw[..., 4:]
    labels = np.zeros_like(logits)
    labels[positive, targets.classes[positive]] = 1.0
    # Binary cross-entropy with logits, written to be stable for any logit.
    bce = np.maximum(logits, 0) - logits * labels + np.log1p(np.exp(-np.abs(logits)))
    grad = np.zeros_like(raw)
    grad[..., 4:] = (sigmoid(logits) - labels) / norm
    box_value, box_grad = _smooth_l1(raw[positive][:, :4] - targets.boxes[positive])
    grad[positive, :4] = box_weight * box_grad / norm
    cls_loss = float(bce.sum()) / norm
    box_loss = float(box_value.sum()) / norm
    parts = LossParts(cls_loss + box_weight * box_loss, cls_loss, box_loss, int(positive.sum()))
    return parts, grad
