"""Hard-example sampling: which frames a device uploads for the learning loop.

A few frames a minute are worth more to the next model than thousands of easy ones: those where
the model was unsure (a score near the threshold), saw too little or too much, saw a rare class,
plus a small random share that keeps the picture honest. Samplers are tried in the configured
order and the first that picks a frame names the sample's ``reason``.

Uploads are bounded per device by two token buckets (per minute and per hour): a camera staring
at a hard scene must not flood the fog box. Hard examples over budget are counted (``budget``)
and not sent. The budget lives in memory; a restarted device starts with full buckets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from evc.config import (
    ClassesSampler,
    FewSampler,
    ManySampler,
    NearThresholdSampler,
    RandomSampler,
    SamplerConfig,
    SamplingConfig,
)
from evc.errors import FrameError
from evc.wire.samples import Region, Sample, Scalar, crops, whole_frame

__all__ = ["HardExampleSampler", "Predictions", "SampleBudget", "Truth"]

# Ground truth of a frame, when it is known (synthetic scenes): class ids and x1, y1, x2, y2 boxes.
Truth = tuple[npt.ArrayLike, npt.ArrayLike]
Rule = Callable[["Predictions"], bool]


class Predictions(Protocol):
    """What a sampler looks at: one frame's detections (``evc.inference.Detections``)."""

    @property
    def class_ids(self) -> npt.NDArray[Any]: ...
    @property
    def scores(self) -> npt.NDArray[Any]: ...
    @property
    def boxes(self) -> npt.NDArray[Any]: ...
    @property
    def width(self) -> int: ...
    @property
    def height(self) -> int: ...


@dataclass(slots=True)
class _Bucket:
    """Whole tokens for ``capacity`` samples per ``period_s``, refilled continuously."""

    capacity: int
    period_s: float
    tokens: float
    at_s: float | None = None

    def refill(self, now_s: float) -> None:
        if self.at_s is not None and now_s > self.at_s:
            rate = self.capacity / self.period_s
            self.tokens = min(float(self.capacity), self.tokens + (now_s - self.at_s) * rate)
        # A clock that steps back must not refill, nor freeze refills until it catches up.
        self.at_s = now_s


class SampleBudget:
    """At most ``per_minute`` samples a minute and ``per_hour`` an hour (two token buckets).

    Both buckets start full, so a burst of ``per_minute`` goes at once after a quiet spell.
    """

    def __init__(self, *, per_minute: int, per_hour: int) -> None:
        self._buckets = (
            _Bucket(per_minute, 60.0, float(per_minute)),
            _Bucket(per_hour, 3600.0, float(per_hour)),
        )

    def take(self, now_s: float) -> bool:
        """Spend one sample of both buckets if both have one; return whether it was spent."""
        for bucket in self._buckets:
            bucket.refill(now_s)
        # Rounding must not keep a bucket a hair short of a token for a whole refill period.
        if any(bucket.tokens < 1.0 - 1e-9 for bucket in self._buckets):
            return False
        for bucket in self._buckets:
            bucket.tokens = max(0.0, bucket.tokens - 1.0)
        return True


