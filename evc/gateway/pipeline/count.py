"""``min_detections``: drop frames left with too few detections (e.g. emptied by a filter)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from evc.gateway.pipeline.base import Drop, Frame, Operator, OperatorConfig


class MinDetectionsConfig(OperatorConfig):
    """Drop a frame with fewer than ``count`` detections."""

    type: Literal["min_detections"] = Field(description="Selects this operator.")
    count: int = Field(1, ge=1, le=4096, description="Frames with fewer detections are dropped.")


class MinDetections(Operator[MinDetectionsConfig]):
    """Drops frames below a detection count, with reason ``too_few_detections``."""

    def __call__(self, frame: Frame) -> Frame:
        if len(frame) < self.config.count:
            raise Drop("too_few_detections")
        return frame
