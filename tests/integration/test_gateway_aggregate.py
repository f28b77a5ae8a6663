"""A gateway with an ``aggregate`` pipeline stores per-class summaries with exact counts."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack, closing
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    EvcProcess,
    RawClient,
    await_subscription,
    cloud_config,
    gateway_config,
    sample_value,
    scraped,
    start_cloud,
    start_gateway,
    wait_for,
    write_yaml,
)

from evc.config import MetricsConfig
from evc.harness import Broker, free_port
from evc.wire import Channel, DeviceTopic, Kind, decode, encode_detections
from evc.wire.derived import summaries_from

pytestmark = pytest.mark.integration

EPOCH = 1_700_000_000
T0_MS = 1_000_000
FRAMES = 30  # per device, 100 ms apart: three 1 s windows
DEVICES = ("cam-1", "cam-2")


def _frame(device: str, seq: int, ts_ms: int, classes: list[int]) -> bytes:
    n = len(classes)
    return encode_detections(
        origin=device, epoch=EPOCH, seq=seq, ts_ms=ts_ms, model_version="m-1", width=640,
        height=480, class_ids=classes, scores=[0.5] * n, boxes=[[10, 10, 50, 50]] * n,
    )


def _publish_stream(
    device: RawClient, site: str, rng: np.random.Generator, expected: Counter[tuple[str, int]],
    *, pause_s: float = 0.0,
) -> None:
    """FRAMES seeded frames per device, then a late empty frame that closes the last windows."""
    for seq in range(1, FRAMES + 1):
        for name in DEVICES:
            classes = rng.integers(0, 4, size=int(rng.integers(0, 6))).tolist()
            expected.update((name, c) for c in classes)
            topic = str(DeviceTopic(site, name, Channel.DETECTIONS))
            device.publish(topic, _frame(name, seq, T0_MS + 100 * seq, classes))
        time.sleep(pause_s)
    for name in DEVICES:
        topic = str(DeviceTopic(site, name, Channel.DETECTIONS))
        device.publish(topic, _frame(name, FRAMES + 1, T0_MS + 60_000, []))


def _summary_counts(store_path: Path, site: str) -> Counter[tuple[str, int]]:
    with closing(sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT payload FROM records WHERE site = ? AND kind = ?", (site, int(Kind.SUMMARY))
        ).fetchall()
    counts: Counter[tuple[str, int]] = Counter()
    for (payload,) in rows:
        envelope = decode(payload)
        summary = summaries_from(envelope)
        for cls, n in zip(summary.class_ids.tolist(), summary.counts.tolist(), strict=True):
            counts[envelope.origin, cls] += n
    return counts


def test_summary_counts_equal_the_published_detections(
    evc_fog_broker: Broker,
    evc_cloud_broker: Broker,
    evc_topic_namespace: str,
    tmp_path: Path,
    raw_client_factory: Callable[..., RawClient],
) -> None:
    site = evc_topic_namespace
    store_path = tmp_path / "cloud" / "records.db"
    rng = np.random.default_rng(42)
    expected: Counter[tuple[str, int]] = Counter()
    with ExitStack() as stack:
        start_cloud(stack, cloud_config(site=site, store_path=store_path, cloud=evc_cloud_broker))
        gateway = start_gateway(stack, gateway_config(
            site=site, state_dir=tmp_path / "gw", fog=evc_fog_broker, cloud=evc_cloud_broker,
            pipeline=[{"type": "aggregate", "window_s": 1}],
        ))
        device = raw_client_factory(evc_fog_broker)
        await_subscription(gateway, device, site, epoch=EPOCH + 1)
        _publish_stream(device, site, rng, expected)

        def aggregated() -> float:
            return sample_value(
                gateway.metrics.registry, "evc_gateway_pipeline_frames_total",
                {"operator": "aggregate", "outcome": "dropped", "reason": "aggregated"},
            )

        wait_for(lambda: aggregated() == len(DEVICES) * (FRAMES + 1),
                 message="every frame through the aggregator")
        wait_for(lambda: _summary_counts(store_path, site) == expected, timeout=30,
                 message="summaries summing to the published counts")
    assert sum(expected.values()) > 0


def test_summary_counts_stay_exact_across_a_sigkilled_gateway(
    evc_fog_broker: Broker,
    evc_cloud_broker: Broker,
    evc_topic_namespace: str,
    tmp_path: Path,
    raw_client_factory: Callable[..., RawClient],
    evc_process_factory: Callable[..., EvcProcess],
) -> None:
    site = evc_topic_namespace
    store_path = tmp_path / "cloud" / "records.db"
    port = free_port()
    config = write_yaml(tmp_path / "gateway.yaml", gateway_config(
        site=site, state_dir=tmp_path / "gw", fog=evc_fog_broker, cloud=evc_cloud_broker,
        metrics=MetricsConfig(port=port), pipeline=[{"type": "aggregate", "window_s": 1}],
    ))
    runs = iter(range(10))

    def start_gateway_process() -> EvcProcess:
        process = evc_process_factory(
            ["gateway", "run", "--config", str(config)], name=f"gateway-{next(runs)}"
        )
        wait_for(lambda: scraped(port, "evc_gateway_fog_connected") == 1.0,
                 message=lambda: f"the gateway to connect; its log:\n{process.log()}")
        return process

    def aggregated() -> float:
        return scraped(port, "evc_gateway_pipeline_frames_total", operator="aggregate",
                       outcome="dropped", reason="aggregated") or 0.0

    expected: Counter[tuple[str, int]] = Counter()
    with ExitStack() as stack:
        start_cloud(stack, cloud_config(site=site, store_path=store_path, cloud=evc_cloud_broker))
        gateway = start_gateway_process()
        device = raw_client_factory(evc_fog_broker)
        publisher = threading.Thread(target=_publish_stream, args=(
            device, site, np.random.default_rng(7), expected), kwargs={"pause_s": 0.02})
        publisher.start()
        try:
            # Kill it mid-stream, once it has counted a good part of the frames.
            wait_for(lambda: aggregated() >= FRAMES // 2, message="the gateway to aggregate")
            gateway.kill()
            gateway = start_gateway_process()
        finally:
            publisher.join()
        wait_for(lambda: _summary_counts(store_path, site) == expected, timeout=30,
                 message=lambda: f"exact summaries: {_summary_counts(store_path, site)} vs "
                 f"{expected}")
        assert gateway.terminate() == 0, gateway.log()
    assert sum(expected.values()) > 0
