"""Model delivery on real brokers: cloud registry -> gateway cache (once) -> devices, verified.

The cloud's ModelService serves the registry's artifacts; the gateway's ModelRelay fetches each
one once, verifies it and serves its devices from its cache; each device's ModelUpdater follows
the desired manifest into a real ONNX Runtime ModelSlot.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import RawClient, wait_for

from evc.cloud.models import ModelService
from evc.cloud.rollout import RolloutController
from evc.cloud.store import SqliteRecordStore
from evc.device.model_slot import ModelSlot
from evc.device.updates import ModelUpdater
from evc.gateway.models import ModelRelay
from evc.harness import Broker
from evc.metrics import GatewayMetrics
from evc.models.signing import SignedManifest, SigningKey, TrustedKeys, generate_keypair
from evc.mqtt.client import BrokerAddress
from evc.synthetic.sample_model import sample_model_copy, sample_model_path
from evc.wire import DesiredModelTopic

pytestmark = pytest.mark.integration


def _address(broker: Broker) -> BrokerAddress:
    return BrokerAddress.from_url(broker.url)


@dataclass
class Site:
    name: str
    service: ModelService
    relay: ModelRelay
    metrics: GatewayMetrics
    key: SigningKey
    trusted: TrustedKeys
    controller: RolloutController
    v2: SignedManifest


@pytest.fixture
def site(
    evc_fog_broker: Broker, evc_cloud_broker: Broker, tmp_path: Path
) -> Iterator[Site]:
    name = f"s{uuid.uuid4().hex[:8]}"
    keys = generate_keypair(tmp_path / "keys")
    key = SigningKey.load(keys.private_path)
    trusted = TrustedKeys.load([keys.public_path])
    with ExitStack() as stack:
        store = SqliteRecordStore(tmp_path / "cloud.db")
        stack.callback(store.close)
        service = ModelService(
            address=_address(evc_cloud_broker), registry=tmp_path / "registry", store=store,
            tick_s=0.2,
        )
        service.start()
        stack.callback(service.stop)
        registry = service.registry
        registry.publish(name="shapes", version="1", artifact=sample_model_path(), key=key)
        v2 = registry.publish(
            name="shapes", version="2", key=key,
            artifact=sample_model_copy(tmp_path / "v2.onnx", version="2"),
        )
        metrics = GatewayMetrics()
        relay = ModelRelay(
            site=name, gateway_id="gw-1", fog=_address(evc_fog_broker),
            cloud=_address(evc_cloud_broker), folder=tmp_path / "gateway-models",
            trusted=trusted, metrics=metrics.models,
        )
        relay.start()
        stack.callback(relay.stop)
        assert service.controller is not None
        yield Site(name, service, relay, metrics, key, trusted, service.controller, v2)


@pytest.fixture
def start_device(
    site: Site, evc_fog_broker: Broker, tmp_path: Path
) -> Iterator[Callable[..., ModelUpdater]]:
    updaters: list[ModelUpdater] = []

    def start(
        device: str, *, group: str = "all", trusted: TrustedKeys | None = None
    ) -> ModelUpdater:
        folder = tmp_path / device
        slot = ModelSlot(models_dir=folder / "models", initial=sample_model_path())
        updater = ModelUpdater(
            site=site.name, device_id=device, group=group, address=_address(evc_fog_broker),
            slot=slot, trusted=trusted or site.trusted, folder=folder / "downloads",
        ).start()
        updaters.append(updater)
        return updater

    yield start
    for updater in updaters:
        updater.stop()


def _sample(metrics: GatewayMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


def test_the_fog_fetches_once_and_every_device_swaps_to_the_desired_model(
    site: Site, start_device: Callable[..., ModelUpdater]
) -> None:
    devices = [start_device(f"cam-{n}") for n in range(4)]

    site.controller.set_default(site=site.name, name="shapes", version="2")

    for device in devices:
        wait_for(
            lambda d=device: d.slot.status().version == "2",  # type: ignore[misc]
            message=lambda d=device: f"{d.fetcher.request_topic}: {d.slot.status()}",  # type: ignore[misc]
        )
    size = site.v2.manifest.size
    # One copy crossed the uplink; four were served on the site's broker.
    assert site.service.server.bytes_served == size
    assert _sample(site.metrics, "evc_gateway_model_fetched_bytes_total") == size
    assert site.relay.server.bytes_served == 4 * size
    assert all(d.slot.status().state.value == "probation" for d in devices)
    assert all(d.refused == {} for d in devices)


def test_a_device_that_was_away_gets_the_model_from_the_fog_with_the_cloud_down(
    site: Site, start_device: Callable[..., ModelUpdater], evc_cloud_broker: Broker
) -> None:
    first = start_device("cam-1")
    site.controller.set_default(site=site.name, name="shapes", version="2")
    wait_for(lambda: first.slot.status().version == "2", message="the first device swapped")

    evc_cloud_broker.stop()
    late = start_device("cam-late")

    wait_for(lambda: late.slot.status().version == "2", message="the late device swapped")
    assert site.service.server.bytes_served == site.v2.manifest.size  # still one copy


def test_manifests_signed_by_an_unknown_key_are_refused_at_the_fog_and_on_the_device(
    site: Site, start_device: Callable[..., ModelUpdater], evc_cloud_broker: Broker,
    evc_fog_broker: Broker, raw_client_factory: Callable[..., RawClient], tmp_path: Path,
) -> None:
    device = start_device("cam-1")
    rogue = SigningKey.load(generate_keypair(tmp_path / "rogue").private_path)
    forged = rogue.sign(site.v2.manifest).to_json()
    topic = str(DesiredModelTopic(site.name))

    # Through the cloud: the gateway refuses it and never relays it.
    raw_client_factory(evc_cloud_broker).publish(topic, forged, retain=True)
    wait_for(
        lambda: _sample(
            site.metrics, "evc_gateway_model_refused_total", {"reason": "unknown_key"}
        ) == 1,
        message="the gateway's refusal",
    )
    # Straight onto the fog broker (a compromised box on the site's network): the device
    # verifies for itself.
    raw_client_factory(evc_fog_broker).publish(topic, forged, retain=True)
    wait_for(lambda: device.refused["unknown_key"] == 1, message="the device's refusal")

    # A tampered manifest under the right key id: the signature no longer verifies.
    tampered = SignedManifest.model_validate({
        **site.v2.model_dump(),
        "manifest": {**site.v2.manifest.model_dump(), "version": "99"},
    }).to_json()
    raw_client_factory(evc_fog_broker).publish(topic, tampered, retain=True)
    wait_for(lambda: device.refused["signature"] == 1, message="the signature refusal")

    assert device.slot.status().version != "2"
    assert site.service.server.bytes_served == 0
