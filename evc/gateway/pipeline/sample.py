"""``sample``: what of the devices' hard examples (SAMPLE records) a site sends to the cloud.

Devices already budget their own samples; the fog box caps them again because it answers for
the whole site's uplink: a budget per device (samples per minute and per hour), a site-wide
budget of bytes per hour, a size cap, and an allow-list of sampler reasons. A sample within all
of them passes untouched (the device's bytes, at ``Priority.SAMPLE``); any other is dropped and
counted by reason: ``too_large``, ``reason_not_allowed``, ``budget_device``, ``budget_site``.

Detections frames go by: a sample operator only sees SAMPLE records
(:meth:`~evc.gateway.pipeline.Pipeline.run_sample`). Without one in the pipeline, SAMPLE
records pass as received.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from pydantic import ByteSize, Field, model_validator

from evc.gateway.pipeline.base import ConfigT, Drop, Frame, Operator, OperatorConfig
from evc.wire import Envelope

__all__ = ["SampleConfig", "SampleOperator", "SampleRecord", "SampleSelect"]


@dataclass(frozen=True, slots=True)
class SampleRecord:
    """What a sample operator decides on: who sent a sample, why, and its size on the wire."""

    origin: str
    reason: str
    size_bytes: int

    @classmethod
    def from_envelope(cls, envelope: Envelope, size_bytes: int) -> SampleRecord:
        """Take the header of a validated SAMPLE envelope (its images stay compressed)."""
        return cls(envelope.origin, str(envelope.body["reason"]), size_bytes)


class SampleOperator(Operator[ConfigT]):
    """Base of operators over SAMPLE records; they leave detections frames alone."""

    def __call__(self, frame: Frame) -> Frame:
        """Return ``frame`` as it is: detections are not this operator's business."""
        return frame

    @abstractmethod
    def admit_sample(self, record: SampleRecord) -> None:
        """Return to pass the sample on, or raise :class:`Drop` with the reason."""


class SampleConfig(OperatorConfig):
    """Budgets and filters for the hard examples a site uploads."""

    type: Literal["sample"] = Field(description="Selects this operator.")
    max_per_minute: int = Field(
        6, ge=0, description="Samples per device per minute, at most."
    )
    max_per_hour: int = Field(60, ge=0, description="Samples per device per hour, at most.")
    max_bytes_per_hour: ByteSize = Field(
        ByteSize(64 * 1024 * 1024), description="Sample bytes of the whole site per hour."
    )
    max_record_bytes: ByteSize = Field(
        ByteSize(256 * 1024), gt=0, description="Larger samples are dropped."
    )
    reasons: list[str] | None = Field(
        None,
        description="Sampler reasons let through (near_threshold, few, many, classes, random); "
        "null lets every reason through.",
    )

    @model_validator(mode="after")
    def _budgets(self) -> SampleConfig:
        if self.max_per_minute > self.max_per_hour:
            raise ValueError("max_per_minute must not exceed max_per_hour")
        if int(self.max_record_bytes) > int(self.max_bytes_per_hour):
            raise ValueError("max_record_bytes must not exceed max_bytes_per_hour")
        return self


@dataclass(slots=True)
class _Bucket:
    """``capacity`` units per ``period_s``, refilled continuously; starts full."""

    capacity: float
    period_s: float
    tokens: float
    at_s: float

    def available(self, now_s: float) -> float:
        if now_s > self.at_s:
            refill = (now_s - self.at_s) * self.capacity / self.period_s
            self.tokens = min(self.capacity, self.tokens + refill)
        # A clock that steps back must not refill, nor freeze refills until it catches up.
        self.at_s = now_s
        return self.tokens


class SampleSelect(SampleOperator[SampleConfig]):
    """Applies the sample budgets; its state is in memory only.

    The buckets are not saved with the outbox: after a restart every budget starts full, so a
    site may send up to one extra budget's worth in the hour of a restart.

    Args:
        config: the budgets and the allowed reasons.
        clock: monotonic seconds; injected by tests.
    """

    def __init__(
        self, config: SampleConfig, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__(config)
        self._clock = clock
        self._reasons = None if config.reasons is None else frozenset(config.reasons)
        self._devices: dict[str, tuple[_Bucket, _Bucket]] = {}
        self._site = _Bucket(
            float(config.max_bytes_per_hour), 3600.0, float(config.max_bytes_per_hour), clock()
        )

    def admit_sample(self, record: SampleRecord) -> None:
        """Pass ``record`` and spend its budgets, or raise :class:`Drop` naming why not."""
        if record.size_bytes > int(self.config.max_record_bytes):
            raise Drop("too_large")
        if self._reasons is not None and record.reason not in self._reasons:
            raise Drop("reason_not_allowed")
        now_s = self._clock()
        device = self._device(record.origin, now_s)
        # Rounding must not keep a bucket a hair short of a token for a whole refill period.
        if any(bucket.available(now_s) < 1.0 - 1e-9 for bucket in device):
            raise Drop("budget_device")
        if self._site.available(now_s) < record.size_bytes:
            raise Drop("budget_site")
        for bucket in device:
            bucket.tokens = max(0.0, bucket.tokens - 1.0)
        self._site.tokens -= record.size_bytes

    def _device(self, origin: str, now_s: float) -> tuple[_Bucket, _Bucket]:
        buckets = self._devices.get(origin)
        if buckets is None:
            per_minute, per_hour = self.config.max_per_minute, self.config.max_per_hour
            buckets = (
                _Bucket(float(per_minute), 60.0, float(per_minute), now_s),
                _Bucket(float(per_hour), 3600.0, float(per_hour), now_s),
            )
            self._devices[origin] = buckets
        return buckets
