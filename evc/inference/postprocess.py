"""Decoding of YOLO-family detection outputs and class-wise non-maximum suppression in numpy.

Ultralytics YOLOv8 / YOLO11 detection models exported to ONNX without embedded NMS produce one
tensor of shape ``[1, 4 + classes, anchors]``: for every anchor the box centre, width and height
in input pixels, then one score per class (already sigmoid-activated; there is no objectness).
Some converters transpose it to ``[1, anchors, 4 + classes]``; both layouts are accepted.

Everything here is vectorised over anchors: the confidence filter runs first, so the class
argmax, the box conversion and NMS only see the few candidates that survive it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from evc.errors import ModelOutputError

MAX_NMS_CANDIDATES = 30_000
"""At most this many highest-scoring candidates enter NMS (as Ultralytics does)."""
_NMS_BLOCK = 128
_MIN_CHANNELS = 5  # a box and one class

Dim = int | str | None
"""One dimension of a tensor shape as ONNX Runtime reports it: an int, or a symbolic name."""


@dataclass(frozen=True, slots=True)
class OutputLayout:
    """Where classes and anchors sit in a YOLO output tensor."""

    num_classes: int
    """Number of classes the model scores."""
    channels_first: bool
    """``True`` for ``[1, 4+classes, anchors]``, ``False`` for ``[1, anchors, 4+classes]``."""

    def check(self, shape: tuple[int, ...]) -> None:
        """Verify that an actual output shape fits this layout.

        Raises:
            ModelOutputError: the shape differs from the layout found when the model was loaded.
        """
        channels = 4 + self.num_classes
        axis = 1 if self.channels_first else 2
        if len(shape) != 3 or shape[0] != 1 or shape[axis] != channels:
            expected = "[1, {c}, N]" if self.channels_first else "[1, N, {c}]"
            raise ModelOutputError(
                f"expected an output of shape {expected.format(c=channels)}, got {list(shape)}"
            )


def resolve_layout(
    shape: Sequence[Dim], num_classes: int | None = None
) -> OutputLayout | None:
    """Work out the layout of a YOLO output from its (possibly symbolic) shape.

    Ultralytics puts the class axis before the anchors; the anchors axis is the longer one and the
    only one that is dynamic in ``dynamic=True`` exports. Class names, when known, settle it.

    Args:
        shape: The output shape; ``None`` or a string stands for a dynamic dimension.
        num_classes: The number of classes if known (from class names), to disambiguate.

    Returns:
        The layout, or ``None`` if the shape is too dynamic to tell before running the model.

    Raises:
        ModelOutputError: the shape cannot be a ``[1, 4+classes, N]`` or ``[1, N, 4+classes]``
            detection output with at least one class.
    """
    dims = [d if isinstance(d, int) else None for d in shape]
    if len(dims) != 3 or dims[0] not in (1, None):
        raise ModelOutputError(_layout_message(shape, num_classes))
    first, second = dims[1], dims[2]
    if first is None and second is None:
        return None
    if num_classes is not None:
        channels = 4 + num_classes
        if first == channels or (first is None and second != channels):
            return _checked(channels, True, shape, num_classes)
        if second in (channels, None):
            return _checked(channels, False, shape, num_classes)
        raise ModelOutputError(_layout_message(shape, num_classes))
    # The class axis is the shorter one, unless it is too short to hold even one class.
    if (
        first is not None
        and first >= _MIN_CHANNELS
        and (second is None or second < _MIN_CHANNELS or first <= second)
    ):
        return _checked(first, True, shape, num_classes)
    return _checked(second, False, shape, num_classes)


def decode(
    output: npt.NDArray[np.floating],
    layout: OutputLayout,
    *,
    conf_threshold: float,
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Keep the anchors whose best class scores above ``conf_threshold``.

    Args:
        output: The raw model output, ``[1, 4+classes, N]`` or ``[1, N, 4+classes]``.
        layout: The layout of ``output``.
        conf_threshold: Anchors whose best class score is not strictly above it are dropped.

    Returns:
        ``(class_ids, scores, boxes)`` of the kept anchors, boxes as ``x1, y1, x2, y2`` in input
        pixels.

    Raises:
        ModelOutputError: ``output`` does not have the shape of ``layout``.
    """
    layout.check(output.shape)
    # A channels-first view makes every row one quantity over all anchors: the max over classes
    # is then a streaming element-wise max of rows, far cheaper than an argmax over anchors.
    table = output[0] if layout.channels_first else output[0].T
    scores_by_class = table[4:]
    best = scores_by_class.max(axis=0)
    keep = np.flatnonzero(best > conf_threshold)
    class_ids = scores_by_class[:, keep].argmax(axis=0)
    scores = best[keep].astype(np.float32)
    cx, cy, w, h = table[:4, keep].astype(np.float32)
    boxes = np.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), axis=1)
    return class_ids, scores, boxes


