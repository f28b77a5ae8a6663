"""The cloud pushes a new pipeline to a running gateway: bad ones are refused, good ones applied."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import (
    RawClient,
    cloud_config,
    committed,
    gateway_config,
    run_evc,
    start_cloud,
    start_gateway,
    wait_for,
)

from evc.config import GatewayConfig
from evc.gateway import Gateway
from evc.gateway.commands import Reply, push_pipeline
from evc.harness import Broker
from evc.wire import (
    Channel,
    DeviceTopic,
    Kind,
    decode,
    detections_from,
    encode_detections,
    encode_map,
)

pytestmark = pytest.mark.integration

EPOCH = 1_700_000_000
LOOSE = [{"type": "threshold", "default": 0.5}]
STRICT = [{"type": "threshold", "default": 0.8}]
BAD_ZONE = [
    {"type": "threshold", "default": 0.1},
    {"type": "zones", "mode": "drop", "devices": {"cam-1": [[[0, 0], [10, 10]]]}},
]


def _frame(seq: int) -> bytes:
    """Two detections: 0.6 passes the loose threshold only, 0.9 passes both."""
    return encode_detections(
        origin="cam-1", epoch=EPOCH, seq=seq, ts_ms=seq, model_version="m-1", width=640,
        height=480, class_ids=[0, 0], scores=[0.6, 0.9],
        boxes=[[10, 10, 20, 20], [30, 30, 40, 40]],
    )


def _stored_detections(store_path: Path, site: str, seq: int) -> int | None:
    if not store_path.exists():
        return None
    with closing(sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)) as db:
        try:
            row = db.execute(
                "SELECT payload FROM records WHERE site = ? AND kind = ? AND seq = ?",
                (site, int(Kind.DETECTIONS), seq),
            ).fetchone()
        except sqlite3.OperationalError:  # the schema is not created yet
            return None
    return None if row is None else len(detections_from(decode(row[0])).scores)


class Site:
    """A device publishing raw frames to a gateway whose cloud side stores them."""

    def __init__(self, site: str, device: RawClient, store_path: Path) -> None:
        self.site = site
        self.device = device
        self.store_path = store_path
        self._beats = iter(range(1, 10_000))

    def wait_subscribed(self, gateway: Gateway) -> None:
        # Heartbeats (which the pipeline never sees) are repeated until the gateway subscribed.
        topic = str(DeviceTopic(self.site, "cam-1", Channel.HEARTBEAT))
        start = committed(gateway)

        def subscribed() -> bool:
            if committed(gateway) > start:
                return True
            beat = encode_map(Kind.HEARTBEAT, origin="cam-1", epoch=EPOCH + 1,
                              seq=next(self._beats), ts_ms=1, fields={"ok": True})
            self.device.publish(topic, beat)
            return False

        wait_for(subscribed, interval=0.2, message="the gateway's subscription")
        wait_for(gateway.commands.subscribed.is_set, message="the command subscription")

    def kept(self, seq: int) -> int:
        """Publish frame ``seq``; return how many of its two detections reached the cloud."""
        self.device.publish(str(DeviceTopic(self.site, "cam-1", Channel.DETECTIONS)), _frame(seq))
        found = wait_for(lambda: _stored_detections(self.store_path, self.site, seq),
                         message=f"frame {seq} stored")
        return int(found)


def _push(config: GatewayConfig, version: int, pipeline: list[Any]) -> Reply:
    return push_pipeline(
        address=config.cloud.address, site=config.site, gateway=config.gateway_id,
        version=version, pipeline=pipeline, timeout_s=20,
    )


def test_a_pushed_pipeline_is_validated_applied_and_kept_across_restarts(
    evc_fog_broker: Broker,
    evc_cloud_broker: Broker,
    evc_topic_namespace: str,
    tmp_path: Path,
    raw_client_factory: Callable[..., RawClient],
) -> None:
    site = evc_topic_namespace
    store_path = tmp_path / "cloud" / "records.db"
    config = gateway_config(site=site, state_dir=tmp_path / "gw", fog=evc_fog_broker,
                            cloud=evc_cloud_broker, pipeline=LOOSE)
    feed = Site(site, raw_client_factory(evc_fog_broker), store_path)
    with ExitStack() as stack:
        start_cloud(stack, cloud_config(site=site, store_path=store_path, cloud=evc_cloud_broker))
        with ExitStack() as first:
            gateway = start_gateway(first, config)
            feed.wait_subscribed(gateway)
            assert feed.kept(1) == 2

            bad = _push(config, 2, BAD_ZONE)
            assert (bad.applied, bad.result, bad.active_version) == (False, "rejected", 0)
            assert bad.errors[0].path.startswith("pipeline.1.zones.devices.cam-1")
            assert feed.kept(2) == 2  # still the old, loose pipeline

            good = _push(config, 2, STRICT)
            assert (good.applied, good.result, good.active_version) == (True, "applied", 2)
            assert feed.kept(3) == 1
            assert gateway.metrics.registry.get_sample_value(
                "evc_gateway_config_updates_total", {"result": "rejected"}
            ) == 1

        restarted = start_gateway(stack, config)
        assert restarted.commands.active_version == 2
        feed.wait_subscribed(restarted)
        assert feed.kept(4) == 1
        again = _push(config, 2, STRICT)
        assert (again.applied, again.result, again.active_version) == (True, "stale", 2)


def test_the_cli_exits_0_when_applied_and_1_when_rejected(
    evc_fog_broker: Broker,
    evc_cloud_broker: Broker,
    evc_topic_namespace: str,
    tmp_path: Path,
) -> None:
    config = gateway_config(site=evc_topic_namespace, state_dir=tmp_path / "gw",
                            fog=evc_fog_broker, cloud=evc_cloud_broker, pipeline=LOOSE)
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(yaml.safe_dump({"pipeline": STRICT}))
    bad.write_text(yaml.safe_dump([{"type": "no-such-operator"}]))
    base = ["gateway", "configure", "--cloud", evc_cloud_broker.url, "--site",
            evc_topic_namespace, "--gateway", config.gateway_id, "--timeout", "20"]
    with ExitStack() as stack:
        gateway = start_gateway(stack, config)
        wait_for(gateway.commands.subscribed.is_set, message="the command subscription")

        applied = run_evc([*base, "--pipeline", str(good), "--version", "5"], cwd=tmp_path)
        rejected = run_evc([*base, "--pipeline", str(bad), "--version", "6"], cwd=tmp_path)

        assert applied.returncode == 0, applied.stdout + applied.stderr
        assert "applied" in applied.stdout
        assert rejected.returncode == 1, rejected.stdout + rejected.stderr
        assert "pipeline.0:" in rejected.stdout
        assert gateway.commands.active_version == 5
    usage = run_evc([*base, "--pipeline", str(tmp_path / "missing.yaml"), "--version", "7"],
                    cwd=tmp_path)
    assert usage.returncode == 2
