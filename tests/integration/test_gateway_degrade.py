"""Over a large backlog the gateway summarises frames: the cloud still gets exact counts."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack, closing
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    RawClient,
    cloud_config,
    committed,
    finish_within,
    gateway_config,
    received,
    sample_value,
    start_cloud,
    wait_for,
)

from evc.gateway import Gateway
from evc.harness import Broker
from evc.wire import Channel, DeviceTopic, Kind, decode, detections_from, encode_detections
from evc.wire.derived import summaries_from

pytestmark = pytest.mark.integration

EPOCH = 1_700_000_000
T0_MS = 1_000_000
FRAMES = 150  # per device, 100 ms apart
DEVICES = ("cam-1", "cam-2")


def _frame(device: str, seq: int, ts_ms: int, classes: list[int]) -> bytes:
    n = len(classes)
    return encode_detections(
        origin=device, epoch=EPOCH, seq=seq, ts_ms=ts_ms, model_version="m-1", width=640,
        height=480, class_ids=classes, scores=[0.5] * n, boxes=[[10, 10, 50, 50]] * n,
    )


def _cloud_counts(store_path: Path, site: str) -> tuple[Counter[tuple[str, int]], int]:
    """Per (device, class) detections in stored frames plus summaries; and the frames stored."""
    with closing(sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT kind, payload FROM records WHERE site = ? AND kind IN (?, ?)",
            (site, int(Kind.DETECTIONS), int(Kind.SUMMARY)),
        ).fetchall()
    counts: Counter[tuple[str, int]] = Counter()
    frames = 0
    for kind, payload in rows:
        envelope = decode(payload)
        if envelope.origin not in DEVICES:
            continue  # the subscription probe
        if kind == int(Kind.DETECTIONS):
            frames += 1
            classes = detections_from(envelope).class_ids.tolist()
            counts.update((envelope.origin, c) for c in classes)
        else:
            summary = summaries_from(envelope)
            for cls, n in zip(summary.class_ids.tolist(), summary.counts.tolist(), strict=True):
                counts[envelope.origin, cls] += n
    return counts, frames


def test_a_long_outage_stores_summaries_with_exact_counts(
    evc_fog_broker: Broker,
    evc_cloud_broker: Broker,
    evc_topic_namespace: str,
    tmp_path: Path,
    raw_client_factory: Callable[..., RawClient],
) -> None:
    site = evc_topic_namespace
    store_path = tmp_path / "cloud" / "records.db"
    rng = np.random.default_rng(11)
    expected: Counter[tuple[str, int]] = Counter()
    with ExitStack() as stack:
        start_cloud(stack, cloud_config(site=site, store_path=store_path, cloud=evc_cloud_broker))
        gateway = Gateway(gateway_config(
            site=site, state_dir=tmp_path / "gw", fog=evc_fog_broker, cloud=evc_cloud_broker,
            degrade={"backlog_records": 50, "window_s": 1},
        ))
        gateway.start()
        device = raw_client_factory(evc_fog_broker)
        probe = str(DeviceTopic(site, "probe", Channel.DETECTIONS))
        probes = iter(range(1, 1000))

        def subscribed() -> bool:
            if committed(gateway) >= 1:
                return True
            device.publish(probe, _frame("probe", next(probes), 0, []))
            return False

        try:
            wait_for(subscribed, interval=0.2, message="the gateway's subscription")
            before = received(gateway, "det")
            evc_cloud_broker.stop()
            wait_for(lambda: not gateway.uplink.connected.is_set(), message="the uplink to drop")
            for seq in range(1, FRAMES + 1):
                for name in DEVICES:
                    classes = rng.integers(0, 4, size=int(rng.integers(0, 6))).tolist()
                    expected.update((name, c) for c in classes)
                    topic = str(DeviceTopic(site, name, Channel.DETECTIONS))
                    device.publish(topic, _frame(name, seq, T0_MS + 100 * seq, classes))
                time.sleep(0.005)
            wait_for(lambda: received(gateway, "det") == before + 2 * FRAMES,
                     message="every frame at the gateway")
            degraded = sample_value(
                gateway.metrics.registry, "evc_gateway_pipeline_frames_total",
                {"operator": "degrade", "outcome": "dropped", "reason": "summarised"},
            )
            assert degraded > 0
            evc_cloud_broker.restart()
        finally:
            finish_within(lambda: gateway.stop(drain_timeout_s=30), "Gateway.stop()", 45)

        def exact() -> bool:
            return _cloud_counts(store_path, site)[0] == expected

        wait_for(exact, timeout=30,
                 message=lambda: f"exact: {_cloud_counts(store_path, site)[0]} vs {expected}")
        _, frames = _cloud_counts(store_path, site)
    assert sum(expected.values()) > 0
    assert frames < 2 * FRAMES
    assert frames + degraded == 2 * FRAMES