def nms(
    boxes: npt.NDArray[np.floating],
    scores: npt.NDArray[np.floating],
    class_ids: npt.NDArray[np.integer],
    *,
    iou_threshold: float,
    max_detections: int,
) -> npt.NDArray[np.intp]:
    """Class-wise greedy non-maximum suppression.

    A box is suppressed by a higher-scoring kept box of the same class whose IoU with it is
    strictly above ``iou_threshold``; boxes of different classes never suppress each other. Equal
    scores keep their input order.

    Args:
        boxes: ``N x 4`` boxes, ``x1, y1, x2, y2``.
        scores: ``N`` scores.
        class_ids: ``N`` class ids.
        iou_threshold: IoU above which the lower-scoring box of a pair is dropped.
        max_detections: Stop once this many boxes are kept.

    Returns:
        Indices into the inputs of the kept boxes, highest score first.
    """
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    order = order[:MAX_NMS_CANDIDATES]
    ranked = _Ranked.of(np.asarray(boxes).reshape(-1, 4)[order], np.asarray(class_ids)[order])
    kept = np.empty(0, dtype=np.intp)
    # Greedy NMS one block of candidates at a time: a block is first checked against every box
    # kept so far in one vectorised step, then resolved inside itself with a small matrix. This
    # is exactly the sequential greedy result at a fraction of its per-box numpy overhead.
    for start in range(0, len(order), _NMS_BLOCK):
        block = slice(start, min(start + _NMS_BLOCK, len(order)))
        inside = ranked.overlaps(block, block, iou_threshold)
        alive = np.ones(inside.shape[1], dtype=np.bool_)
        if len(kept):
            alive &= ~ranked.overlaps(kept, block, iou_threshold).any(axis=0)
        survivors = np.asarray(_greedy_scan(alive, inside), dtype=np.intp)
        kept = np.concatenate((kept, survivors + start))
        if len(kept) >= max_detections:
            break
    return order[kept[:max_detections]]


