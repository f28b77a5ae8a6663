"""The pipeline: operators run in order over each detections frame, every outcome counted.

SAMPLE records (devices' hard examples) go through the pipeline's sample operators only
(:meth:`Pipeline.run_sample`); detections frames go through all the others.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

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
from evc.gateway.pipeline.sample import SampleOperator, SampleRecord
from evc.wire import Envelope, EventType

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
        self._frame_operators = [op for op in operators if not isinstance(op, SampleOperator)]
        self._sample_operators = [op for op in operators if isinstance(op, SampleOperator)]
        self._listener = listener

    def __len__(self) -> int:
        return len(self.operators)

    def __call__(self, frame: Frame) -> Frame | None:
        """Run every operator; return the resulting frame, or None if one dropped it."""
        return self.run(frame).frame

    def run(self, frame: Frame) -> PipelineResult:
        """Run every operator; return the frame to forward (if any), its events and alerts."""
        for operator in self._frame_operators:
            before = len(frame)
            try:
                result = operator(frame)
            except Drop as drop:
                self._record(operator.name, "dropped", drop.reason, before)
                self._count_events(operator.name, frame, drop.frame)
                self._count_alerts(operator.name, frame, drop.frame)
                # Not `drop.frame or frame`: a frame with no detections is falsy (__len__).
                kept = frame if drop.frame is None else drop.frame
                return PipelineResult(
                    None, kept.encode_events(), kept.encode_alerts(), summaries=kept.summaries
                )
            except Exception as exc:  # a faulty operator must not stall the intake
                log.exception("pipeline operator %s failed; frame passed on", operator.name)
                self._record(operator.name, "error", type(exc).__name__, 0)
                continue
            removed = before - len(result)
            if result.withheld and not frame.withheld:
                self._record(operator.name, "dropped", result.withheld, 0)
            # Attaching events alone is not a change to the detections.
            elif result is frame or (removed == 0 and result.boxes is frame.boxes):
                self._record(operator.name, "passed", "", 0)
            else:
                self._record(operator.name, "changed", operator.reason, removed)
            self._count_events(operator.name, frame, result)
            self._count_alerts(operator.name, frame, result)
            frame = result
        return PipelineResult(
            None if frame.withheld else frame, frame.encode_events(), frame.encode_alerts(),
            summaries=frame.summaries,
        )

    def run_sample(self, envelope: Envelope, size_bytes: int) -> bool:
        """Run the sample operators over one validated SAMPLE record; return whether it passes.

        Each outcome is reported like a frame's: ``passed``, or ``dropped`` with the reason;
        an operator that fails otherwise is logged, counted as ``error`` and skipped.
        """
        if not self._sample_operators:
            return True
        record = SampleRecord.from_envelope(envelope, size_bytes)
        for operator in self._sample_operators:
            try:
                operator.admit_sample(record)
            except Drop as drop:
                self._record(operator.name, "dropped", drop.reason, 0)
                return False
            except Exception as exc:  # a faulty operator must not stall the intake
                log.exception("sample operator %s failed; sample passed on", operator.name)
                self._record(operator.name, "error", type(exc).__name__, 0)
                continue
            self._record(operator.name, "passed", "", 0)
        return True

    def flush(self, now_ms: int | None = None) -> list[bytes]:
        """Records that operators with a ``flush(now_ms)`` method close (None: close all)."""
        records: list[bytes] = []
        for operator in self.operators:
            flush = getattr(operator, "flush", None)
            if callable(flush):
                records.extend(flush(now_ms))
        return records

    def snapshot(self) -> dict[str, bytes]:
        """The state of each stateful operator (one with ``snapshot()``), by storage key."""
        return {
            _state_key(op): op.snapshot()  # type: ignore[attr-defined]
            for op in self.operators if callable(getattr(op, "snapshot", None))
        }

    def restore(self, load: Callable[[str], bytes | None]) -> None:
        """Give each stateful operator the state ``load`` returns for its key, if any."""
        for operator in self.operators:
            restore = getattr(operator, "restore", None)
            data = load(_state_key(operator)) if callable(restore) else None
            if restore is not None and data is not None:
                restore(data)

    def _count_alerts(self, operator: str, before: Frame, after: Frame | None) -> None:
        # Operators append to a frame's alerts: the new ones are those past the old length.
        if self._listener is None or after is None:
            return
        for alert in after.alerts[len(before.alerts):]:
            self._listener.record_alert(operator, alert.rule)

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


def _state_key(operator: Operator[OperatorConfig]) -> str:
    """Where an operator's snapshot is stored: its type and its (unique) name."""
    return f"pipeline/{getattr(operator.config, 'type', '')}/{operator.name}"
