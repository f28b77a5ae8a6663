"""Labellers: where a hard example's labels come from.

A :class:`Labeller` turns an :class:`~evc.cloud.dataset.Item` into :class:`Labels` (class ids and
x1, y1, x2, y2 boxes in frame pixels), or None when it cannot. Two ship here, each named for
what it really is, and the name travels with every label it makes (``Labels.source``):

* :class:`SyntheticTruthLabeller` (``synthetic-truth``): labels come from the synthetic scene's
  ground truth carried in the sample, not from a person or a model. For demos and tests.
* :class:`PredictionLabeller` (``predictions``): pseudo-labels, the device's own predictions
  above a score. Not ground truth: a model trained on them learns its own mistakes back.

Real cameras need people: export with :mod:`evc.cloud.export` and label in your own tool.

For a sample that carries crops rather than the whole frame, a labeller only keeps the boxes
that fall inside a crop (enough of the box, ``min_visible`` of its area), clipped to that crop,
because the rest of the pasted frame is black and nothing there can be seen.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from evc.cloud.dataset import Item, Labels
from evc.wire import Region


class Labeller(Protocol):
    """Anything that can label a hard example."""

    @property
    def name(self) -> str:
        """What the labels are, plainly (it is stored with every label as its source)."""
        ...

    def label(self, item: Item) -> Labels | None:
        """Labels of ``item`` in frame pixels, or None when this labeller cannot label it."""
        ...


def clip_to_regions(
    class_ids: npt.ArrayLike,
    boxes: npt.ArrayLike,
    regions: tuple[Region, ...],
    *,
    min_visible: float = 0.5,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """The boxes that fall inside one of ``regions``, clipped to it.

    A box is kept when its overlap with one region covers at least ``min_visible`` of its
    area; it is clipped to the region it overlaps most.

    Args:
        class_ids: ``[n]`` classes of the boxes.
        boxes: ``[n, 4]`` x1, y1, x2, y2 frame pixels.
        regions: the sample's regions (their ``box`` is x1, y1, x2, y2 with x2/y2 exclusive).
        min_visible: the fraction of a box's area that must lie in the region.
    """
    classes = np.asarray(class_ids, dtype=np.int64).reshape(-1)
    source = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    kept_classes, kept_boxes = [], []
    for cls, box in zip(classes, source, strict=True):
        area = float(max(box[2] - box[0], 0.0) * max(box[3] - box[1], 0.0))
        best, best_overlap = None, 0.0
        for region in regions:
            clipped = _clip(box, region.box)
            overlap = float((clipped[2] - clipped[0]) * (clipped[3] - clipped[1]))
            if overlap > best_overlap:
                best, best_overlap = clipped, overlap
        if best is not None and area > 0 and best_overlap >= min_visible * area:
            kept_classes.append(int(cls))
            kept_boxes.append(best)
    return (
        np.asarray(kept_classes, dtype=np.int64),
        np.asarray(kept_boxes, dtype=np.float32).reshape(-1, 4),
    )


def _clip(box: npt.NDArray[np.float32], region: tuple[int, int, int, int]) -> list[float]:
    """``box`` clipped to ``region`` (degenerate, zero-area, when they do not overlap)."""
    x1, y1 = max(float(box[0]), region[0]), max(float(box[1]), region[1])
    x2, y2 = min(float(box[2]), region[2]), min(float(box[3]), region[3])
    return [x1, y1, max(x2, x1), max(y2, y1)]


def _in_view(
    item: Item, class_ids: npt.ArrayLike, boxes: npt.ArrayLike, min_visible: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """All boxes of a whole-frame sample; only those inside its crops for a cropped one."""
    if item.whole_frame:
        return (
            np.asarray(class_ids, dtype=np.int64).reshape(-1),
            np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        )
    return clip_to_regions(class_ids, boxes, item.sample.regions, min_visible=min_visible)


class SyntheticTruthLabeller:
    """Labels from the synthetic scene's ground truth, not from a person or a model.

    Only a synthetic camera knows the truth and attaches it to its samples; a sample without
    it (every real camera's) gets None.
    """

    name = "synthetic-truth"

    def __init__(self, *, min_visible: float = 0.5) -> None:
        self.min_visible = min_visible

    def label(self, item: Item) -> Labels | None:
        """The scene's true boxes of ``item`` (those in its crops, for a cropped sample)."""
        sample = item.sample
        if sample.truth_class_ids is None or sample.truth_boxes is None:
            return None
        classes, boxes = _in_view(item, sample.truth_class_ids, sample.truth_boxes,
                                  self.min_visible)
        return Labels(classes, boxes, self.name)


class PredictionLabeller:
    """Pseudo-labels: the device's own predictions scoring at least ``min_score``.

    These are a model's guesses, not ground truth; use them to bootstrap or to pre-fill a
    person's labelling, and expect a model trained on them to repeat their errors.
    """

    name = "predictions"

    def __init__(self, *, min_score: float = 0.5, min_visible: float = 0.5) -> None:
        self.min_score = min_score
        self.min_visible = min_visible

    def label(self, item: Item) -> Labels:
        """The predictions of ``item`` at or above ``min_score`` (possibly none)."""
        sample = item.sample
        keep = np.asarray(sample.scores) >= self.min_score
        classes, boxes = _in_view(
            item, sample.class_ids[keep], sample.boxes.reshape(-1, 4)[keep], self.min_visible
        )
        return Labels(classes, boxes, self.name)


LABELLERS = {
    SyntheticTruthLabeller.name: SyntheticTruthLabeller,
    PredictionLabeller.name: PredictionLabeller,
}
"""Labellers by name, as the command line selects them."""
