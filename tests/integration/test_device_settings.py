"""Settings pushed from the cloud to a device through its gateway, on real brokers: a bad push is
rejected with key paths and changes nothing; a good one is applied, answered, and kept across a
device restart."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

import pytest
from conftest import gateway_config, make_device, start_gateway

from evc.config import PublishMode
from evc.device.commands import push_device_settings
from evc.harness import Broker
from evc.mqtt.client import BrokerAddress

pytestmark = pytest.mark.integration

SITE = "settings-site"


def test_a_pushed_setting_reaches_the_device_through_the_gateway(
    evc_fog_broker: Broker, evc_cloud_broker: Broker, tmp_path: Path
) -> None:
    cloud = BrokerAddress.from_url(evc_cloud_broker.url)
    with ExitStack() as stack:
        gateway = start_gateway(stack, gateway_config(
            site=SITE, state_dir=tmp_path / "gateway", fog=evc_fog_broker,
            cloud=evc_cloud_broker,
        ))
        device = make_device(SITE, "cam-1", evc_fog_broker, tmp_path / "device")
        device.accept_settings()
        device.start()
        stack.callback(device.close)
        assert device.change_filter.mode is PublishMode.EVERY_FRAME

        bad = push_device_settings(
            address=cloud, site=SITE, device="cam-1", version=1,
            settings={"publish": {"mode": "sometimes"}, "heartbeat_interval_s": -1},
        )
        assert bad.result == "rejected"
        assert not bad.applied
        assert {e.path for e in bad.errors} == {
            "settings.publish.mode", "settings.heartbeat_interval_s"
        }
        assert device.change_filter.mode is PublishMode.EVERY_FRAME  # nothing changed

        good = push_device_settings(
            address=cloud, site=SITE, device="cam-1", version=2,
            settings={"publish": {"mode": "on_change", "keyframe_interval_s": 30},
                      "sampling": {"enabled": True, "max_per_minute": 2}},
        )
        assert (good.result, good.applied, good.active_version) == ("applied", True, 2)
        assert device.change_filter.mode is PublishMode.ON_CHANGE
        assert device.change_filter.keyframe_interval_s == 30
        assert device.sampler is not None

        relayed = gateway.metrics.registry.get_sample_value(
            "evc_gateway_downlink_relayed_total", {"direction": "down"}
        )
        assert relayed is not None
        assert relayed >= 2

    # A restarted device comes up with the settings it last applied, before any push.
    again = make_device(SITE, "cam-1", evc_fog_broker, tmp_path / "device")
    commands = again.accept_settings()
    again.start()
    try:
        assert commands.active_version == 2
        assert again.change_filter.mode is PublishMode.ON_CHANGE
        assert again.sampler is not None
    finally:
        again.close(drain_timeout_s=0)
