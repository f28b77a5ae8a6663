"""A gateway with a threshold + zones pipeline stores exactly the detections it should keep."""

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
    wait_for,
    wait_until_stored,
)

from evc.harness import Broker
from evc.wire import (
    Channel,
    DeviceTopic,
    Kind,
    decode,
    detections_from,
    encode_detections,
)

pytestmark = pytest.mark.integration

EPOCH = 1_700_000_000
# Boxes centred here are in cam-1's ignored zone (x 400..640, y 300..480).
IN_ZONE = (500.0, 400.0)
CLEAR = (100.0, 100.0)
PIPELINE = [
    {"type": "threshold", "default": 0.5, "min_score": {"dog": 0.85}, "class_names":
     ["person", "car", "dog"]},
    {"type": "zones", "mode": "drop",
     "devices": {"cam-1": [[[400, 300], [640, 300], [640, 480], [400, 480]]]}},
    {"type": "min_detections"},
]
# (device, seq, [(class, score, centre)], the (class, score) pairs expected in the cloud, or
# None when the whole frame must be dropped)
FRAMES = [
    ("cam-1", 1, [(0, 0.9, CLEAR), (1, 0.3, CLEAR), (0, 0.8, IN_ZONE)], [(0, 0.9)]),
    ("cam-1", 2, [(0, 0.2, CLEAR)], None),
    ("cam-1", 3, [(1, 0.9, CLEAR), (1, 0.95, CLEAR)], [(1, 0.9), (1, 0.95)]),
    ("cam-1", 4, [(0, 0.9, IN_ZONE)], None),
    ("cam-1", 5, [(2, 0.8, CLEAR), (2, 0.9, CLEAR)], [(2, 0.9)]),
    ("cam-2", 1, [(0, 0.9, IN_ZONE)], [(0, 0.9)]),  # zones are cam-1's only
]


def _payload(device: str, seq: int, detections: list[tuple[int, float, tuple[float, float]]]
             ) -> bytes:
    return encode_detections(
        origin=device, epoch=EPOCH, seq=seq, ts_ms=1_000 + seq, model_version="m-1",
        width=640, height=480,
        class_ids=[c for c, _, _ in detections], scores=[s for _, s, _ in detections],
        boxes=[[x - 10, y - 10, x + 10, y + 10] for _, _, (x, y) in detections],
    )


def _stored(store_path: Path, site: str) -> dict[tuple[str, int], bytes]:
    with closing(sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT origin, seq, payload FROM records WHERE site = ? AND kind = ?",
            (site, int(Kind.DETECTIONS)),
        ).fetchall()
    return {(origin, seq): payload for origin, seq, payload in rows}


def test_pipeline_filters_and_drops_before_the_cloud(
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
                cloud=evc_cloud_broker, pipeline=PIPELINE,
            ),
        )
        device = raw_client_factory(evc_fog_broker)
        await_subscription(gateway, device, site, epoch=EPOCH + 1)
        for origin, seq, detections, _ in FRAMES:
            topic = str(DeviceTopic(site, origin, Channel.DETECTIONS))
            device.publish(topic, _payload(origin, seq, detections))
        kept = [(o, EPOCH, s) for o, s, _, want in FRAMES if want is not None]
        wait_until_stored(store_path, site, kept, timeout=30, gateway=gateway)

        def frames(operator: str, outcome: str, reason: str = "") -> float:
            return sample_value(
                gateway.metrics.registry, "evc_gateway_pipeline_frames_total",
                {"operator": operator, "outcome": outcome, "reason": reason},
            )

        wait_for(lambda: frames("min_detections", "dropped", "too_few_detections") == 2,
                 message="both drops counted")
        assert frames("threshold", "changed", "threshold") == 3  # cam-1 seq 1, 2 and 5
        assert frames("threshold", "passed") == 3
        assert frames("zones", "changed", "zone") == 2  # cam-1 seq 1 and 4
        assert frames("zones", "passed") == 4
        assert frames("min_detections", "passed") == 4
        stored = _stored(store_path, site)

    assert set(stored) == {(o, s) for o, s, _, want in FRAMES if want is not None}
    for origin, seq, _, want in FRAMES:
        if want is None:
            continue
        envelope = decode(stored[(origin, seq)])
        assert (envelope.origin, envelope.epoch, envelope.seq) == (origin, EPOCH, seq)
        assert envelope.ts_ms == 1_000 + seq
        frame = detections_from(envelope)
        assert frame.model_version == "m-1"
        got = list(zip(frame.class_ids.tolist(), frame.scores.tolist(), strict=True))
        assert got == [(c, pytest.approx(s, abs=0.003)) for c, s in want]
