"""Degradation while offline: frames the pipeline would forward are summarised instead."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from evc.config import GatewayConfig
from evc.gateway import admit
from evc.gateway.pipeline import Aggregate, AggregateConfig
from evc.outbox import Priority
from evc.wire import Channel, DeviceTopic, Kind, decode, encode_detections
from evc.wire.derived import summaries_from

SITE = "depot-1"
DET = str(DeviceTopic(SITE, "cam-1", Channel.DETECTIONS))


class Listener:
    def __init__(self) -> None:
        self.frames: list[tuple[str, str, str]] = []

    def record(self, operator: str, outcome: str, reason: str, removed: int) -> None:
        del removed
        self.frames.append((operator, outcome, reason))

    def record_events(self, operator: str, event_type: str, count: int) -> None:
        """Unused."""

    def record_alert(self, operator: str, rule: str) -> None:
        """Unused."""


def record(seq: int, ts_ms: int, classes: list[int]) -> bytes:
    return encode_detections(
        origin="cam-1", epoch=3, seq=seq, ts_ms=ts_ms, model_version="m", width=640,
        height=480, class_ids=classes, scores=[0.9] * len(classes),
        boxes=[[10, 10, 20, 20]] * len(classes),
    )


def test_degrade_is_off_by_default_and_validated() -> None:
    assert GatewayConfig(site=SITE, gateway_id="gw").degrade.backlog_records is None
    config = GatewayConfig(site=SITE, gateway_id="gw", degrade={"backlog_records": 5})
    assert config.degrade.window_s == 10
    with pytest.raises(ValidationError):
        GatewayConfig(site=SITE, gateway_id="gw", degrade={"backlog_records": 0})
    with pytest.raises(ValidationError):
        GatewayConfig(site=SITE, gateway_id="gw", degrade={"window_s": 0})
    with pytest.raises(ValidationError):
        GatewayConfig(site=SITE, gateway_id="gw", degrade={"typo": 1})


def test_degraded_frames_become_exact_summaries() -> None:
    degrade = Aggregate(AggregateConfig(type="aggregate", name="degrade", window_s=1))
    listener = Listener()
    stored = []
    for seq, (ts, classes) in enumerate([(0, [1, 1]), (500, [2]), (1500, [1]), (1600, [])], 1):
        records, channel = admit(DET, record(seq, ts, classes), site=SITE, max_bytes=4096,
                                 degrade=degrade, listener=listener)
        assert channel is Channel.DETECTIONS
        stored.extend(records)
    # A redelivered frame is not counted twice.
    again, _ = admit(DET, record(2, 500, [2]), site=SITE, max_bytes=4096, degrade=degrade)
    assert again == []
    stored.extend(
        admit(DET, record(9, 5000, []), site=SITE, max_bytes=4096, degrade=degrade)[0]
    )
    assert all(r.priority is Priority.SUMMARY for r in stored)
    summaries = [summaries_from(decode(r.payload)) for r in stored]
    assert [decode(r.payload).kind for r in stored] == [Kind.SUMMARY, Kind.SUMMARY]
    counts = [dict(zip(s.class_ids.tolist(), s.counts.tolist(), strict=True)) for s in summaries]
    assert counts == [{1: 2, 2: 1}, {1: 1}]
    assert listener.frames == [("degrade", "dropped", "summarised")] * 4