class HardExampleSampler:
    """Decides, frame by frame, whether a frame is a hard example, and builds its sample.

    Args:
        config: the samplers, what to upload and the budget.
        rng: random source of the ``random`` sampler; seed it for reproducible tests.

    Attributes:
        sampled: samples handed out, by sampler reason.
        skipped: hard examples not handed out, by reason (``budget``; ``no_pixels`` when
            crops were asked for and there was no box to crop; ``too_large`` when the device
            refused to publish one, see :meth:`refuse`).
    """

    def __init__(self, config: SamplingConfig, *, rng: np.random.Generator | None = None) -> None:
        self.config = config
        self.sampled: Counter[str] = Counter()
        self.skipped: Counter[str] = Counter()
        self._rng = rng or np.random.default_rng()
        self._rules = [(sampler.type, self._rule(sampler)) for sampler in config.samplers]
        self._budget = SampleBudget(per_minute=config.max_per_minute, per_hour=config.max_per_hour)

    def reason(self, detections: Predictions) -> str | None:
        """The reason of the first sampler that picks this frame, or None."""
        for name, rule in self._rules:
            if rule(detections):
                return name
        return None

    def consider(
        self,
        detections: Predictions,
        image: npt.NDArray[np.uint8],
        *,
        now_s: float,
        truth: Truth | None = None,
        model_version: str = "unknown",
        meta: Mapping[str, Scalar] | None = None,
    ) -> Sample | None:
        """Offer one frame; return its sample if it is a hard example within the budget.

        Args:
            detections: what the model predicted on ``image``.
            image: the frame the model saw, ``height x width x 3`` uint8 RGB.
            now_s: monotonic seconds, for the budget.
            truth: the frame's ground truth, when known (synthetic scenes).
            model_version: the version of the model that predicted ``detections``.
            meta: scalars stored with the sample (e.g. where ``truth`` came from).

        Raises:
            FrameError: ``image`` is not the ``height x width x 3`` uint8 frame of
                ``detections``.
        """
        if not self.config.enabled:
            return None
        reason = self.reason(detections)
        if reason is None:
            return None
        _check_image(image, detections)
        regions = self._regions(image, detections, truth)
        if not regions:
            self.skipped["no_pixels"] += 1
            return None
        if not self._budget.take(now_s):
            self.skipped["budget"] += 1
            return None
        self.sampled[reason] += 1
        return _sample(
            detections, regions, reason, truth=truth, model_version=model_version, meta=meta
        )

    def refuse(self, reason: str) -> None:
        """Count a sample handed out that its device could not send (e.g. ``too_large``)."""
        self.skipped[reason] += 1

    def _regions(
        self, image: npt.NDArray[np.uint8], detections: Predictions, truth: Truth | None
    ) -> tuple[Region, ...]:
        # A copy: cameras often reuse their frame buffer while the sample is still queued.
        image = np.array(image, dtype=np.uint8, copy=True)
        if self.config.content == "frame":
            return whole_frame(image)
        boxes = np.asarray(detections.boxes, dtype=np.float32).reshape(-1, 4)
        if truth is not None:
            # The objects the model missed are the hard part: crop them too.
            boxes = np.concatenate([boxes, np.asarray(truth[1], np.float32).reshape(-1, 4)])
        return crops(image, boxes, margin=self.config.crop_margin)

    def _rule(self, sampler: SamplerConfig) -> Rule:
        if isinstance(sampler, NearThresholdSampler):
            low, high = sampler.low, sampler.high
            return lambda d: bool(np.any((d.scores >= low) & (d.scores <= high)))
        if isinstance(sampler, FewSampler):
            return lambda d: len(d.scores) < sampler.count
        if isinstance(sampler, ManySampler):
            return lambda d: len(d.scores) > sampler.count
        if isinstance(sampler, ClassesSampler):
            wanted = np.asarray(sampler.class_ids, dtype=np.int64)
            return lambda d: bool(np.isin(np.asarray(d.class_ids, np.int64), wanted).any())
        if isinstance(sampler, RandomSampler):
            return lambda _d: bool(self._rng.random() < sampler.probability)
        raise TypeError(f"unknown sampler {type(sampler).__name__}")


def _check_image(image: npt.NDArray[np.uint8], detections: Predictions) -> None:
    expected = (detections.height, detections.width, 3)
    if image.dtype != np.uint8 or tuple(image.shape) != expected:
        raise FrameError(
            f"a sample's image must be {expected} uint8, got {image.shape} {image.dtype}"
        )


def _sample(
    detections: Predictions,
    regions: tuple[Region, ...],
    reason: str,
    *,
    truth: Truth | None,
    model_version: str,
    meta: Mapping[str, Scalar] | None,
) -> Sample:
    truth_classes = truth_boxes = None
    if truth is not None:
        truth_classes = np.asarray(truth[0]).astype(np.uint16)
        truth_boxes = np.asarray(truth[1], dtype=np.float32).reshape(-1, 4)
    return Sample(
        model_version=model_version, reason=reason,
        width=detections.width, height=detections.height, regions=regions,
        class_ids=np.asarray(detections.class_ids).astype(np.uint16),
        scores=np.asarray(detections.scores, dtype=np.float32),
        boxes=np.asarray(detections.boxes, dtype=np.float32).reshape(-1, 4),
        truth_class_ids=truth_classes, truth_boxes=truth_boxes, meta=dict(meta or {}),
    )
