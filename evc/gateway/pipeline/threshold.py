"""``threshold``: minimum confidence per class, and class allow / deny lists."""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from evc.gateway.pipeline.base import (
    CLASS_IDS,
    ClassRef,
    Frame,
    Operator,
    OperatorConfig,
    resolve_class,
)


class ThresholdConfig(OperatorConfig):
    """Remove detections below a confidence, or of classes not allowed.

    Classes are named by id (``3``) or by name (``person``) when ``class_names`` is given.
    """

    type: Literal["threshold"] = Field(description="Selects this operator.")
    default: float = Field(0.0, ge=0, le=1, description="Minimum score of classes not listed.")
    min_score: dict[ClassRef, float] = Field(
        default_factory=dict, description="Minimum score per class name or id."
    )
    allow: list[ClassRef] | None = Field(
        None, description="Keep only these classes; null keeps every class."
    )
    deny: list[ClassRef] = Field(default_factory=list, description="Always remove these classes.")
    class_names: list[str] = Field(
        default_factory=list, description="Class names by id, to name classes instead of ids."
    )

    @model_validator(mode="after")
    def _known_classes(self) -> ThresholdConfig:
        for ref in [*self.min_score, *(self.allow or []), *self.deny]:
            self.class_id(ref)
        if any(not 0 <= score <= 1 for score in self.min_score.values()):
            raise ValueError("min_score values must be in 0..1")
        return self

    def class_id(self, ref: ClassRef) -> int:
        """The class id ``ref`` names (see :func:`resolve_class`)."""
        return resolve_class(ref, self.class_names)


class Threshold(Operator[ThresholdConfig]):
    """Looks every detection's minimum score and permission up in per-class tables."""

    reason = "threshold"

    def __init__(self, config: ThresholdConfig) -> None:
        super().__init__(config)
        self._min = np.full(CLASS_IDS, config.default, dtype=np.float32)
        for ref, score in config.min_score.items():
            self._min[config.class_id(ref)] = score
        self._allowed = np.full(CLASS_IDS, config.allow is None)
        self._allowed[[config.class_id(ref) for ref in config.allow or []]] = True
        self._allowed[[config.class_id(ref) for ref in config.deny]] = False

    def __call__(self, frame: Frame) -> Frame:
        ids = frame.class_ids
        return frame.select((frame.scores >= self._min[ids]) & self._allowed[ids])
