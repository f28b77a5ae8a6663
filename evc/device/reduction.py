"""Traffic reduction at the source: publish a frame only when what the camera sees changed.

A frame is compared with the last frame that was *published* (not merely the previous one), so
slow drift still gets reported once it adds up. Detections match when they have the same class
and overlap by at least ``iou_threshold``; a frame whose detections all match one-to-one is
suppressed. A keyframe is published every ``keyframe_interval_s`` whatever happens, so the
fog and the cloud know the scene is still as last reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from evc.config import PublishMode

__all__ = ["ChangeFilter", "PublishMode", "ReductionCounts", "pairwise_iou"]


@dataclass(slots=True)
class ReductionCounts:
    """What the filter decided, since the device started."""

    published: int = 0
    suppressed: int = 0
    keyframes: int = 0


class ChangeFilter:
    """Decides, frame by frame, whether detections are worth publishing.

    Args:
        mode: publish every frame, or only frames that changed (plus keyframes).
        iou_threshold: same-class boxes overlapping at least this much are "the same object".
        keyframe_interval_s: publish at least this often even if nothing changed; 0 disables.
    """

    def __init__(
        self,
        *,
        mode: PublishMode = PublishMode.EVERY_FRAME,
        iou_threshold: float = 0.7,
        keyframe_interval_s: float = 10.0,
    ) -> None:
        if not 0.0 < iou_threshold <= 1.0:
            raise ValueError("iou_threshold must be in (0, 1]")
        self.mode = mode
        self.iou_threshold = iou_threshold
        self.keyframe_interval_s = keyframe_interval_s
        self.counts = ReductionCounts()
        self._last_classes: npt.NDArray[np.int64] | None = None
        self._last_boxes: npt.NDArray[np.float32] | None = None
        self._last_published_s = -np.inf

    def should_publish(
        self, class_ids: npt.ArrayLike, boxes: npt.ArrayLike, *, now_s: float
    ) -> bool:
        """Return True if this frame must be published, and remember it if so."""
        classes = np.asarray(class_ids, dtype=np.int64)
        box_arr = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        keyframe = (
            self.keyframe_interval_s > 0
            and now_s - self._last_published_s >= self.keyframe_interval_s
        )
        if self.mode is PublishMode.EVERY_FRAME or keyframe or self._changed(classes, box_arr):
            self.counts.published += 1
            self.counts.keyframes += int(keyframe and self.mode is PublishMode.ON_CHANGE)
            self._last_classes, self._last_boxes = classes, box_arr
            self._last_published_s = now_s
            return True
        self.counts.suppressed += 1
        return False

    def _changed(self, classes: npt.NDArray[np.int64], boxes: npt.NDArray[np.float32]) -> bool:
        if self._last_classes is None or self._last_boxes is None:
            return True
        if len(classes) != len(self._last_classes):
            return True
        if not np.array_equal(np.sort(classes), np.sort(self._last_classes)):
            return True
        return not _all_matched(classes, boxes, self._last_classes, self._last_boxes,
                                self.iou_threshold)


def pairwise_iou(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """IoU of every box in ``a`` with every box in ``b`` (both x1, y1, x2, y2)."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0).astype(np.float32)


def _all_matched(
    classes: npt.NDArray[np.int64],
    boxes: npt.NDArray[np.float32],
    last_classes: npt.NDArray[np.int64],
    last_boxes: npt.NDArray[np.float32],
    threshold: float,
) -> bool:
    """Greedy one-to-one matching, per class, best overlap first."""
    iou = pairwise_iou(boxes, last_boxes)
    iou[classes[:, None] != last_classes[None, :]] = 0.0
    for _ in range(len(classes)):
        row, col = np.unravel_index(int(np.argmax(iou)), iou.shape)
        if iou[row, col] < threshold:
            return False
        iou[row, :] = 0.0
        iou[:, col] = 0.0
    return True
