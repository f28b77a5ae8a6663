"""``aggregate``: windowed per-class summaries per device, exact across restarts.

Each device's frames fall into windows of ``window_s`` seconds aligned on the device's clock
(``ts_ms``). Per class the window counts detections, keeps the min / max / mean score and the
fraction of frames in which the class was present (occupancy). A window closes when a frame of
that device arrives past its end, or when :meth:`Aggregate.flush` is called (the gateway does so
when it stops); it then yields one SUMMARY record under the key of its first frame, so a re-run
after redelivery produces the same key and the cloud stores it once.

Counts are exact across a crash: the windows and, per device, the last ``(epoch, seq)`` counted
are snapshotted into the outbox in the same transaction as the records of the batch
(:meth:`snapshot` / :meth:`restore`). A frame redelivered after a crash between that commit and
its ack is at or below that mark, and is not counted again.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

import msgpack
import numpy as np
from pydantic import Field

from evc.gateway.pipeline.base import Drop, Frame, Operator, OperatorConfig
from evc.wire.codec import MAX_INT64
from evc.wire.derived import SummaryFrame, encode_summary


class AggregateConfig(OperatorConfig):
    """Summarise each device's detections per class over fixed windows."""

    type: Literal["aggregate"] = Field(description="Selects this operator.")
    window_s: float = Field(
        10.0, gt=0, le=86_400, description="Length of a window, in seconds of device time.",
    )
    forward_frames: bool = Field(
        False, description="Also forward every frame; by default frames are consumed (dropped "
        "with reason aggregated) and only the summaries go upstream.",
    )


@dataclass(slots=True)
class _Window:
    """One device's open window: the key of its first frame and per-class running sums."""

    start_ms: int
    epoch: int
    seq: int
    model_version: str
    frames: int = 0
    # class id -> [count, min score, max score, score sum, frames present]
    classes: dict[int, list[float]] = field(default_factory=dict)

    def add(self, frame: Frame) -> None:
        self.frames += 1
        for cls in np.unique(frame.class_ids).tolist():
            scores = frame.scores[frame.class_ids == cls].astype(np.float64)
            row = self.classes.setdefault(int(cls), [0, 1.0, 0.0, 0.0, 0])
            row[0] += len(scores)
            row[1] = min(row[1], float(scores.min()))
            row[2] = max(row[2], float(scores.max()))
            row[3] += float(scores.sum())
            row[4] += 1

    def summary(self, window_ms: int) -> SummaryFrame:
        ids = sorted(self.classes)
        rows = np.array([self.classes[c] for c in ids], dtype=np.float64).reshape(-1, 5)
        return SummaryFrame(
            model_version=self.model_version, window_start_ms=self.start_ms,
            window_ms=window_ms, frames=self.frames,
            class_ids=np.array(ids, dtype=np.uint16),
            counts=rows[:, 0].astype(np.uint32),
            min_scores=rows[:, 1].astype(np.float32), max_scores=rows[:, 2].astype(np.float32),
            mean_scores=(rows[:, 3] / np.maximum(rows[:, 0], 1)).astype(np.float32),
            occupancy=(rows[:, 4] / max(self.frames, 1)).astype(np.float32),
        )


class Aggregate(Operator[AggregateConfig]):
    """Keeps each device's open window; attaches closed windows' summaries to frames."""

    reason = "aggregated"

    def __init__(self, config: AggregateConfig) -> None:
        super().__init__(config)
        self.window_ms = max(1, round(config.window_s * 1000))
        self._windows: dict[str, _Window] = {}
        self._last: dict[str, tuple[int, int]] = {}

    def __call__(self, frame: Frame) -> Frame:
        last = self._last.get(frame.origin)
        if last is not None and (frame.epoch, frame.seq) <= last:
            if self.config.forward_frames:
                return frame  # the cloud deduplicates the frame itself
            raise Drop("duplicate")
        self._last[frame.origin] = (frame.epoch, frame.seq)
        closed = self._advance(frame)
        out = replace(frame, summaries=(*frame.summaries, closed)) if closed else frame
        if not self.config.forward_frames:
            return out.withhold("aggregated")
        return out

    def _advance(self, frame: Frame) -> bytes | None:
        """Count ``frame``; return the summary of the window it closed, if any."""
        window = self._windows.get(frame.origin)
        closed = None
        if window is not None and frame.ts_ms >= window.start_ms + self.window_ms:
            closed = self._encode(frame.origin, window)
            window = None
        if window is None:
            start = frame.ts_ms - frame.ts_ms % self.window_ms
            window = _Window(start, frame.epoch, frame.seq, frame.model_version)
            self._windows[frame.origin] = window
        window.add(frame)
        return closed

    def flush(self, now_ms: int | None = None) -> list[bytes]:
        """Close the windows that ended by ``now_ms`` (device time; None: every window)."""
        done = [
            origin for origin, w in self._windows.items()
            if now_ms is None or w.start_ms + self.window_ms <= now_ms
        ]
        return [self._encode(origin, self._windows.pop(origin)) for origin in sorted(done)]

    def _encode(self, origin: str, window: _Window) -> bytes:
        return encode_summary(
            origin=origin, epoch=window.epoch, seq=window.seq,
            # A window that would end past the largest timestamp the wire carries ends there.
            ts_ms=min(window.start_ms + self.window_ms, MAX_INT64),
            summary=window.summary(self.window_ms),
        )

    def snapshot(self) -> bytes:
        """The open windows and the last frame counted per device, as msgpack."""
        windows = {
            origin: [w.start_ms, w.epoch, w.seq, w.model_version, w.frames,
                     [[c, *row] for c, row in w.classes.items()]]
            for origin, w in self._windows.items()
        }
        last = {origin: list(key) for origin, key in self._last.items()}
        packed: bytes = msgpack.packb([windows, last], use_bin_type=True)
        return packed

    def restore(self, data: bytes) -> None:
        """Replace the state with one :meth:`snapshot` returned."""
        windows, last = msgpack.unpackb(data, raw=False, strict_map_key=True)
        self._windows = {origin: _window(fields) for origin, fields in windows.items()}
        self._last = {origin: (int(e), int(s)) for origin, (e, s) in last.items()}


def _window(fields: list[Any]) -> _Window:
    start, epoch, seq, model_version, frames, classes = fields
    return _Window(
        start, epoch, seq, model_version, frames,
        {int(c): [int(n), float(lo), float(hi), float(total), int(present)]
         for c, n, lo, hi, total, present in classes},
    )
