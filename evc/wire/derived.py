"""Records a fog gateway derives from many frames: windowed summaries and alerts.

Both are envelopes of the wire codec (:mod:`evc.wire.codec`) with their own kind and a columnar or
compact body; ``docs/PROTOCOL.md`` describes every field. Importing this module registers their
body checks with :func:`evc.wire.codec.validate_record`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from evc.errors import SchemaError
from evc.wire.codec import (
    BOX_SCALE,
    MAX_DETECTIONS_PER_FRAME,
    MAX_INT64,
    SCORE_SCALE,
    Envelope,
    Kind,
    encode,
    register_body_check,
)

# -- windowed summaries ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SummaryFrame:
    """Per-class statistics of one device's frames over one time window, as numpy columns.

    ``frames`` frames fell in ``[window_start_ms, window_start_ms + window_ms)``. Per class:
    how many detections (``counts``), their min / max / mean score, and ``occupancy``, the
    fraction of the window's frames in which the class was present. Scores and occupancy travel
    as uint8 /255.
    """

    model_version: str
    window_start_ms: int
    window_ms: int
    frames: int
    class_ids: npt.NDArray[np.uint16]
    counts: npt.NDArray[np.uint32]
    min_scores: npt.NDArray[np.float32]
    max_scores: npt.NDArray[np.float32]
    mean_scores: npt.NDArray[np.float32]
    occupancy: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.class_ids)


def _unit_bytes(values: npt.ArrayLike) -> bytes:
    """A column of fractions in 0..1 as uint8 /255."""
    clipped = np.clip(np.asarray(values, np.float32), 0.0, 1.0)
    return bytes(np.rint(clipped * SCORE_SCALE).astype("<u1").tobytes())


def encode_summary(
    *, origin: str, epoch: int, seq: int, ts_ms: int, summary: SummaryFrame
) -> bytes:
    """Encode one window's summary under the key of the window's first frame.

    Raises:
        SchemaError: columns of different lengths, class ids outside 0..65535, or counts,
            frames or window fields outside their ranges.
    """
    classes = np.asarray(summary.class_ids, dtype=np.int64).reshape(-1)
    counts = np.asarray(summary.counts, dtype=np.int64).reshape(-1)
    n = len(classes)
    columns = (summary.min_scores, summary.max_scores, summary.mean_scores, summary.occupancy)
    if len(counts) != n or any(np.asarray(c).size != n for c in columns):
        raise SchemaError("summary columns must have one length")
    if n > MAX_DETECTIONS_PER_FRAME:
        raise SchemaError(f"{n} classes exceed the limit of {MAX_DETECTIONS_PER_FRAME}")
    if n and (int(classes.min()) < 0 or int(classes.max()) > 65535):
        raise SchemaError("class ids must be in 0..65535")
    if n and (int(counts.min()) < 0 or int(counts.max()) > 2**32 - 1):
        raise SchemaError("counts must be in 0..2**32-1")
    for name, value in (("window_start_ms", summary.window_start_ms),
                        ("window_ms", summary.window_ms), ("frames", summary.frames)):
        if not 0 <= value <= MAX_INT64:
            raise SchemaError(f"{name} must be an integer in 0..2**63-1")
    body = [
        summary.model_version, int(summary.window_start_ms), int(summary.window_ms),
        int(summary.frames), classes.astype("<u2").tobytes(), counts.astype("<u4").tobytes(),
        *(_unit_bytes(c) for c in columns),
    ]
    return encode(Kind.SUMMARY, origin=origin, epoch=epoch, seq=seq, ts_ms=ts_ms, body=body)


def summaries_from(envelope: Envelope) -> SummaryFrame:
    """Validate and unpack the body of a SUMMARY envelope.

    Raises:
        SchemaError: not a SUMMARY envelope, or its body is not of the documented shape.
    """
    body = envelope.body
    if envelope.kind is not Kind.SUMMARY:
        raise SchemaError(f"expected a summary message, got {envelope.kind.name}")
    if not isinstance(body, list) or len(body) != 10:
        raise SchemaError("summary body must be an array of 10 fields")
    model_version, start, window, frames, classes, counts, *units = body
    if not isinstance(model_version, str):
        raise SchemaError("model_version must be a string")
    for name, value in (("window_start_ms", start), ("window_ms", window), ("frames", frames)):
        if type(value) is not int or not 0 <= value <= MAX_INT64:
            raise SchemaError(f"{name} must be an integer in 0..2**63-1")
    if not all(type(c) is bytes for c in (classes, counts, *units)):
        raise SchemaError("summary columns must be bin fields")
    n = len(classes) // 2
    if len(classes) != 2 * n or len(counts) != 4 * n or any(len(u) != n for u in units):
        raise SchemaError("summary columns disagree on the number of classes")
    low, high, mean, occupancy = (
        np.frombuffer(u, dtype="<u1").astype(np.float32) / SCORE_SCALE for u in units
    )
    return SummaryFrame(
        model_version=model_version, window_start_ms=start, window_ms=window, frames=frames,
        class_ids=np.frombuffer(classes, dtype="<u2").astype(np.uint16),
        counts=np.frombuffer(counts, dtype="<u4").astype(np.uint32),
        min_scores=low, max_scores=high, mean_scores=mean, occupancy=occupancy,
    )


# -- alerts ------------------------------------------------------------------------------------

MAX_ALERTS_PER_RECORD = 256


@dataclass(frozen=True, slots=True)
class Alert:
    """One rule that fired on a frame: ``count`` detections of ``class_id`` (for a dwell rule,
    present in ``zone`` for ``duration_ms``) and the boxes that triggered it (``x1, y1, x2, y2``
    pixels)."""

    rule: str
    class_id: int
    count: int
    duration_ms: int
    zone: str
    boxes: npt.NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class AlertFrame:
    """The alerts raised by one video frame, in pixels of a ``width`` x ``height`` frame."""

    model_version: str
    width: int
    height: int
    alerts: tuple[Alert, ...]

    def __len__(self) -> int:
        return len(self.alerts)


def encode_alerts(
    *, origin: str, epoch: int, seq: int, ts_ms: int, model_version: str, width: int,
    height: int, alerts: Sequence[Alert],
) -> bytes:
    """Encode the alerts one frame raised, under that frame's key (one record per frame).

    Raises:
        SchemaError: no alerts or too many, a non-positive frame size, or a field out of range.
    """
    if not 1 <= len(alerts) <= MAX_ALERTS_PER_RECORD:
        raise SchemaError(f"an alert record holds 1..{MAX_ALERTS_PER_RECORD} alerts")
    if width <= 0 or height <= 0:
        raise SchemaError("frame width and height must be positive")
    scale = np.array([width, height, width, height], dtype=np.float32)
    rows = []
    for alert in alerts:
        boxes = np.asarray(alert.boxes, dtype=np.float32).reshape(-1, 4)
        quant = np.rint(np.clip(boxes / scale, 0.0, 1.0) * BOX_SCALE).astype("<u2")
        row = [alert.rule, alert.class_id, alert.count, alert.duration_ms, alert.zone,
               quant.tobytes()]
        _check_alert(row)
        rows.append(row)
    body = [model_version, width, height, rows]
    return encode(Kind.ALERT, origin=origin, epoch=epoch, seq=seq, ts_ms=ts_ms, body=body)


def alerts_from(envelope: Envelope) -> AlertFrame:
    """Validate and unpack the body of an ALERT envelope.

    Raises:
        SchemaError: not an ALERT envelope, or its body is not of the documented shape.
    """
    model_version, width, height, rows = _checked_alerts(envelope)
    scale = np.array([width, height, width, height], dtype=np.float32) / BOX_SCALE
    alerts = tuple(
        Alert(rule=rule, class_id=class_id, count=count, duration_ms=duration_ms, zone=zone,
              boxes=np.frombuffer(boxes, dtype="<u2").reshape(-1, 4).astype(np.float32) * scale)
        for rule, class_id, count, duration_ms, zone, boxes in rows
    )
    return AlertFrame(model_version=model_version, width=width, height=height, alerts=alerts)


def _checked_alerts(envelope: Envelope) -> tuple[str, int, int, list[list[Any]]]:
    """The fields of an alerts body after every type and range check."""
    body = envelope.body
    if envelope.kind is not Kind.ALERT:
        raise SchemaError(f"expected an alerts message, got {envelope.kind.name}")
    if not isinstance(body, list) or len(body) != 4:
        raise SchemaError("alerts body must be an array of 4 fields")
    model_version, width, height, rows = body
    if not isinstance(model_version, str):
        raise SchemaError("model_version must be a string")
    if type(width) is not int or type(height) is not int or width <= 0 or height <= 0:
        raise SchemaError("frame width and height must be positive integers")
    if not isinstance(rows, list) or not 1 <= len(rows) <= MAX_ALERTS_PER_RECORD:
        raise SchemaError(f"alerts must be an array of 1..{MAX_ALERTS_PER_RECORD} alerts")
    for row in rows:
        _check_alert(row)
    return model_version, width, height, rows


def _check_alert(row: Any) -> None:
    """One alert: ``[rule, class_id, count, duration_ms, zone, boxes]``."""
    if not isinstance(row, list) or len(row) != 6:
        raise SchemaError("an alert must be an array of 6 fields")
    rule, class_id, count, duration_ms, zone, boxes = row
    if not isinstance(rule, str) or not rule:
        raise SchemaError("alert rule must be a non-empty string")
    if type(class_id) is not int or not 0 <= class_id <= 65535:
        raise SchemaError("alert class id must be an integer in 0..65535")
    if type(count) is not int or not 0 <= count <= MAX_DETECTIONS_PER_FRAME:
        raise SchemaError(f"alert count must be an integer in 0..{MAX_DETECTIONS_PER_FRAME}")
    if type(duration_ms) is not int or not 0 <= duration_ms <= MAX_INT64:
        raise SchemaError("alert duration_ms must be an integer in 0..2**63-1")
    if not isinstance(zone, str):
        raise SchemaError("alert zone must be a string")
    if type(boxes) is not bytes or len(boxes) % 8 or len(boxes) > 8 * MAX_DETECTIONS_PER_FRAME:
        raise SchemaError("alert boxes must be a bin field of whole uint16 x4 boxes")


register_body_check(Kind.SUMMARY, summaries_from)
register_body_check(Kind.ALERT, _checked_alerts)
