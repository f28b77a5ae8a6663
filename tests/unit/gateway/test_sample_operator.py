"""The ``sample`` operator: budgets per device and per site, size and reason filters, wiring."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from evc.config import GatewayConfig
from evc.errors import ConfigError
from evc.gateway import admit
from evc.gateway.pipeline import (
    Drop,
    Frame,
    SampleConfig,
    SampleRecord,
    SampleSelect,
    build_pipeline,
)
from evc.metrics import GatewayMetrics
from evc.outbox import Priority
from evc.wire import Channel, DeviceTopic, Kind, Sample, decode, encode_sample, whole_frame

SITE = "depot-1"


class Clock:
    """Monotonic seconds the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def select(clock: Clock, **settings: Any) -> SampleSelect:
    return SampleSelect(SampleConfig(type="sample", **settings), clock=clock)


def outcomes(op: SampleSelect, records: list[SampleRecord]) -> list[str]:
    out = []
    for record in records:
        try:
            op.admit_sample(record)
            out.append("passed")
        except Drop as drop:
            out.append(drop.reason)
    return out


def rec(origin: str = "cam-1", reason: str = "near_threshold", size: int = 100) -> SampleRecord:
    return SampleRecord(origin=origin, reason=reason, size_bytes=size)


def test_per_device_minute_budget_bursts_then_refills() -> None:
    clock = Clock()
    op = select(clock, max_per_minute=2, max_per_hour=10)
    assert outcomes(op, [rec()] * 3) == ["passed", "passed", "budget_device"]
    assert outcomes(op, [rec("cam-2")]) == ["passed"]  # every device has its own budget
    clock.now += 29.0
    assert outcomes(op, [rec()]) == ["budget_device"]
    clock.now += 1.0  # 60 s / 2 per minute: one sample back after 30 s
    assert outcomes(op, [rec(), rec()]) == ["passed", "budget_device"]


def test_per_device_hour_budget_binds_across_minutes() -> None:
    clock = Clock()
    op = select(clock, max_per_minute=2, max_per_hour=3)
    passed = 0
    for _ in range(5):
        passed += outcomes(op, [rec(), rec()]).count("passed")
        clock.now += 60.0
    assert passed == 3  # 240 s refill less than one hourly sample (one per 1200 s)
    clock.now += 1200.0
    assert outcomes(op, [rec()]) == ["passed"]


def test_site_budget_counts_bytes_of_every_device() -> None:
    clock = Clock()
    op = select(clock, max_bytes_per_hour=1000, max_record_bytes=600)
    assert outcomes(op, [rec("cam-1", size=400), rec("cam-2", size=400), rec("cam-3", size=400)]
                    ) == ["passed", "passed", "budget_site"]
    assert outcomes(op, [rec("cam-3", size=200)]) == ["passed"]
    clock.now += 3600.0 * 0.4  # 400 bytes come back
    assert outcomes(op, [rec("cam-3", size=400)]) == ["passed"]


def test_a_sample_refused_by_the_site_does_not_spend_its_device_budget() -> None:
    clock = Clock()
    op = select(clock, max_per_minute=1, max_per_hour=1, max_bytes_per_hour=500,
                max_record_bytes=500)
    assert outcomes(op, [rec("cam-1", size=450), rec("cam-2", size=100), rec("cam-2", size=40)]
                    ) == ["passed", "budget_site", "passed"]


def test_too_large_and_unlisted_reasons_are_dropped_before_any_budget() -> None:
    clock = Clock()
    op = select(clock, max_per_minute=1, max_per_hour=1, max_record_bytes=1000,
                reasons=["near_threshold", "few"])
    assert outcomes(op, [rec(size=1001), rec(reason="random"), rec(reason="few")]) == [
        "too_large", "reason_not_allowed", "passed"]


def test_config_is_selected_by_type_and_checked() -> None:
    config = GatewayConfig(site=SITE, gateway_id="g", pipeline=[
        {"type": "sample", "max_per_minute": 3, "max_per_hour": 30, "reasons": ["few"]},
    ])
    [op_config] = config.pipeline
    assert isinstance(op_config, SampleConfig)
    assert (op_config.max_per_minute, op_config.reasons) == (3, ["few"])
    with pytest.raises(ValidationError, match="max_per_minute"):
        SampleConfig(type="sample", max_per_minute=10, max_per_hour=5)
    with pytest.raises(ValidationError, match="max_record_bytes"):
        SampleConfig(type="sample", max_bytes_per_hour=100, max_record_bytes=200)
    with pytest.raises((ValidationError, ConfigError)):
        GatewayConfig(site=SITE, gateway_id="g", pipeline=[{"type": "sample", "per_day": 1}])


