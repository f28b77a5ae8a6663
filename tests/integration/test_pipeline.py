"""The happy path, end to end: devices -> fog broker -> gateway -> cloud broker -> cloud store."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    EvcProcess,
    Published,
    RawClient,
    cloud_config,
    gateway_config,
    publish_frames,
    received,
    run_evc,
    scraped,
    start_cloud,
    start_device,
    start_gateway,
    stored_keys,
    wait_for,
    wait_until_stored,
    write_yaml,
)

from evc.config import MetricsConfig
from evc.harness import Broker, free_port
from evc.wire import Channel, GatewayTopic, Kind, decode, map_from

pytestmark = pytest.mark.integration

DEVICES = 3
FRAMES = 100


def _state_of(payload: bytes) -> str:
    envelope = decode(payload)
    assert envelope.kind is Kind.STATE
    return str(map_from(envelope)["state"])


def test_devices_to_cloud_store_exactly_once(
    evc_fog_broker: Broker,
    evc_cloud_broker: Broker,
    evc_topic_namespace: str,
    tmp_path: Path,
    raw_client_factory: Callable[..., RawClient],
) -> None:
    site = evc_topic_namespace
    store_path = tmp_path / "cloud" / "records.db"
    gw_config = gateway_config(
        site=site, state_dir=tmp_path / "gw", fog=evc_fog_broker, cloud=evc_cloud_broker
    )
    watcher = raw_client_factory(evc_cloud_broker)
    watcher.subscribe(str(GatewayTopic(site, "gw-1", Channel.STATE)))
    published = Published()
    rng = np.random.default_rng(1)
    with ExitStack() as stack:
        ingest = start_cloud(
            stack, cloud_config(site=site, store_path=store_path, cloud=evc_cloud_broker)
        )
        gateway = start_gateway(stack, gw_config)
        devices = [
            start_device(stack, site, f"cam-{n}", evc_fog_broker, tmp_path / "dev")
            for n in range(DEVICES)
        ]
        # Each device's birth reaching the gateway proves the gateway's subscription is live.
        wait_for(
            lambda: received(gateway, "state") >= DEVICES,
            message="the births of every device at the gateway",
        )
        for device in devices:
            publish_frames(device, FRAMES, rng, published)
        wait_until_stored(store_path, site, published.keys, timeout=30)
        stats = ingest.store.stats()
        birth = wait_for(watcher.payloads, message="the gateway's birth")
        assert _state_of(birth[0]) == "online"

    keys = stored_keys(store_path, site)
    assert len(keys) == DEVICES * FRAMES
    assert sorted(keys) == sorted(published.keys)
    assert stats.by_kind[int(Kind.DETECTIONS)] == DEVICES * FRAMES
    assert stats.detections == published.detections
    assert stats.duplicates == 0
    for n in range(DEVICES):
        # The frames plus the device's birth (state), nothing else: heartbeats are off.
        assert stats.by_device[f"{site}/cam-{n}"] == FRAMES + 1
    # A graceful stop replaces the retained birth with the gateway's death.
    wait_for(lambda: len(watcher.payloads()) >= 2, message="the gateway's death")
    assert _state_of(watcher.payloads()[-1]) == "offline"


@pytest.mark.slow
def test_cli_gateway_and_cloud_end_to_end(
    evc_fog_broker: Broker,
    evc_cloud_broker: Broker,
    evc_topic_namespace: str,
    tmp_path: Path,
    evc_process_factory: Callable[..., EvcProcess],
) -> None:
    site = evc_topic_namespace
    store_path = tmp_path / "cloud" / "records.db"
    gw_port, cloud_port = free_port(), free_port()
    gw_yaml = write_yaml(
        tmp_path / "gateway.yaml",
        gateway_config(
            site=site,
            state_dir=tmp_path / "gw",
            fog=evc_fog_broker,
            cloud=evc_cloud_broker,
            metrics=MetricsConfig(port=gw_port),
        ),
    )
    cloud_yaml = write_yaml(
        tmp_path / "cloud.yaml",
        cloud_config(
            site=site,
            store_path=store_path,
            cloud=evc_cloud_broker,
            metrics=MetricsConfig(port=cloud_port),
        ),
    )
    cloud = evc_process_factory(["cloud", "run", "--config", str(cloud_yaml)], name="cloud")
    wait_for(
        lambda: scraped(cloud_port, "evc_cloud_connected") == 1.0,
        message=lambda: f"the cloud worker to connect; its log:\n{cloud.log()}",
    )
    gateway = evc_process_factory(["gateway", "run", "--config", str(gw_yaml)], name="gateway")
    wait_for(
        lambda: (
            scraped(gw_port, "evc_gateway_cloud_connected") == 1.0
            and scraped(gw_port, "evc_gateway_fog_connected") == 1.0
        ),
        message=lambda: f"the gateway to connect; its log:\n{gateway.log()}",
    )
    published = Published()
    rng = np.random.default_rng(2)
    with ExitStack() as stack:
        devices = [
            start_device(stack, site, f"cam-{n}", evc_fog_broker, tmp_path / "dev")
            for n in range(2)
        ]
        wait_for(
            lambda: (
                scraped(gw_port, "evc_gateway_received_messages_total", channel="state") or 0
            ) >= 2,
            message="the births of both devices at the gateway",
        )
        for device in devices:
            publish_frames(device, FRAMES, rng, published)
        wait_until_stored(store_path, site, published.keys, timeout=30)
    # The devices' graceful deaths travel the same path; wait for them before stopping.
    wait_for(
        lambda: len(stored_keys(store_path, site, kind=int(Kind.STATE))) == 4,
        message="two births and two deaths in the cloud store",
    )
    assert (scraped(gw_port, "evc_gateway_committed_records_total") or 0) >= 2 * FRAMES + 2
    assert gateway.terminate() == 0, gateway.log()
    assert cloud.terminate() == 0, cloud.log()

    result = run_evc(["cloud", "stats", "--config", str(cloud_yaml), "--json"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    # Two births and two graceful deaths (state records) beside the frames.
    assert stats["by_kind"] == {"detections": 2 * FRAMES, "state": 4}
    assert stats["records"] == 2 * FRAMES + 4
    assert stats["detections"] == published.detections
    assert stats["duplicates"] == 0
    assert stats["by_device"] == {f"{site}/cam-0": FRAMES + 2, f"{site}/cam-1": FRAMES + 2}