@dataclass(frozen=True, slots=True)
class _Ranked:
    """Candidate boxes in score order, as float64 columns, shifted apart by class."""

    x1: npt.NDArray[np.float64]
    y1: npt.NDArray[np.float64]
    x2: npt.NDArray[np.float64]
    y2: npt.NDArray[np.float64]
    area: npt.NDArray[np.float64]

    @classmethod
    def of(cls, boxes: npt.NDArray[np.floating], classes: npt.NDArray[np.integer]) -> _Ranked:
        """Build the columns; float64 keeps a threshold edge decided the same on every machine."""
        coords = boxes.astype(np.float64)
        width = np.maximum(coords[:, 2] - coords[:, 0], 0.0)
        height = np.maximum(coords[:, 3] - coords[:, 1], 0.0)
        # Moving each class to its own region of the plane makes boxes of different classes
        # disjoint, so one overlap test serves every class (the torchvision batched-NMS trick).
        span = float(np.abs(coords).max(initial=0.0)) * 2.0 + 1.0
        shift = classes.astype(np.float64) * span
        x1, x2 = coords[:, 0] + shift, coords[:, 2] + shift
        return cls(x1, coords[:, 1].copy(), x2, coords[:, 3].copy(), width * height)

    def overlaps(
        self, rows: npt.NDArray[np.intp] | slice, cols: slice, iou_threshold: float
    ) -> npt.NDArray[np.bool_]:
        """Which pairs ``(rows[i], cols[j])`` overlap by an IoU above the threshold."""
        inter = np.minimum.outer(self.x2[rows], self.x2[cols])
        inter -= np.maximum.outer(self.x1[rows], self.x1[cols])
        np.maximum(inter, 0.0, out=inter)
        height = np.minimum.outer(self.y2[rows], self.y2[cols])
        height -= np.maximum.outer(self.y1[rows], self.y1[cols])
        np.maximum(height, 0.0, out=height)
        inter *= height
        union = np.add.outer(self.area[rows], self.area[cols])
        union -= inter
        union *= iou_threshold
        # inter / union > t without the division, so empty boxes (union 0) suppress nothing.
        over: npt.NDArray[np.bool_] = inter > union
        return over


def _greedy_scan(alive: npt.NDArray[np.bool_], over: npt.NDArray[np.bool_]) -> list[int]:
    """Sequential greedy NMS over a block, given which pairs overlap too much.

    Args:
        alive: Which candidates of the block no earlier kept box suppresses.
        over: ``over[i, j]``: candidate ``i`` would suppress candidate ``j``.

    Returns:
        Positions in the block of the candidates kept, in order.
    """
    alive = alive.copy()
    spared = ~over
    survivors: list[int] = []
    for i in np.flatnonzero(alive).tolist():
        if alive[i]:
            survivors.append(i)
            alive[i + 1 :] &= spared[i, i + 1 :]
    return survivors


def postprocess(
    output: npt.NDArray[np.floating],
    layout: OutputLayout,
    *,
    conf_threshold: float,
    iou_threshold: float,
    max_detections: int,
) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Decode a YOLO output and suppress duplicates.

    Args:
        output: The raw model output.
        layout: The layout of ``output``.
        conf_threshold: Minimum best-class score (exclusive).
        iou_threshold: Class-wise NMS IoU threshold.
        max_detections: Maximum number of detections returned.

    Returns:
        ``(class_ids, scores, boxes)``, highest score first, boxes ``x1, y1, x2, y2`` in input
        pixels, as contiguous uint16, float32 and ``N x 4`` float32 arrays.

    Raises:
        ModelOutputError: ``output`` does not have the shape of ``layout``.
    """
    class_ids, scores, boxes = decode(output, layout, conf_threshold=conf_threshold)
    kept = nms(
        boxes, scores, class_ids, iou_threshold=iou_threshold, max_detections=max_detections
    )
    return (
        class_ids[kept].astype(np.uint16),
        np.ascontiguousarray(scores[kept]),
        np.ascontiguousarray(boxes[kept]),
    )


def _checked(
    channels: int | None, channels_first: bool, shape: Sequence[Dim], num_classes: int | None
) -> OutputLayout:
    """Build a layout after checking that it leaves room for at least one class."""
    if channels is None or channels < _MIN_CHANNELS:
        raise ModelOutputError(_layout_message(shape, num_classes))
    return OutputLayout(num_classes=channels - 4, channels_first=channels_first)


def _layout_message(shape: Sequence[Dim], num_classes: int | None) -> str:
    """Say what output shape was expected and which one the model has."""
    channels = "4+classes" if num_classes is None else f"{4 + num_classes} (4+{num_classes})"
    return (
        f"expected a detection output of shape [1, {channels}, N] or [1, N, {channels}] with "
        f"at least one class (a YOLOv8/YOLO11 export with nms=False), got {list(shape)}"
    )
