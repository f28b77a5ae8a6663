"""The cloud's part of model delivery: serve artifacts to gateways, publish desired models,
advance rollouts.

Gateways ask for chunks on ``evc/{site}/gw/{gateway}/model`` (one shared subscription, so one
cloud worker answers each request) and get them from the registry's content-addressed files.
Desired manifests are published retained on ``evc/{site}/model/{group}/desired``. The rollout
controller reads each device's latest heartbeat from the record store.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from evc.cloud.registry import ModelRegistry
from evc.cloud.rollout import DeviceReport, RolloutController, Stage
from evc.cloud.store import SqliteRecordStore
from evc.errors import EvcError
from evc.metrics import CloudMetrics
from evc.models import Manifest
from evc.models.signing import SignedManifest
from evc.models.transfer import ChunkServer
from evc.mqtt.client import BrokerAddress, connect_async, new_client
from evc.wire import ALL_DEVICES, Channel, DesiredModelTopic, gateway_filter

log = logging.getLogger(__name__)

SHARE_GROUP = "evc-models"


class PublishError(EvcError):
    """A desired manifest could not be published to the cloud broker."""


class RetainedPublisher:
    """Publishes desired manifests, retained, and waits for the broker to take each one."""

    def __init__(self, *, address: BrokerAddress, timeout_s: float = 10.0) -> None:
        self._timeout_s = timeout_s
        self._address = address
        self._connected = threading.Event()
        self._client = new_client(client_id=f"evc-models-{uuid.uuid4().hex[:12]}", address=address)
        self._client.on_connect = lambda *_a: self._connected.set()
        self._client.on_disconnect = lambda *_a: self._connected.clear()
        connect_async(self._client, address)
        self._client.loop_start()

    def __call__(self, site: str, group: str, manifest: SignedManifest | None) -> None:
        # paho refuses a publish before its first connection: wait for it, within reason.
        if not self._connected.wait(self._timeout_s):
            raise PublishError(f"cannot reach the cloud broker {self._address}")
        payload = b"" if manifest is None else manifest.to_json()
        info = self._client.publish(
            str(DesiredModelTopic(site, group)), payload, qos=1, retain=True
        )
        try:
            info.wait_for_publish(self._timeout_s)
        except (RuntimeError, ValueError) as exc:
            raise PublishError(f"cannot publish the model of {site}/{group}: {exc}") from exc
        if not info.is_published():
            raise PublishError(f"the cloud broker did not take the model of {site}/{group}")

    def close(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()


class StoreReports:
    """Each device's latest model report, from the store's view of its devices.

    Only devices that follow model updates count (their heartbeats carry ``model_sha256``),
    heard within ``window_s``, and not those whose last word was their death: a device that is
    gone, or that runs a fixed model, does not hold a rollout. Gateways are not devices.
    """

    def __init__(self, store: SqliteRecordStore, *, window_s: float = 300.0) -> None:
        self._store = store
        self._window_s = window_s

    def __call__(self, site: str) -> Sequence[DeviceReport]:
        since = int((time.time() - self._window_s) * 1000)
        return [
            _report(row.device, row.heartbeat_ms or row.last_seen_ms, row.heartbeat)
            for row in self._store.devices(site=site)
            if row.last_seen_ms >= since and row.online is not False
            and row.heartbeat.get("model_sha256")
        ]


def _report(device: str, ts_ms: int, fields: Mapping[str, object]) -> DeviceReport:
    def text(key: str) -> str | None:
        value = fields.get(key)
        return None if value is None else str(value)

    return DeviceReport(
        device=device, group=text("group") or ALL_DEVICES, model=text("model"),
        sha256=text("model_sha256"), state=text("model_state"), failed=text("model_failed"),
        failure=text("model_failure"), ts_ms=ts_ms, failed_sha256=text("model_failed_sha256"),
    )


class ModelService:
    """Chunk serving and rollouts, beside a cloud ingest worker.

    Args:
        address: the cloud broker.
        registry: the model registry folder.
        store: the record store the ingest fills (device heartbeats).
        rollouts: advance rollouts here (run it in one worker of a deployment only).
        tick_s: seconds between rollout steps.
        report_window_s: devices heard from within this window count in rollouts.
        metrics: where rollout stages, halts and served bytes are counted.
    """

    def __init__(
        self, *, address: BrokerAddress, registry: Path, store: SqliteRecordStore,
        rollouts: bool = True, tick_s: float = 2.0, report_window_s: float = 300.0,
        metrics: CloudMetrics | None = None,
    ) -> None:
        self.registry = ModelRegistry(registry)
        self.server = ChunkServer(
            address=address, request_filter=gateway_filter(Channel.MODEL, share_group=SHARE_GROUP),
            lookup=self._lookup,
        )
        self._tick_s = tick_s
        self._stop = threading.Event()
        self.publisher: RetainedPublisher | None = None
        self.controller: RolloutController | None = None
        self._address = address
        self.store = store
        self._rollouts = rollouts
        self._report_window_s = report_window_s
        self._ticker = threading.Thread(target=self._tick, name="rollouts", daemon=True)
        self._metrics = metrics
        self._artifacts: dict[str, tuple[Manifest, Path]] = {}
        if metrics is not None:
            metrics.model_served_bytes.read = lambda: self.server.bytes_served

    def start(self) -> None:
        """Serve chunks; advance rollouts in the background."""
        self.server.start()
        if self._rollouts:
            self.publisher = RetainedPublisher(address=self._address)
            self.controller = RolloutController(
                path=self.registry.root / "rollouts.db", registry=self.registry,
                publish=self.publisher,
                reports=StoreReports(self.store, window_s=self._report_window_s),
            )
            self._watch_stages()
            self._republish()
            self._ticker.start()

    def _republish(self) -> None:
        # A cloud broker that lost its retained store (a crash between autosaves, a new
        # broker) gets every desired manifest back when this worker starts.
        assert self.controller is not None
        try:
            self.controller.republish()
        except EvcError as exc:
            log.warning("could not republish the desired models: %s", exc)

    def _watch_stages(self) -> None:
        if self._metrics is None or self.controller is None:
            return
        controller = self.controller

        def counter(stage: Stage) -> Callable[[], float]:
            return lambda: float(sum(r.stage is stage for r in controller.rollouts()))

        for stage in Stage:
            self._metrics.rollouts.labels(stage.value).set_function(counter(stage))

    def stop(self) -> None:
        """Stop ticking, disconnect."""
        self._stop.set()
        if self._ticker.is_alive():
            self._ticker.join(timeout=10)
        self.server.stop()
        if self.publisher is not None:
            self.publisher.close()
        if self.controller is not None:
            self.controller.close()

    def _tick(self) -> None:
        assert self.controller is not None
        while not self._stop.wait(self._tick_s):
            try:
                for rollout in self.controller.tick():
                    if rollout.stage is Stage.HALTED and self._metrics is not None:
                        self._metrics.rollouts_halted.labels(rollout.site, rollout.name).inc()
                    log.info(
                        "rollout %d of %s:%s to %s is %s: %s", rollout.id, rollout.name,
                        rollout.version, rollout.site, rollout.stage.value, rollout.reason,
                    )
            except EvcError as exc:  # e.g. the broker is away: the next tick tries again
                log.warning("rollout step failed: %s", exc)

    def _lookup(self, sha256: str) -> tuple[Manifest, Path] | None:
        # Called for every chunk request, on paho's thread: a published artifact never changes,
        # so it is looked up in the registry (which reads every manifest) once.
        found = self._artifacts.get(sha256)
        if found is not None:
            return found
        signed = self.registry.find(sha256)
        path = self.registry.artifact_path(sha256) if signed is not None else None
        if signed is None or path is None:
            return None
        self._artifacts[sha256] = (signed.manifest, path)
        return signed.manifest, path
