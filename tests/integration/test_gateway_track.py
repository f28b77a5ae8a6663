"""A gateway with a ``track`` pipeline turns a scripted scene into events in the cloud."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import ExitStack, closing
from pathlib import Path

import pytest
from conftest import (
    RawClient,
    await_subscription,
    cloud_config,
    gateway_config,
    sample_value,
    start_cloud,
    start_gateway,
    stored_keys,
    wait_for,
    wait_until_stored,
)

from evc.harness import Broker
from evc.wire import (
    Channel,
    DeviceTopic,
    EventType,
    Kind,
    decode,
    encode_detections,
    events_from,
)

pytestmark = pytest.mark.integration

EPOCH = 1_700_000_000
# seq -> the centre of the one person in view (None: nobody). Defaults: move 20 px, 5 misses.
SCENE: dict[int, tuple[float, float] | None] = {
    1: (100, 100),  # appears
    2: (100, 100), 3: (102, 100), 4: (100, 101),  # stays (jitter)
    5: (130, 100),  # moves 30 px
    6: (130, 100),
    7: None, 8: None, 9: None, 10: None,  # gone, not yet for 5 frames
    11: None,  # left
}
EXPECTED = {
    1: [(EventType.APPEARED, 1, (100, 100))],
    5: [(EventType.MOVED, 1, (130, 100))],
    11: [(EventType.LEFT, 1, (130, 100))],
}


def _payload(seq: int, centre: tuple[float, float] | None) -> bytes:
    boxes = [] if centre is None else [[centre[0] - 40, centre[1] - 40,
                                        centre[0] + 40, centre[1] + 40]]
    return encode_detections(
        origin="cam-1", epoch=EPOCH, seq=seq, ts_ms=1_000 + seq, model_version="m-1",
        width=640, height=480, class_ids=[0] * len(boxes), scores=[0.9] * len(boxes),
        boxes=boxes,
    )


def _payloads(store_path: Path, site: str) -> dict[int, bytes]:
    with closing(sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT seq, payload FROM records WHERE site = ? AND kind = ?", (site, int(Kind.EVENT))
        ).fetchall()
    return dict(rows)


def test_track_stores_events_and_only_the_frames_that_made_them(
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
        gateway = start_gateway(
            stack,
            gateway_config(
                site=site, state_dir=tmp_path / "gw", fog=evc_fog_broker,
                cloud=evc_cloud_broker, pipeline=[{"type": "track"}],
            ),
        )
        device = raw_client_factory(evc_fog_broker)
        await_subscription(gateway, device, site, epoch=EPOCH + 1)
        topic = str(DeviceTopic(site, "cam-1", Channel.DETECTIONS))
        for seq, centre in SCENE.items():
            device.publish(topic, _payload(seq, centre))

        def frames(outcome: str, reason: str = "") -> float:
            return sample_value(
                gateway.metrics.registry, "evc_gateway_pipeline_frames_total",
                {"operator": "track", "outcome": outcome, "reason": reason},
            )

        wait_for(lambda: frames("passed") + frames("dropped", "stationary") == len(SCENE),
                 message="every frame through the tracker")
        keys = [("cam-1", EPOCH, seq) for seq in EXPECTED]
        wait_until_stored(store_path, site, keys, timeout=30, gateway=gateway)
        wait_for(lambda: len(_payloads(store_path, site)) >= len(EXPECTED), timeout=30,
                 message="the event records")
        assert frames("dropped", "stationary") == len(SCENE) - len(EXPECTED)
        for event_type in ("appeared", "moved", "left"):
            assert sample_value(gateway.metrics.registry, "evc_gateway_pipeline_events_total",
                                {"type": event_type}) == 1
        stored_frames = sorted(seq for _, _, seq in stored_keys(store_path, site))
        events = _payloads(store_path, site)

    assert stored_frames == sorted(EXPECTED)
    assert sorted(events) == sorted(EXPECTED)
    for seq, want in EXPECTED.items():
        envelope = decode(events[seq])
        assert (envelope.kind, envelope.origin, envelope.epoch, envelope.seq, envelope.ts_ms) == (
            Kind.EVENT, "cam-1", EPOCH, seq, 1_000 + seq,
        )
        got = events_from(envelope)
        centres = ((got.boxes[:, :2] + got.boxes[:, 2:]) / 2).tolist()
        assert [(t, i) for t, i in zip(got.event_types.tolist(), got.track_ids.tolist(),
                                       strict=True)] == [(t, i) for t, i, _ in want]
        assert centres == [pytest.approx(list(c), abs=0.1) for _, _, c in want]
