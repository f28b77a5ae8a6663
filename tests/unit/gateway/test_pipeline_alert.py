"""The ``alert`` operator: worked examples of count_above, dwell, cooldown and per-device state."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from evc.gateway.intake import PRIORITY_OF_KIND
from evc.gateway.pipeline import (
    AlertConfig,
    Alerts,
    Drop,
    Frame,
    Operator,
    OperatorConfig,
    Pipeline,
    validate_operators,
)
from evc.outbox import Priority
from evc.wire import Kind, alerts_from, decode

Obj = tuple[int, float, float]  # class, centre x, centre y
DOOR = [[0, 0], [200, 0], [200, 200], [0, 200]]  # a square; centres inside x, y < 200


def frame(ts_s: float, objects: list[Obj], origin: str = "cam-1", seq: int = 1) -> Frame:
    boxes = [[x - 10, y - 10, x + 10, y + 10] for _, x, y in objects]
    return Frame(
        origin=origin, epoch=7, seq=seq, ts_ms=int(ts_s * 1000), model_version="m", width=640,
        height=480, class_ids=np.asarray([c for c, _, _ in objects], dtype=np.uint16),
        scores=np.full(len(objects), 0.9, dtype=np.float32),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
    )


def alerts(*rules: dict[str, Any], **config: Any) -> Alerts:
    return Alerts(AlertConfig.model_validate({"type": "alert", "rules": list(rules), **config}))


def fired(op: Alerts, f: Frame) -> list[tuple[str, int, int]]:
    """(rule, count, duration_ms) of each alert the frame raised; the frame passes unchanged."""
    out = op(f)
    assert out.boxes is f.boxes
    return [(a.rule, a.count, a.duration_ms) for a in out.alerts]


def count_rule(**change: Any) -> dict[str, Any]:
    return {"kind": "count_above", "name": "crowd", "class": 0, "count": 2, "cooldown_s": 0,
            **change}


def dwell_rule(**change: Any) -> dict[str, Any]:
    return {"kind": "dwell", "name": "loiter", "class": "person", "seconds": 5,
            "zone": {"cam-1": [DOOR], "cam-2": [DOOR]}, "cooldown_s": 0, **change}


def test_count_above_fires_above_n_not_at_n() -> None:
    op = alerts(count_rule())
    assert fired(op, frame(1, [(0, 10, 10), (0, 50, 50)])) == []
    assert fired(op, frame(2, [(0, 10, 10), (0, 50, 50), (1, 90, 90)])) == []  # other class
    assert fired(op, frame(3, [(0, 10, 10), (0, 50, 50), (0, 90, 90)])) == [("crowd", 3, 0)]


def test_the_alert_carries_the_boxes_that_triggered_it() -> None:
    op = alerts(count_rule(count=0))
    out = op(frame(1, [(1, 10, 10), (0, 300, 300)]))
    (alert,) = out.alerts
    assert alert.class_id == 0
    np.testing.assert_allclose(alert.boxes, [[290, 290, 310, 310]])


def test_dwell_fires_only_after_t_of_continuous_presence() -> None:
    op = alerts(dwell_rule(), class_names=["person"])
    assert fired(op, frame(0, [(0, 50, 50)])) == []
    assert fired(op, frame(3, [(0, 60, 50)])) == []
    assert fired(op, frame(5, [(0, 70, 50)])) == []  # exactly T: not longer than T
    assert fired(op, frame(5.5, [(0, 70, 50), (0, 400, 400)])) == [("loiter", 1, 5500)]


def test_dwell_resets_when_the_class_is_absent_or_outside_the_zone() -> None:
    op = alerts(dwell_rule(), class_names=["person"])
    assert fired(op, frame(0, [(0, 50, 50)])) == []
    assert fired(op, frame(4, [(0, 300, 300)])) == []  # outside the zone: absent
    assert fired(op, frame(6, [(0, 50, 50)])) == []  # the clock starts again here
    assert fired(op, frame(10, [(1, 50, 50)])) == []  # another class: absent
    assert fired(op, frame(11, [(0, 50, 50)])) == []
    assert fired(op, frame(16.5, [(0, 50, 50)])) == [("loiter", 1, 5500)]


def test_cooldown_keeps_a_rule_quiet_then_lets_it_fire_again() -> None:
    op = alerts(count_rule(count=0, cooldown_s=10))
    person = [(0, 10, 10)]
    assert fired(op, frame(0, person)) == [("crowd", 1, 0)]
    assert fired(op, frame(5, person)) == []
    assert fired(op, frame(9.999, person)) == []
    assert fired(op, frame(10, person)) == [("crowd", 1, 0)]


def test_a_dwell_keeps_counting_through_its_cooldown() -> None:
    op = alerts(dwell_rule(seconds=1, cooldown_s=10), class_names=["person"])
    for t in (0, 1):
        assert fired(op, frame(t, [(0, 50, 50)])) == []
    assert fired(op, frame(2, [(0, 50, 50)])) == [("loiter", 1, 2000)]
    assert fired(op, frame(8, [(0, 50, 50)])) == []
    assert fired(op, frame(12, [(0, 50, 50)])) == [("loiter", 1, 12000)]


def test_devices_are_independent() -> None:
    op = alerts(dwell_rule(cooldown_s=60), count_rule(count=0, cooldown_s=60),
                class_names=["person"])
    assert fired(op, frame(0, [(0, 50, 50)], "cam-1")) == [("crowd", 1, 0)]
    assert fired(op, frame(1, [(0, 50, 50)], "cam-2")) == [("crowd", 1, 0)]  # own cooldown
    assert fired(op, frame(6, [(0, 50, 50)], "cam-1")) == [("loiter", 1, 6000)]
    assert fired(op, frame(6, [], "cam-2")) == []  # cam-2's clock resets, cam-1's does not
    assert fired(op, frame(7, [(0, 50, 50)], "cam-2")) == []
    assert fired(op, frame(12.5, [(0, 50, 50)], "cam-2")) == [("loiter", 1, 5500)]
    assert fired(op, frame(1, [(0, 50, 50)], "cam-3")) == [("crowd", 1, 0)]  # no zone there


class DropAll(Operator[OperatorConfig]):
    def __call__(self, frame: Frame) -> Frame:  # noqa: ARG002 -- drops without reading it
        raise Drop("all")


class Listener:
    def __init__(self) -> None:
        self.alerts: list[tuple[str, str]] = []

    def record(self, operator: str, outcome: str, reason: str, removed: int) -> None:
        pass

    def record_events(self, operator: str, event_type: str, count: int) -> None:
        pass

    def record_alert(self, operator: str, rule: str) -> None:
        self.alerts.append((operator, rule))


def test_the_pipeline_encodes_one_alert_record_under_the_frames_key_even_when_dropped() -> None:
    listener = Listener()
    op = alerts(count_rule(count=0), count_rule(name="many", count=1))
    pipeline = Pipeline([op, DropAll(OperatorConfig(name="drop"))], listener=listener)
    result = pipeline.run(frame(2, [(0, 10, 10), (0, 50, 50)], seq=42))
    assert result.frame is None
    assert result.alerts is not None
    envelope = decode(result.alerts)
    assert (envelope.kind, envelope.origin, envelope.epoch, envelope.seq, envelope.ts_ms) == (
        Kind.ALERT, "cam-1", 7, 42, 2000,
    )
    assert [a.rule for a in alerts_from(envelope).alerts] == ["crowd", "many"]
    assert listener.alerts == [("alert", "crowd"), ("alert", "many")]
    assert pipeline.run(frame(3, [])).alerts is None
    assert PRIORITY_OF_KIND[Kind.ALERT] is Priority.ALERT


@pytest.mark.parametrize(
    "rules",
    [
        [],
        [count_rule(), count_rule()],  # repeated names
        [count_rule(**{"class": "car"})],  # no class_names
        [count_rule(kind="sometimes")],
        [count_rule(count=-1)],
        [dwell_rule(seconds=0)],
        [dwell_rule(zone={})],
        [dwell_rule(zone={"cam-1": [[[0, 0], [1, 1]]]})],  # a polygon needs 3 points
        [count_rule(extra=1)],
    ],
)
def test_invalid_rules_are_refused(rules: list[dict[str, Any]]) -> None:
    with pytest.raises(ValidationError):
        validate_operators([{"type": "alert", "rules": rules, "class_names": ["person"]}])


def test_a_config_survives_a_dump_and_reload() -> None:
    (config,) = validate_operators([{"type": "alert", "rules": [dwell_rule()],
                                     "class_names": ["person"]}])
    dumped = config.model_dump(mode="json")
    assert dumped["rules"][0]["class"] == "person"
    assert validate_operators([dumped]) == [config]
