"""Priorities on real brokers: a full outbox evicts samples first, the backlog drains by weight,
and compressed batches are stored the same while using fewer uplink bytes."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import ExitStack, closing
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    RawClient,
    cloud_config,
    committed,
    gateway_config,
    sample_value,
    start_cloud,
    start_gateway,
    wait_for,
)

from evc.config import ForwardConfig, GatewayIngestConfig, OutboxConfig
from evc.device import synthetic_detections
from evc.device.synthetic import FRAME_HEIGHT, FRAME_WIDTH
from evc.harness import Broker
from evc.outbox import Priority
from evc.wire import (
    Channel,
    DeviceTopic,
    Kind,
    Region,
    Sample,
    encode_detections,
    encode_map,
    encode_sample,
)

pytestmark = pytest.mark.integration

EPOCH = 1_764_201_600


def _message(site: str, channel: Channel, seq: int, rng: np.random.Generator) -> tuple[str, bytes]:
    device = "cam-0"
    topic = str(DeviceTopic(site, device, channel))
    header = {"origin": device, "epoch": EPOCH, "seq": seq, "ts_ms": 1_764_201_600_000 + seq}
    if channel is Channel.DETECTIONS:
        classes, scores, boxes = synthetic_detections(rng, 10)
        payload = encode_detections(
            **header, model_version="t", width=FRAME_WIDTH, height=FRAME_HEIGHT,
            class_ids=classes, scores=scores, boxes=boxes,
        )
    elif channel is Channel.SAMPLE:
        # A small crop of noise: about the size of the other records, so eviction is by class.
        pixels = rng.integers(0, 256, size=(5, 10, 3), dtype=np.uint8)
        sample = Sample(
            model_version="t", reason="random", width=FRAME_WIDTH, height=FRAME_HEIGHT,
            regions=(Region((0, 0, 10, 5), pixels),), class_ids=np.zeros(0, np.uint16),
            scores=np.zeros(0, np.float32), boxes=np.zeros((0, 4), np.float32),
        )
        payload = encode_sample(**header, sample=sample)
    else:
        kind = Kind.STATE if channel is Channel.STATE else Kind.HEARTBEAT
        payload = encode_map(kind, **header, fields={"state": "online", "n": seq})
    return topic, payload


def _stored(store_path: Path, site: str) -> list[tuple[int, int]]:
    """(kind, stored_ms) of every stored record of ``site``."""
    if not store_path.exists():
        return []
    with closing(sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)) as db:
        try:
            return db.execute(
                "SELECT kind, stored_ms FROM records WHERE site = ?", (site,)
            ).fetchall()
        except sqlite3.OperationalError:
            return []


def test_full_outbox_evicts_samples_first_and_the_backlog_drains_by_weight(
    evc_fog_broker: Broker,
    evc_cloud_broker: Broker,
    evc_topic_namespace: str,
    tmp_path: Path,
    raw_client_factory: Callable[..., RawClient],
) -> None:
    site = evc_topic_namespace
    store_path = tmp_path / "cloud" / "records.db"
    rng = np.random.default_rng(7)
    channels = [Channel.STATE, Channel.HEARTBEAT, Channel.DETECTIONS, Channel.SAMPLE]
    per_channel = 150
    with ExitStack() as stack:
        gateway = start_gateway(
            stack,
            gateway_config(
                site=site, state_dir=tmp_path / "gw", fog=evc_fog_broker, cloud=evc_cloud_broker,
                outbox=OutboxConfig(path=tmp_path / "gw" / "outbox.db", max_bytes=70_000),
                ingest=GatewayIngestConfig(max_payload_bytes=4096),
                # Small batches under a bandwidth cap spread the drain over time.
                forward=ForwardConfig(
                    batch_max_records=10, max_inflight=2, max_bytes_per_s=40_000,
                    burst_bytes=4_000,
                ),
            ),
        )
        wait_for(gateway.uplink.connected.is_set, message="the uplink to connect")
        evc_cloud_broker.stop()
        wait_for(lambda: not gateway.uplink.connected.is_set(), message="the uplink to drop")
        device = raw_client_factory(evc_fog_broker)
        for seq in range(1, per_channel + 1):
            for channel in channels:
                device.publish(*_message(site, channel, seq * 10 + channels.index(channel), rng))
        total = per_channel * len(channels)
        wait_for(
            # With eviction every message is inserted (older samples make room), so counted.
            lambda: committed(gateway) >= total,
            message="every message at the gateway",
        )
        drops = gateway.outbox.drop_counts()
        # Full: only samples were evicted, counted by reason and class, on disk and in metrics.
        assert drops, "the outbox never filled"
        assert set(drops) == {("evicted", int(Priority.SAMPLE))}
        assert sample_value(
            gateway.metrics.registry, "evc_gateway_outbox_dropped_total",
            {"reason": "evicted", "priority": "sample"},
        ) == drops[("evicted", int(Priority.SAMPLE))]
        kept_samples = per_channel - drops[("evicted", int(Priority.SAMPLE))]
        assert kept_samples > 0

        evc_cloud_broker.restart()
        start_cloud(
            stack,
            cloud_config(site=site, store_path=store_path, cloud=evc_cloud_broker),
        )
        expected = 3 * per_channel + kept_samples
        wait_for(
            lambda: len(_stored(store_path, site)) >= expected,
            timeout=60,
            message=lambda: (
                f"{expected} records stored, have {len(_stored(store_path, site))},"
                f" outbox {len(gateway.outbox)}, counters {gateway.uplink.counters}"
            ),
        )
        throttled = sample_value(
            gateway.metrics.registry, "evc_gateway_uplink_throttled_seconds_total"
        )

    stored = _stored(store_path, site)
    by_kind: dict[int, list[int]] = {}
    for kind, stored_ms in stored:
        by_kind.setdefault(kind, []).append(stored_ms)
    mean = {kind: sum(times) / len(times) for kind, times in by_kind.items()}
    # Higher classes arrive first on average (samples, a small backlog of weight 1, share
    # the link with detections by bytes once the higher classes have drained) ...
    assert mean[Kind.STATE] < mean[Kind.HEARTBEAT] < mean[Kind.DETECTIONS]
    assert mean[Kind.STATE] < mean[Kind.SAMPLE]
    # ... but samples are not starved: some arrive while detections still wait.
    assert min(by_kind[Kind.SAMPLE]) < max(by_kind[Kind.DETECTIONS])
    assert throttled > 0


def _send_through_gateway(
    *, compression: str, site: str, frames: list[tuple[int, bytes]], tmp_path: Path,
    fog: Broker, cloud: Broker, device: RawClient,
) -> tuple[float, int]:
    """Uplink bytes of a gateway that forwarded ``frames``, and the records it stored."""
    store_path = tmp_path / site / "records.db"
    with ExitStack() as stack:
        start_cloud(stack, cloud_config(site=site, store_path=store_path, cloud=cloud))
        gateway = start_gateway(
            stack,
            gateway_config(
                site=site, state_dir=tmp_path / site, fog=fog, cloud=cloud,
                forward=ForwardConfig(compression=compression),
            ),
        )
        wait_for(gateway.uplink.connected.is_set, message="the uplink to connect")
        cloud.stop()  # collect everything, then forward it in the same few batches
        wait_for(lambda: not gateway.uplink.connected.is_set(), message="the uplink to drop")
        topic = str(DeviceTopic(site, "cam-0", Channel.DETECTIONS))
        for _, payload in frames:
            device.publish(topic, payload)
        wait_for(lambda: committed(gateway) >= len(frames), message="every frame committed")
        cloud.restart()
        wait_for(lambda: len(_stored(store_path, site)) >= len(frames), message="all stored")
        uplink = sample_value(gateway.metrics.registry, "evc_gateway_uplink_bytes_total")
    return uplink, len(_stored(store_path, site))


def test_compressed_batches_are_stored_the_same_and_use_fewer_uplink_bytes(
    evc_fog_broker: Broker,
    evc_cloud_broker: Broker,
    evc_topic_namespace: str,
    tmp_path: Path,
    raw_client_factory: Callable[..., RawClient],
) -> None:
    rng = np.random.default_rng(3)
    frames = [
        (seq, _message(evc_topic_namespace, Channel.DETECTIONS, seq, rng)[1])
        for seq in range(1, 301)
    ]
    device = raw_client_factory(evc_fog_broker)
    results = {
        compression: _send_through_gateway(
            compression=compression, site=f"{evc_topic_namespace}-{compression}", frames=frames,
            tmp_path=tmp_path, fog=evc_fog_broker, cloud=evc_cloud_broker, device=device,
        )
        for compression in ("none", "zstd")
    }

    assert results["none"][1] == results["zstd"][1] == len(frames)
    assert results["zstd"][0] < results["none"][0]
    print(f"uplink bytes plain {results['none'][0]:.0f}, zstd {results['zstd'][0]:.0f}")
