"""A gateway with an ``alert`` pipeline: scripted frames become exactly the expected ALERT records
in the cloud, and an alert overtakes a backlog of detections after an uplink outage."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    RawClient,
    await_subscription,
    cloud_config,
    committed,
    gateway_config,
    sample_value,
    start_cloud,
    start_gateway,
    wait_for,
)

from evc.config import ForwardConfig
from evc.harness import Broker
from evc.wire import (
    Channel,
    DeviceTopic,
    Kind,
    alerts_from,
    decode,
    encode_detections,
)

pytestmark = pytest.mark.integration

EPOCH = 1_700_000_000
IN_ZONE, OUTSIDE = (50.0, 50.0), (400.0, 400.0)
DOOR = [[0, 0], [200, 0], [200, 200], [0, 200]]
RULES: list[dict[str, Any]] = [
    {"kind": "count_above", "name": "crowd", "class": "person", "count": 2, "cooldown_s": 10},
    {"kind": "dwell", "name": "loiter", "class": "person", "seconds": 2, "cooldown_s": 60,
     "zone": {"cam-1": [DOOR]}, "zone_name": "door"},
]
# (device, seq, ts in s, centres of the people in view)
SCRIPT: list[tuple[str, int, int, list[tuple[float, float]]]] = [
    ("cam-1", 1, 1, [IN_ZONE]),
    ("cam-1", 2, 2, [IN_ZONE]),
    ("cam-1", 3, 3, [IN_ZONE, OUTSIDE, OUTSIDE]),  # crowd; in the door 2 s, not longer
    ("cam-1", 4, 4, [IN_ZONE]),  # loiter: 3 s in the door
    ("cam-1", 5, 5, [IN_ZONE, OUTSIDE, OUTSIDE]),  # both cooling down
    ("cam-1", 6, 6, []),
    ("cam-1", 7, 14, [OUTSIDE, OUTSIDE, OUTSIDE]),  # crowd again, 11 s after the first
    ("cam-2", 1, 1, [OUTSIDE, OUTSIDE, OUTSIDE]),  # crowd: cam-2 has its own cooldown
]
# (device, seq) -> [(rule, count, duration_ms, zone)]
EXPECTED = {
    ("cam-1", 3): [("crowd", 3, 0, "")],
    ("cam-1", 4): [("loiter", 1, 3000, "door")],
    ("cam-1", 7): [("crowd", 3, 0, "")],
    ("cam-2", 1): [("crowd", 3, 0, "")],
}


def _payload(device: str, seq: int, ts_s: int, centres: list[tuple[float, float]]) -> bytes:
    boxes = [[x - 20, y - 20, x + 20, y + 20] for x, y in centres]
    return encode_detections(
        origin=device, epoch=EPOCH, seq=seq, ts_ms=ts_s * 1000, model_version="m-1",
        width=640, height=480, class_ids=[0] * len(boxes), scores=[0.9] * len(boxes),
        boxes=boxes,
    )


def _stored(store_path: Path, site: str) -> list[tuple[str, int, int, int, bytes]]:
    """(origin, seq, kind, stored_ms, payload) of every stored record of ``site``."""
    if not store_path.exists():
        return []
    with closing(sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)) as db:
        db.execute("PRAGMA busy_timeout=5000")
        try:
            return db.execute(
                "SELECT origin, seq, kind, stored_ms, payload FROM records WHERE site = ?",
                (site,),
            ).fetchall()
        except sqlite3.OperationalError:  # the schema is not created yet
            return []


def _alert_pipeline() -> list[dict[str, Any]]:
    return [{"type": "alert", "rules": RULES, "class_names": ["person"]}]


def test_scripted_frames_store_exactly_the_expected_alerts(
    evc_fog_broker: Broker,
    evc_cloud_broker: Broker,
    evc_topic_namespace: str,
    tmp_path: Path,
    raw_client_factory: Callable[..., RawClient],
) -> None:
    site = evc_topic_namespace
    store_path = tmp_path / "cloud" / "records.db"
    with ExitStack() as stack:
        start_cloud(stack, cloud_config(site=site, store_path=store_path, cloud=evc_cloud_broker))
        gateway = start_gateway(stack, gateway_config(
            site=site, state_dir=tmp_path / "gw", fog=evc_fog_broker, cloud=evc_cloud_broker,
            pipeline=_alert_pipeline(),
        ))
        device = raw_client_factory(evc_fog_broker)
        await_subscription(gateway, device, site, epoch=EPOCH + 1)
        for origin, seq, ts_s, centres in SCRIPT:
            topic = str(DeviceTopic(site, origin, Channel.DETECTIONS))
            device.publish(topic, _payload(origin, seq, ts_s, centres))

        def stored_of(kind: Kind) -> dict[tuple[str, int], bytes]:
            return {(o, s): p for o, s, k, _, p in _stored(store_path, site) if k == kind}

        wait_for(lambda: len(stored_of(Kind.DETECTIONS)) >= len(SCRIPT)
                 and len(stored_of(Kind.ALERT)) >= len(EXPECTED),
                 timeout=30, message="every frame and alert stored")
        alerts = stored_of(Kind.ALERT)
        counts = {rule: sample_value(gateway.metrics.registry,
                                     "evc_gateway_pipeline_alerts_total", {"rule": rule})
                  for rule in ("crowd", "loiter")}

    assert counts == {"crowd": 3, "loiter": 1}
    assert sorted(alerts) == sorted(EXPECTED)
    for (origin, seq), want in EXPECTED.items():
        envelope = decode(alerts[origin, seq])
        ts_s = next(t for o, s, t, _ in SCRIPT if (o, s) == (origin, seq))
        assert (envelope.kind, envelope.origin, envelope.epoch, envelope.seq, envelope.ts_ms) == (
            Kind.ALERT, origin, EPOCH, seq, ts_s * 1000,
        )
        got = alerts_from(envelope)
        assert [(a.rule, a.count, a.duration_ms, a.zone) for a in got.alerts] == want
        assert all(a.class_id == 0 and len(a.boxes) == a.count for a in got.alerts)


def test_an_alert_overtakes_a_backlog_of_detections(
    evc_fog_broker: Broker,
    evc_cloud_broker: Broker,
    evc_topic_namespace: str,
    tmp_path: Path,
    raw_client_factory: Callable[..., RawClient],
) -> None:
    site = evc_topic_namespace
    store_path = tmp_path / "cloud" / "records.db"
    backlog = 200
    with ExitStack() as stack:
        gateway = start_gateway(stack, gateway_config(
            site=site, state_dir=tmp_path / "gw", fog=evc_fog_broker, cloud=evc_cloud_broker,
            pipeline=_alert_pipeline(),
            # Small batches under a bandwidth cap spread the drain over time.
            forward=ForwardConfig(batch_max_records=10, max_inflight=1, max_bytes_per_s=8_000,
                                  burst_bytes=1_000),
        ))
        wait_for(gateway.uplink.connected.is_set, message="the uplink to connect")
        evc_cloud_broker.stop()
        wait_for(lambda: not gateway.uplink.connected.is_set(), message="the uplink to drop")
        device = raw_client_factory(evc_fog_broker)
        await_subscription(gateway, device, site, epoch=EPOCH + 1)
        topic = str(DeviceTopic(site, "cam-2", Channel.DETECTIONS))  # no dwell zone there
        for seq in range(1, backlog + 1):
            device.publish(topic, _payload("cam-2", seq, seq, [OUTSIDE]))
        device.publish(topic, _payload("cam-2", backlog + 1, backlog + 1, [OUTSIDE] * 3))
        wait_for(lambda: sample_value(gateway.metrics.registry,
                                      "evc_gateway_pipeline_alerts_total", {"rule": "crowd"}) == 1
                 and committed(gateway) >= backlog + 3,  # a heartbeat, frames, the alert
                 message="the backlog and the alert in the outbox")

        evc_cloud_broker.restart()
        start_cloud(stack, cloud_config(site=site, store_path=store_path, cloud=evc_cloud_broker))
        wait_for(lambda: sum(k == Kind.DETECTIONS for _, _, k, _, _ in _stored(store_path, site))
                 >= backlog + 1, timeout=90, message="the backlog drained")
        stored = _stored(store_path, site)

    alerts = [(seq, stored_ms) for _, seq, kind, stored_ms, _ in stored if kind == Kind.ALERT]
    detections = sorted(ms for _, _, kind, ms, _ in stored if kind == Kind.DETECTIONS)
    assert [seq for seq, _ in alerts] == [backlog + 1]
    assert detections[0] < detections[-1], "the drain was not spread over time"
    # Published last, stored (about) first: no later than the earliest detections.
    assert alerts[0][1] <= detections[len(detections) // 10]
    assert alerts[0][1] < detections[-1]
