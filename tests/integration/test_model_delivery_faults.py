"""Model delivery under faults and hostile input, on real Mosquitto brokers.

Full disks, an evicting cache, a fog broker that lost its retained messages, junk on a device's
CHUNK topic, a reboot after a rollback: each must neither stop delivery for good nor hide why.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import RawClient, finish_within, wait_for

from evc.cloud.models import ModelService
from evc.cloud.registry import ModelRegistry
from evc.cloud.rollout import RolloutController
from evc.cloud.store import SqliteRecordStore
from evc.device.model_slot import ModelSlot
from evc.device.updates import ModelUpdater
from evc.gateway.models import ModelRelay
from evc.harness import Broker
from evc.inference.detector import Detector
from evc.metrics import GatewayMetrics
from evc.models.signing import SignedManifest, SigningKey, TrustedKeys, generate_keypair
from evc.mqtt.client import BrokerAddress
from evc.synthetic.sample_model import sample_model_copy, sample_model_path
from evc.wire import Channel, DeviceTopic

pytestmark = pytest.mark.integration

DEV_FULL = Path("/dev/full")


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
    v3: SignedManifest
    folder: Path


def _sample(metrics: GatewayMetrics, name: str, labels: dict[str, str] | None = None) -> float:
    return metrics.registry.get_sample_value(name, labels or {}) or 0.0


def _relayed(site: Site) -> float:
    return _sample(site.metrics, "evc_gateway_model_manifests_total", {"result": "relayed"})


@pytest.fixture
def make_site(
    evc_fog_broker: Broker, evc_cloud_broker: Broker, tmp_path: Path
) -> Iterator[Callable[..., Site]]:
    with ExitStack() as stack:

        def make(*, cache_max_bytes: int | None = None, start: bool = True) -> Site:
            name = f"s{uuid.uuid4().hex[:8]}"
            keys = generate_keypair(tmp_path / "keys")
            key = SigningKey.load(keys.private_path)
            trusted = TrustedKeys.load([keys.public_path])
            store = SqliteRecordStore(tmp_path / "cloud.db")
            stack.callback(store.close)
            service = ModelService(
                address=_address(evc_cloud_broker), registry=tmp_path / "registry", store=store,
                tick_s=0.2,
            )
            service.start()
            stack.callback(finish_within, service.stop, "ModelService.stop()")
            registry = service.registry
            registry.publish(name="shapes", version="1", artifact=sample_model_path(), key=key)
            v2 = registry.publish(
                name="shapes", version="2", key=key,
                artifact=sample_model_copy(tmp_path / "v2.onnx", version="2"),
            )
            v3 = registry.publish(
                name="shapes", version="3", key=key,
                artifact=sample_model_copy(tmp_path / "v3.onnx", version="3"),
            )
            metrics = GatewayMetrics()
            folder = tmp_path / "gateway-models"
            relay = ModelRelay(
                site=name, gateway_id="gw-1", fog=_address(evc_fog_broker),
                cloud=_address(evc_cloud_broker), folder=folder,
                trusted=trusted, metrics=metrics.models, cache_max_bytes=cache_max_bytes,
            )
            if start:
                relay.start()
            stack.callback(finish_within, relay.stop, "ModelRelay.stop()", 45.0)
            assert service.controller is not None
            return Site(name, service, relay, metrics, key, trusted, service.controller, v2, v3,
                        folder)

        yield make


@pytest.fixture
def start_device(
    evc_fog_broker: Broker, tmp_path: Path
) -> Iterator[Callable[..., ModelUpdater]]:
    updaters: list[ModelUpdater] = []

    def start(
        site: Site, device: str, *, group: str = "all",
        before_start: Callable[[Path], None] | None = None,
        detector_factory: Callable[[Path], object] | None = None,
    ) -> ModelUpdater:
        folder = tmp_path / device
        slot = ModelSlot(models_dir=folder / "models", initial=sample_model_path(),
                         detector_factory=detector_factory)  # type: ignore[arg-type]
        updater = ModelUpdater(
            site=site.name, device_id=device, group=group, address=_address(evc_fog_broker),
            slot=slot, trusted=site.trusted, folder=folder / "downloads", fetch_timeout_s=10,
        )
        if before_start is not None:
            before_start(folder / "downloads")
        updater.start()
        updaters.append(updater)
        return updater

    yield start
    for updater in updaters:
        finish_within(updater.stop, "ModelUpdater.stop()", 30.0)


def _disk_full_sidecar(cache_root: Path, sha256: str) -> Path:
    """Make the next sidecar write of ``sha256``'s partial download fail with ENOSPC, as on a
    full disk: its temporary file is a symlink to /dev/full."""
    partial = cache_root / "partial"
    partial.mkdir(parents=True, exist_ok=True)
    link = partial / f"{sha256}.tmp"
    link.symlink_to(DEV_FULL)
    return link


def test_a_full_gateway_disk_during_a_fetch_is_counted_and_retried(
    make_site: Callable[..., Site], start_device: Callable[..., ModelUpdater],
) -> None:
    """A disk error while the gateway writes a chunk is counted as `io` and the fetch is
    retried with back-off, so devices get the model once the disk has room again."""
    site = make_site(start=False)
    sha = site.v2.manifest.sha256
    link = _disk_full_sidecar(site.folder / "artifacts", sha)
    site.relay.start()
    device = start_device(site, "cam-1")

    site.controller.set_default(site=site.name, name="shapes", version="2")
    partial = site.folder / "artifacts" / "partial" / f"{sha}.part"
    wait_for(partial.exists, message="the gateway to start fetching v2")
    time.sleep(2.0)  # the first chunk hits the full disk
    assert _relayed(site) == 0
    wait_for(
        lambda: _sample(site.metrics, "evc_gateway_model_refused_total", {"reason": "io"}) >= 1,
        message="the disk error counted",
    )
    link.unlink()  # room again

    wait_for(
        lambda: device.slot.status().version == "2", timeout=25,
        message=lambda: (
            "the device to get v2 after the gateway's disk has room again; relayed "
            f"{_relayed(site)}, refused "
            f"{_sample(site.metrics, 'evc_gateway_model_refused_total', {'reason': 'io'})}"
        ),
    )


def test_a_full_device_disk_during_a_fetch_is_reported_and_retried(
    make_site: Callable[..., Site], start_device: Callable[..., ModelUpdater],
) -> None:
    """A disk error during a device's fetch shows in its heartbeat (`model_refused`, reason
    `io`) and the fetch is retried with back-off until the disk has room again."""
    site = make_site()
    sha = site.v2.manifest.sha256
    holder: dict[str, Path] = {}

    def fill_disk(downloads: Path) -> None:
        holder["link"] = _disk_full_sidecar(downloads, sha)

    device = start_device(site, "cam-1", before_start=fill_disk)
    site.controller.set_default(site=site.name, name="shapes", version="2")
    wait_for(lambda: _relayed(site) >= 1, message="the gateway to relay v2")
    wait_for(lambda: device.fetcher.requests_sent >= 1, message="the device to start fetching")
    time.sleep(2.0)
    wait_for(lambda: device.refused["io"] >= 1, message="the disk error counted")
    assert int(device.heartbeat_fields()["model_refused"] or 0) >= 1
    holder["link"].unlink()  # room again

    wait_for(lambda: device.slot.status().version == "2", timeout=20,
             message="the device to get v2 after its disk has room again")


def test_the_gateway_keeps_the_site_default_while_caching_a_canary(
    make_site: Callable[..., Site], start_device: Callable[..., ModelUpdater],
) -> None:
    """The artifact of every announced manifest is pinned: with room for one artifact,
    fetching the canary's v3 does not evict v2, the site default a late device still needs."""
    site = make_site(cache_max_bytes=1_000_000)  # one ~0.8 MB artifact
    first = start_device(site, "cam-1")
    site.controller.set_default(site=site.name, name="shapes", version="2")
    wait_for(lambda: first.slot.status().version == "2", message="cam-1 on v2")

    site.controller.start(site=site.name, name="shapes", version="3", canary_group="canary")
    wait_for(lambda: _relayed(site) >= 2, message="the gateway to relay the canary's v3")

    late = start_device(site, "cam-late")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and late.slot.status().version != "2":
        time.sleep(0.2)
    assert late.slot.status().version == "2", (
        f"the site default v2 was evicted from the gateway cache; cam-late refused "
        f"{dict(late.fetcher.refused)}, still on {late.slot.status().version}"
    )


