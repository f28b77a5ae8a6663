"""Faults on real brokers: outages, SIGKILLed gateways, restarts and a full outbox.

Guarantees under test (docs/ARCHITECTURE.md, "Guarantees"): no accepted record is lost, each is
stored exactly once in the cloud, and a full outbox drops exactly what its policy says, counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    EvcProcess,
    Key,
    Published,
    RawClient,
    Stream,
    cloud_config,
    committed,
    gateway_config,
    publish_frames,
    received,
    sample_value,
    scraped,
    start_cloud,
    start_device,
    start_gateway,
    stored_keys,
    wait_for,
    wait_until_stored,
    write_yaml,
)

from evc.config import GatewayIngestConfig, MetricsConfig, OutboxConfig
from evc.harness import Broker, free_port
from evc.outbox import DropPolicy, NewRecord, Outbox, Priority
from evc.wire import Channel, DeviceTopic, Kind, decode

pytestmark = pytest.mark.integration

FPS = 50  # per device
OUTAGE_S = 30.0


def _assert_exactly_once(store_path: Path, site: str, published: Published) -> None:
    keys = stored_keys(store_path, site)
    assert len(keys) == len(set(keys)), "a record is stored twice"
    missing = set(published.keys) - set(keys)
    assert not missing, f"{len(missing)} of {len(published.keys)} published records lost"
    assert sorted(keys) == sorted(published.keys)


@pytest.mark.slow
def test_cloud_broker_outage_of_30_s_loses_nothing(
    evc_fog_broker: Broker, evc_cloud_broker: Broker, evc_topic_namespace: str, tmp_path: Path
) -> None:
    site = evc_topic_namespace
    store_path = tmp_path / "cloud" / "records.db"
    with ExitStack() as stack:
        ingest = start_cloud(
            stack, cloud_config(site=site, store_path=store_path, cloud=evc_cloud_broker)
        )
        gateway = start_gateway(
            stack,
            gateway_config(
                site=site, state_dir=tmp_path / "gw", fog=evc_fog_broker, cloud=evc_cloud_broker
            ),
        )
        devices = [
            start_device(stack, site, f"cam-{n}", evc_fog_broker, tmp_path / "dev")
            for n in range(2)
        ]
        wait_for(lambda: received(gateway, "state") >= 2, message="both births at the gateway")
        with Stream(devices, fps=FPS) as stream:
            wait_for(lambda: stream.count >= 100, message="the stream to start")
            evc_cloud_broker.stop()
            wait_for(lambda: not gateway.uplink.connected.is_set(), message="the uplink to drop")
            backlog_before = len(gateway.outbox)
            time.sleep(OUTAGE_S)  # the outage itself, while the stream goes on
            # The gateway kept accepting: everything since the cut waits in its outbox.
            assert len(gateway.outbox) >= backlog_before + FPS * OUTAGE_S
            evc_cloud_broker.restart()
            at_restart = stream.count
            wait_for(lambda: stream.count >= at_restart + 100, message="traffic after restart")
        published = stream.published
        wait_until_stored(store_path, site, published.keys, timeout=60, gateway=gateway)
        wait_for(lambda: len(gateway.outbox) == 0, message="the outbox to drain")
        stats = ingest.store.stats()
        births = len(stored_keys(store_path, site, kind=int(Kind.STATE)))

    _assert_exactly_once(store_path, site, published)
    assert births == 2
    assert stats.by_kind[int(Kind.DETECTIONS)] == len(published.keys)
    # Besides the frames and births: only the gateway's own heartbeats (its outbox depth).
    gateway_beats = stats.by_device.get(f"{site}/gw-1", 0)
    assert stats.by_kind.get(int(Kind.HEARTBEAT), 0) == gateway_beats
    assert stats.records == len(published.keys) + births + gateway_beats
    assert stats.detections == published.detections
    # Redelivery after the outage is expected and harmless: counted, never stored twice.
    print(f"published {len(published.keys)}, cloud duplicates counter {stats.duplicates}")


@pytest.mark.slow
def test_gateway_sigkilled_three_times_loses_nothing(
    evc_fog_broker: Broker,
    evc_cloud_broker: Broker,
    evc_topic_namespace: str,
    tmp_path: Path,
    evc_process_factory: Callable[..., EvcProcess],
) -> None:
    site = evc_topic_namespace
    store_path = tmp_path / "cloud" / "records.db"
    port = free_port()
    config = write_yaml(
        tmp_path / "gateway.yaml",
        gateway_config(
            site=site,
            state_dir=tmp_path / "gw",
            fog=evc_fog_broker,
            cloud=evc_cloud_broker,
            metrics=MetricsConfig(port=port),
        ),
    )
    runs = 0

    def start_gateway_process() -> EvcProcess:
        nonlocal runs
        process = evc_process_factory(
            ["gateway", "run", "--config", str(config)], name=f"gateway-{runs}"
        )
        runs += 1
        wait_for(
            lambda: scraped(port, "evc_gateway_fog_connected") == 1.0,
            message=lambda: f"gateway run {runs} to connect; its log:\n{process.log()}",
        )
        return process

    def committed_since_start() -> float:
        return scraped(port, "evc_gateway_committed_records_total") or 0.0

    with ExitStack() as stack:
        start_cloud(stack, cloud_config(site=site, store_path=store_path, cloud=evc_cloud_broker))
        gateway = start_gateway_process()
        devices = [
            start_device(stack, site, f"cam-{n}", evc_fog_broker, tmp_path / "dev")
            for n in range(2)
        ]
        wait_for(
            lambda: (
                scraped(port, "evc_gateway_received_messages_total", channel="state") or 0
            ) >= 2,
            message="both births at the gateway",
        )
        with Stream(devices, fps=FPS) as stream:
            for _ in range(3):
                # Kill it mid-stream, once it has committed a good part of a second's traffic.
                wait_for(lambda: committed_since_start() >= FPS, message="the gateway to work")
                gateway.kill()
                at_kill = stream.count
                wait_for(
                    lambda at_kill=at_kill: stream.count >= at_kill + FPS,
                    message="traffic while down",
                )
                gateway = start_gateway_process()
            wait_for(lambda: committed_since_start() >= FPS, message="the last gateway to work")
        published = stream.published
        wait_until_stored(store_path, site, published.keys, timeout=60)
        assert gateway.terminate() == 0, gateway.log()

    _assert_exactly_once(store_path, site, published)


@pytest.mark.slow
def test_fog_broker_restart_loses_nothing(
    evc_fog_broker: Broker, evc_cloud_broker: Broker, evc_topic_namespace: str, tmp_path: Path
) -> None:
    site = evc_topic_namespace
    store_path = tmp_path / "cloud" / "records.db"
    with ExitStack() as stack:
        ingest = start_cloud(
            stack, cloud_config(site=site, store_path=store_path, cloud=evc_cloud_broker)
        )
        gateway = start_gateway(
            stack,
            gateway_config(
                site=site, state_dir=tmp_path / "gw", fog=evc_fog_broker, cloud=evc_cloud_broker
            ),
        )
        devices = [
            start_device(stack, site, f"cam-{n}", evc_fog_broker, tmp_path / "dev")
            for n in range(2)
        ]
        wait_for(lambda: received(gateway, "state") >= 2, message="both births at the gateway")
        with Stream(devices, fps=FPS) as stream:
            wait_for(lambda: stream.count >= 100, message="the stream to start")
            evc_fog_broker.stop()
            wait_for(
                lambda: not any(device.connected for device in devices),
                message="the devices to notice the outage",
            )
            # QoS 1 from the device's side: frames wait in each device's buffer meanwhile.
            wait_for(
                lambda: sum(device.buffered for device in devices) >= 2 * FPS,
                message="frames buffered on the devices",
            )
            evc_fog_broker.restart()
            at_restart = stream.count
            wait_for(lambda: stream.count >= at_restart + 100, message="traffic after restart")
        published = stream.published
        wait_until_stored(store_path, site, published.keys, timeout=60)
        stats = ingest.store.stats()

    _assert_exactly_once(store_path, site, published)
    assert stats.by_kind[int(Kind.DETECTIONS)] == len(published.keys)
    assert stats.detections == published.detections


def test_cloud_broker_restart_while_cloud_ingest_is_down_loses_nothing(
    evc_fog_broker: Broker, evc_cloud_broker: Broker, evc_topic_namespace: str, tmp_path: Path
) -> None:
    """A cloud worker being redeployed while its broker restarts: the gateway keeps forwarding.

    Mosquitto 2.0 does not restore the worker's shared subscription after the restart, so the
    broker answers the gateway's batches with "no matching subscribers": the gateway must keep
    them in its outbox (not delete them on that PUBACK) until the worker is back.
    """
    site = evc_topic_namespace
    store_path = tmp_path / "cloud" / "records.db"
    config = cloud_config(site=site, store_path=store_path, cloud=evc_cloud_broker)
    published = Published()
    rng = np.random.default_rng(6)
    with ExitStack() as stack:
        with ExitStack() as first_run:  # creates the worker's session and subscription
            start_cloud(first_run, config)
        gateway = start_gateway(
            stack,
            gateway_config(
                site=site, state_dir=tmp_path / "gw", fog=evc_fog_broker, cloud=evc_cloud_broker
            ),
        )
        device = start_device(stack, site, "cam-0", evc_fog_broker, tmp_path / "dev")
        wait_for(lambda: received(gateway, "state") >= 1, message="the birth at the gateway")
        publish_frames(device, 100, rng, published)
        wait_for(lambda: len(gateway.outbox) == 0, message="the first frames forwarded")
        evc_cloud_broker.restart()
        publish_frames(device, 100, rng, published)
        wait_for(
            lambda: committed(gateway) >= 201, message="the later frames at the gateway"
        )
        start_cloud(stack, config)
        wait_until_stored(store_path, site, published.keys, timeout=15, gateway=gateway)

    _assert_exactly_once(store_path, site, published)


# -- a full outbox -----------------------------------------------------------------------------

OUTBOX_CAP = 20_000
FRAMES = 400


def _row_sizes(watcher: RawClient, topic: str, count: int) -> dict[Key, int]:
    """Outbox size of every frame (as the gateway counts it), read from the fog broker."""
    wait_for(lambda: len(watcher.payloads(topic)) >= count, message="every frame at the watcher")
    sizes = {}
    for payload in watcher.payloads(topic):
        envelope = decode(payload)
        sizes[(envelope.origin, envelope.epoch, envelope.seq)] = NewRecord(topic, payload).size
    return sizes


def _outbox_keys(outbox: Outbox) -> tuple[list[Key], int]:
    """Keys of the detection rows in the outbox (oldest first) and the bytes of the others."""
    rows = outbox.peek(max_records=100_000, max_bytes=1 << 30)
    keys, other_bytes = [], 0
    for row in sorted(rows, key=lambda r: r.id):
        envelope = decode(row.payload)
        if envelope.kind is Kind.DETECTIONS:
            keys.append((envelope.origin, envelope.epoch, envelope.seq))
        else:
            other_bytes += NewRecord(row.topic, row.payload).size
    return keys, other_bytes


@pytest.mark.parametrize("policy", [DropPolicy.EVICT_LOWEST_OLDEST, DropPolicy.REJECT_NEW])
def test_full_outbox_drops_exactly_by_policy(
    *,
    policy: DropPolicy,
    evc_fog_broker: Broker,
    evc_cloud_broker: Broker,
    evc_topic_namespace: str,
    tmp_path: Path,
    raw_client_factory: Callable[..., RawClient],
) -> None:
    site = evc_topic_namespace
    store_path = tmp_path / "cloud" / "records.db"
    topic = str(DeviceTopic(site, "cam-0", Channel.DETECTIONS))
    watcher = raw_client_factory(evc_fog_broker)
    watcher.subscribe(topic)
    published = Published()
    with ExitStack() as stack:
        start_cloud(stack, cloud_config(site=site, store_path=store_path, cloud=evc_cloud_broker))
        gateway = start_gateway(
            stack,
            gateway_config(
                site=site,
                state_dir=tmp_path / "gw",
                fog=evc_fog_broker,
                cloud=evc_cloud_broker,
                outbox=OutboxConfig(
                    path=tmp_path / "gw" / "outbox.db", max_bytes=OUTBOX_CAP, drop_policy=policy
                ),
                # A tiny outbox must still hold the largest message the gateway may accept.
                ingest=GatewayIngestConfig(max_payload_bytes=4096),
            ),
        )
        wait_for(gateway.uplink.connected.is_set, message="the uplink to connect")
        evc_cloud_broker.stop()
        wait_for(lambda: not gateway.uplink.connected.is_set(), message="the uplink to drop")
        device = start_device(stack, site, "cam-0", evc_fog_broker, tmp_path / "dev")
        wait_for(lambda: received(gateway, "state") >= 1, message="the birth at the gateway")
        publish_frames(device, FRAMES, np.random.default_rng(4), published)
        wait_for(lambda: received(gateway, "det") >= FRAMES, message="every frame at the gateway")
        sizes = _row_sizes(watcher, topic, FRAMES)
        kept, other_bytes = _outbox_keys(gateway.outbox)
        drops = gateway.outbox.drop_counts()
        assert gateway.outbox.bytes <= OUTBOX_CAP
        assert 0 < len(kept) < FRAMES
        if policy is DropPolicy.EVICT_LOWEST_OLDEST:
            reason = "evicted"
            # The newest frames that fit; the next older one would not have fitted.
            assert kept == published.keys[-len(kept) :]
            next_older = published.keys[-len(kept) - 1]
            assert other_bytes + sum(sizes[k] for k in kept) + sizes[next_older] > OUTBOX_CAP
        else:
            reason = "rejected"
            # The oldest frames, each admitted if it still fitted when it arrived.
            expected, total = [], other_bytes
            for key in published.keys:
                if total + sizes[key] <= OUTBOX_CAP:
                    expected.append(key)
                    total += sizes[key]
            assert kept == expected
            assert kept[0] == published.keys[0]
        assert drops == {(reason, int(Priority.DETECTION)): FRAMES - len(kept)}
        assert sample_value(
            gateway.metrics.registry,
            "evc_gateway_outbox_dropped_total",
            {"reason": reason, "priority": "detection"},
        ) == FRAMES - len(kept)

        evc_cloud_broker.restart()
        wait_until_stored(store_path, site, kept, timeout=20, gateway=gateway)
        wait_for(lambda: len(gateway.outbox) == 0, message="the outbox to drain")
        assert sorted(stored_keys(store_path, site)) == sorted(kept)
