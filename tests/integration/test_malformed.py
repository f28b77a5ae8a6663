"""Bad input on the gateway's device topics is rejected, counted by reason and survived."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import msgpack
import numpy as np
import pytest
from conftest import (
    Key,
    RawClient,
    cloud_config,
    committed,
    gateway_config,
    rejected,
    start_cloud,
    start_gateway,
    stored_keys,
    wait_for,
    wait_until_stored,
)

from evc.config import GatewayIngestConfig
from evc.device import synthetic_detections
from evc.harness import Broker
from evc.outbox import now_ms
from evc.wire import Channel, DeviceTopic, Kind, encode_detections

pytestmark = pytest.mark.integration

MAX_PAYLOAD = 4096
EPOCH = 1_700_000_000
DEVICE = "cam-1"
REASONS = ("malformed", "schema", "unknown_version", "oversized", "origin_mismatch", "topic")


def _frame(seq: int, *, origin: str = DEVICE, detections: int = 3) -> bytes:
    rng = np.random.default_rng(seq)
    classes, scores, boxes = synthetic_detections(rng, detections)
    return encode_detections(
        origin=origin,
        epoch=EPOCH,
        seq=seq,
        ts_ms=now_ms(),
        model_version="m-1",
        width=640,
        height=480,
        class_ids=classes,
        scores=scores,
        boxes=boxes,
    )


def _with_header(frame: bytes, **changes: object) -> bytes:
    """Re-pack a valid frame with some envelope fields replaced (by index name)."""
    fields = msgpack.unpackb(frame, raw=False)
    index = {"version": 0, "kind": 1, "origin": 2, "epoch": 3, "seq": 4, "ts_ms": 5}
    for name, value in changes.items():
        fields[index[name]] = value
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


def _bad_messages(site: str) -> list[tuple[str, str, bytes]]:
    """(reason, topic, payload) of each bad message, with a fresh seq for every valid header."""
    det = str(DeviceTopic(site, DEVICE, Channel.DETECTIONS))
    hb = str(DeviceTopic(site, DEVICE, Channel.HEARTBEAT))
    rng = np.random.default_rng(7)
    # 0xc1 is the one byte msgpack never uses, so these random bytes cannot decode.
    garbage = b"\xc1" + rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
    whole = _frame(900)
    oversized = _frame(901, detections=MAX_PAYLOAD // 10)
    assert len(oversized) > MAX_PAYLOAD
    return [
        ("malformed", det, garbage),
        ("malformed", det, whole[: len(whole) // 2]),
        ("schema", det, _with_header(_frame(902), seq="902")),
        ("unknown_version", det, _with_header(_frame(903), version=99)),
        ("oversized", det, oversized),
        ("origin_mismatch", det, _frame(904, origin="cam-2")),
        ("schema", hb, _frame(905)),
        # A device id with a space cannot be built into a topic by EVC; a raw client can.
        ("topic", f"evc/{site}/dev/cam 1/det", _frame(906, origin="cam 1")),
    ]


def test_bad_device_messages_are_rejected_counted_and_survived(
    evc_fog_broker: Broker,
    evc_cloud_broker: Broker,
    evc_topic_namespace: str,
    tmp_path: Path,
    raw_client_factory: Callable[..., RawClient],
) -> None:
    site = evc_topic_namespace
    store_path = tmp_path / "cloud" / "records.db"
    det = str(DeviceTopic(site, DEVICE, Channel.DETECTIONS))
    bad = _bad_messages(site)
    valid: list[Key] = []
    with ExitStack() as stack:
        ingest = start_cloud(
            stack, cloud_config(site=site, store_path=store_path, cloud=evc_cloud_broker)
        )
        gateway = start_gateway(
            stack,
            gateway_config(
                site=site,
                state_dir=tmp_path / "gw",
                fog=evc_fog_broker,
                cloud=evc_cloud_broker,
                ingest=GatewayIngestConfig(max_payload_bytes=MAX_PAYLOAD),
            ),
        )
        wait_for(gateway.intake.connected.is_set, message="the gateway to connect")
        device = raw_client_factory(evc_fog_broker)
        # The first valid frame is repeated until the gateway has it: then it is subscribed.

        def subscribed() -> bool:
            if committed(gateway) >= 1:
                return True
            device.publish(det, _frame(1))
            return False

        wait_for(subscribed, interval=0.2, message="the gateway's subscription")
        valid.append((DEVICE, EPOCH, 1))
        # Every bad message is followed by a valid one, which must still get through.
        for seq, (_, topic, payload) in enumerate(bad, start=2):
            device.publish(topic, payload)
            device.publish(det, _frame(seq))
            valid.append((DEVICE, EPOCH, seq))
        wait_until_stored(store_path, site, valid, timeout=30)
        stats = ingest.store.stats()

        assert gateway.intake.connected.is_set()
        expected = {reason: sum(1 for r, _, _ in bad if r == reason) for reason in REASONS}
        assert {reason: rejected(gateway, reason) for reason in REASONS} == expected
        assert rejected(gateway, "invalid") == 0
        # The cloud saw only good records: nothing for it to reject.
        cloud_rejections = [
            sample.value
            for metric in ingest.metrics.rejected.collect()
            for sample in metric.samples
            if sample.name == "evc_cloud_rejected_messages_total"
        ]
        assert sum(cloud_rejections) == 0

    assert sorted(stored_keys(store_path, site)) == sorted(valid)
    assert stats.records == len(valid)
    assert stats.by_kind == {int(Kind.DETECTIONS): len(valid)}
    assert stats.by_device == {f"{site}/{DEVICE}": len(valid)}
    assert stats.detections == 3 * len(valid)