def test_a_fog_broker_that_lost_its_store_gets_the_desired_model_back(
    make_site: Callable[..., Site], start_device: Callable[..., ModelUpdater],
    evc_fog_broker: Broker,
) -> None:
    """The gateway announces its manifests again whenever it reconnects to the fog broker, so
    one that lost its retained store (killed before its autosave, or replaced) gets them back."""
    site = make_site()
    first = start_device(site, "cam-1")
    site.controller.set_default(site=site.name, name="shapes", version="2")
    wait_for(lambda: first.slot.status().version == "2", message="cam-1 on v2")

    evc_fog_broker.kill()
    for db in evc_fog_broker.workdir.rglob("mosquitto.db*"):
        db.unlink()  # what a crash before the next autosave loses, made deterministic
    evc_fog_broker.start()
    wait_for(site.relay.server.ready.is_set, message="the gateway back on the fog broker")

    late = start_device(site, "cam-late")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and late.slot.status().version != "2":
        time.sleep(0.2)
    assert late.slot.status().version == "2", "the desired manifest was never re-announced"


def test_an_idle_device_drops_whatever_arrives_on_its_chunk_topic(
    make_site: Callable[..., Site], start_device: Callable[..., ModelUpdater],
    raw_client_factory: Callable[..., RawClient], evc_fog_broker: Broker,
) -> None:
    """Between fetches a device keeps nothing that arrives on its CHUNK topic: a client on the
    fog broker publishing junk there costs it no memory, and no refusal of a later fetch."""
    site = make_site()
    device = start_device(site, "cam-1")
    wait_for(device.fetcher.ready.is_set, message="the device's chunk subscription")
    hostile = raw_client_factory(evc_fog_broker)
    topic = str(DeviceTopic(site.name, "cam-1", Channel.CHUNK))
    junk = os.urandom(512 * 1024)
    for _ in range(40):
        hostile.publish(topic, junk)
    time.sleep(1.0)
    queued = device.fetcher._inbox.qsize()
    held = queued * len(junk)
    assert held < 4 * 1024 * 1024, (
        f"an idle device holds {queued} junk messages ({held / 2**20:.0f} MiB) in memory"
    )
    wait_for(lambda: device.fetcher.ignored >= 40, message="the junk dropped")
    assert not device.fetcher.refused


