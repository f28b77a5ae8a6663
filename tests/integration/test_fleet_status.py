"""Two devices through a real gateway to a real cloud ingest; one closes. The cloud's fleet view
and the gateway's per-device gauges agree: one online, one offline, each with its model."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest
from conftest import (
    cloud_config,
    finish_within,
    gateway_config,
    make_device,
    sample_value,
    start_cloud,
    start_gateway,
    wait_for,
)

from evc.cloud import SqliteRecordStore
from evc.cloud.fleet import FleetStatus, fleet_status
from evc.device import Device
from evc.harness import Broker

pytestmark = pytest.mark.integration


def _device(site: str, name: str, model: str, fog: Broker, state_dir: Path) -> Device:
    device = make_device(site, name, fog, state_dir)
    device.model_version = model  # reported in births, deaths and heartbeats
    return device.start()


def test_fleet_shows_one_device_online_and_one_offline_with_their_models(
    evc_fog_broker: Broker, evc_cloud_broker: Broker, evc_topic_namespace: str, tmp_path: Path
) -> None:
    site = evc_topic_namespace
    store_path = tmp_path / "cloud.db"
    with ExitStack() as stack:
        start_cloud(stack, cloud_config(site=site, store_path=store_path, cloud=evc_cloud_broker))
        gateway = start_gateway(stack, gateway_config(
            site=site, state_dir=tmp_path / "gw", fog=evc_fog_broker, cloud=evc_cloud_broker,
            ingest={"max_delay_ms": 20},
        ))
        wait_for(gateway.intake.connected.is_set, message="the gateway's fog connection")
        cam1 = _device(site, "cam-1", "m-1", evc_fog_broker, tmp_path / "d1")
        stack.callback(finish_within, cam1.close, "Device cam-1.close()")
        cam2 = _device(site, "cam-2", "m-2", evc_fog_broker, tmp_path / "d2")
        cam2_open = [True]  # the test closes cam-2; at unwind only if it failed before that
        stack.callback(lambda: cam2_open and finish_within(cam2.close, "Device cam-2.close()"))
        for device, p50 in ((cam1, 12.5), (cam2, 30.0)):
            device.publish_heartbeat(
                {"inference_ms_p50": p50, "fps": 9.5, "model_state": "serving", "group": "all"}
            )
        store = SqliteRecordStore(store_path)
        stack.callback(store.close)

        def fleet() -> FleetStatus:
            return fleet_status(store, site=site, stale_after_s=120)

        wait_for(lambda: len([d for d in fleet().devices() if d.fps]) == 2,
                 message=lambda: f"both heartbeats in the fleet view: {fleet()}")
        cam2_open.clear()
        finish_within(cam2.close, "Device cam-2.close()")  # a graceful death
        wait_for(lambda: {d.device: d.state for d in fleet().devices()}
                 == {"cam-1": "online", "cam-2": "offline"},
                 message=lambda: f"cam-2 offline in the fleet view: {fleet()}")

        [site_status] = fleet().sites
        [gw] = site_status.gateways
        assert (gw.gateway, gw.online_devices, gw.last_batch_age_s is not None) == ("gw-1", 1, True)
        devices = {d.device: d for d in gw.devices}
        assert (devices["cam-1"].model, devices["cam-1"].model_state) == ("m-1", "serving")
        assert devices["cam-1"].inference_ms_p50 == 12.5
        assert devices["cam-2"].model == "m-2"

        registry = gateway.metrics.registry
        wait_for(lambda: sample_value(registry, "evc_gateway_devices", {"state": "offline"}) == 1,
                 message="the gateway to count cam-2 offline")
        assert sample_value(registry, "evc_gateway_devices", {"state": "online"}) == 1
        for name, model, p50 in (("cam-1", "m-1", 0.0125), ("cam-2", "m-2", 0.03)):
            labels = {"device": name, "model": model, "state": "serving"}
            assert sample_value(registry, "evc_gateway_device_model_info", labels) == 1
            assert sample_value(
                registry, "evc_gateway_device_inference_p50_seconds", {"device": name}
            ) == pytest.approx(p50)
            assert sample_value(
                registry, "evc_gateway_device_last_heartbeat_timestamp_seconds",
                {"device": name},
            ) > 0
