"""The pipeline: operators run in order over each detections frame, every outcome counted."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from evc.gateway.pipeline.base import (
    Drop,
    Frame,
    Operator,
    OperatorConfig,
    Outcome,
    PipelineListener,
    PipelineResult,
)
from evc.wire import EventType

log = logging.getLogger(__name__)


class Pipeline:
    """An ordered list of operators.

    Each operator's outcome is reported to ``listener``: ``passed`` (untouched), ``changed``
    (detections removed), ``dropped`` (the frame discarded, with the operator's reason), or
    ``error``: an operator that raises anything but :class:`Drop` is logged and skipped for that
    frame, so a faulty (user) operator never blocks intake nor loses data.
    """

    def __init__(
        self, operators: Sequence[Operator[OperatorConfig]], *,
        listener: PipelineListener | None = None,
    ) -> None:
        names = [op.name for op in operators]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"operator names must be unique, repeated: {duplicates}")
        self.operators = list(operators)
        self._listener = listener

    def __len__(self) -> int:
        return len(self.operators)

    def __call__(self, frame: Frame) -> Frame | None:
        """Run every operator; return the resulting frame, or None if one dropped it."""
        return self.run(frame).frame

    def run(self, frame: Frame) -> PipelineResult:
        """Run every operator; return the frame to forward (if any) and the frame's events."""
        for operator in self.operators:
            before = len(frame)
            try:
                result = operator(frame)
            except Drop as drop:
                self._record(operator.name, "dropped", drop.reason, before)
                self._count_events(operator.name, frame, drop.frame)
                return PipelineResult(None, (drop.frame or frame).encode_events())
            except Exception as exc:  # a faulty operator must not stall the intake
                log.exception("pipeline operator %s failed; frame passed on", operator.name)
                self._record(operator.name, "error", type(exc).__name__, 0)
                continue
            removed = before - len(result)
            # Attaching events alone is not a change to the detections.
            if result is frame or (removed == 0 and result.boxes is frame.boxes):
                self._record(operator.name, "passed", "", 0)
            else:
                self._record(operator.name, "changed", operator.reason, removed)
            self._count_events(operator.name, frame, result)
            frame = result
        return PipelineResult(frame, frame.encode_events())

    def _count_events(self, operator: str, before: Frame, after: Frame | None) -> None:
        events = None if after is None else after.events
        if self._listener is None or events is None or events is before.events:
            return
        types, counts = np.unique(events.event_types, return_counts=True)
        for event_type, count in zip(types.tolist(), counts.tolist(), strict=True):
            self._listener.record_events(operator, EventType(event_type).name.lower(), count)

    def _record(self, operator: str, outcome: Outcome, reason: str, removed: int) -> None:
        if self._listener is not None:
            self._listener.record(operator, outcome, reason, removed)