def test_a_rollback_is_still_reported_after_a_reboot(tmp_path: Path) -> None:
    """A canary that rolled v2 back and rebooted before the cloud stored a heartbeat saying so
    still reports `model_failed`, so the rollout controller sees the rejection and halts."""
    v2 = sample_model_copy(tmp_path / "v2.onnx", version="2")
    key = SigningKey.load(generate_keypair(tmp_path / "keys").private_path)

    registry = ModelRegistry(tmp_path / "registry")
    signed = registry.publish(name="shapes", version="2", artifact=v2, key=key)
    fail_now = {"on": False}

    class FailsOnProbation:
        """The real v2 detector, that raises once told to (a model that breaks in the field)."""

        def __init__(self, path: Path) -> None:
            self._inner = Detector(path)
            self._v2 = Path(path).name != sample_model_path().name

        def __getattr__(self, name: str) -> object:
            return getattr(self._inner, name)

        def __call__(self, image: object) -> object:
            if self._v2 and fail_now["on"]:
                raise RuntimeError("v2 broke in the field")
            return self._inner(image)

    models = tmp_path / "models"
    slot = ModelSlot(models_dir=models, initial=sample_model_path(),
                     detector_factory=FailsOnProbation)  # type: ignore[arg-type]
    assert slot.install(signed.manifest, v2).installed
    fail_now["on"] = True
    slot.run(np.zeros((160, 160, 3), np.uint8))
    before = slot.heartbeat_fields()
    assert before["model_state"] == "rolled_back"
    assert before["model_failed"] == "2"

    rebooted = ModelSlot(models_dir=models, initial=sample_model_path())
    after = rebooted.heartbeat_fields()
    assert after["model_state"] == "rolled_back"
    assert after["model_failed"] == "2", f"after a reboot the heartbeat says {after}"