# -- in the pipeline and the intake ------------------------------------------------------------

SAMPLE_TOPIC = str(DeviceTopic(SITE, "cam-1", Channel.SAMPLE))
DET_TOPIC = str(DeviceTopic(SITE, "cam-1", Channel.DETECTIONS))


def sample_payload(seq: int, reason: str = "near_threshold") -> bytes:
    image = np.full((8, 8, 3), seq, dtype=np.uint8)
    sample = Sample(
        model_version="m-1", reason=reason, width=8, height=8, regions=whole_frame(image),
        class_ids=np.asarray([1], np.uint16), scores=np.asarray([0.3], np.float32),
        boxes=np.asarray([[1, 1, 4, 4]], np.float32),
    )
    return encode_sample(origin="cam-1", epoch=5, seq=seq, ts_ms=1, sample=sample)


def counted(metrics: GatewayMetrics, operator: str, outcome: str, reason: str = "") -> float:
    value = metrics.registry.get_sample_value(
        "evc_gateway_pipeline_frames_total",
        {"operator": operator, "outcome": outcome, "reason": reason},
    )
    return value or 0.0


def test_intake_passes_samples_untouched_within_budget_and_counts_drops() -> None:
    metrics = GatewayMetrics()
    config = GatewayConfig(site=SITE, gateway_id="g", pipeline=[
        {"type": "threshold", "default": 0.5},
        {"type": "sample", "max_per_minute": 2, "max_per_hour": 2, "reasons": ["near_threshold"]},
    ])
    pipeline = build_pipeline(config.pipeline, listener=metrics.pipeline)
    stored = []
    for seq, reason in [(1, "near_threshold"), (2, "random"), (3, "near_threshold"),
                        (4, "near_threshold")]:
        payload = sample_payload(seq, reason)
        records, channel = admit(SAMPLE_TOPIC, payload, site=SITE, max_bytes=65536,
                                 pipeline=pipeline, listener=metrics.pipeline)
        assert channel is Channel.SAMPLE
        stored.extend(records)
        assert all(r.payload == payload and r.priority is Priority.SAMPLE for r in records)
    assert [decode(r.payload).seq for r in stored] == [1, 3]
    assert counted(metrics, "sample", "passed") == 2
    assert counted(metrics, "sample", "dropped", "reason_not_allowed") == 1
    assert counted(metrics, "sample", "dropped", "budget_device") == 1
    # The threshold operator never saw a sample, and the sample operator never saw a frame.
    assert counted(metrics, "threshold", "passed") == 0


def test_detections_frames_do_not_go_through_sample_operators() -> None:
    metrics = GatewayMetrics()
    config = GatewayConfig(site=SITE, gateway_id="g", pipeline=[
        {"type": "sample", "max_per_minute": 0, "max_per_hour": 0},
    ])
    pipeline = build_pipeline(config.pipeline, listener=metrics.pipeline)
    frame = Frame(
        origin="cam-1", epoch=1, seq=1, ts_ms=0, model_version="m", width=640, height=480,
        class_ids=np.asarray([0], np.uint16), scores=np.asarray([0.9], np.float32),
        boxes=np.asarray([[1, 1, 5, 5]], np.float32),
    )
    assert pipeline(frame) is frame
    assert counted(metrics, "sample", "passed") == 0
    records, _ = admit(SAMPLE_TOPIC, sample_payload(1), site=SITE, max_bytes=65536,
                       pipeline=pipeline)
    assert records == []
    assert counted(metrics, "sample", "dropped", "budget_device") == 1


def test_without_a_sample_operator_samples_pass_as_received() -> None:
    config = GatewayConfig(site=SITE, gateway_id="g", pipeline=[{"type": "min_detections"}])
    pipeline = build_pipeline(config.pipeline)
    payload = sample_payload(9)
    [record], _ = admit(SAMPLE_TOPIC, payload, site=SITE, max_bytes=65536, pipeline=pipeline)
    assert (record.payload, record.priority) == (payload, Priority.SAMPLE)
    assert decode(record.payload).kind is Kind.SAMPLE
    [record], _ = admit(SAMPLE_TOPIC, payload, site=SITE, max_bytes=65536)
    assert record.payload == payload
