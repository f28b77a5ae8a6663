"""The pipeline: operators run in order over each detections frame, every outcome counted."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from evc.gateway.pipeline.base import (
    Drop,
    Frame,
    Operator,
    OperatorConfig,
    Outcome,
    PipelineListener,
)

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
        for operator in self.operators:
            before = len(frame)
            try:
                result = operator(frame)
            except Drop as drop:
                self._record(operator.name, "dropped", drop.reason, before)
                return None
            except Exception as exc:  # a faulty operator must not stall the intake
                log.exception("pipeline operator %s failed; frame passed on", operator.name)
                self._record(operator.name, "error", type(exc).__name__, 0)
                continue
            removed = before - len(result)
            if result is frame:
                self._record(operator.name, "passed", "", 0)
            else:
                self._record(operator.name, "changed", operator.reason, removed)
            frame = result
        return frame

    def _record(self, operator: str, outcome: Outcome, reason: str, removed: int) -> None:
        if self._listener is not None:
            self._listener.record(operator, outcome, reason, removed)
