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
from collections.abc import Mapping, Sequence
from pathlib import Path

from evc.cloud.registry import ModelRegistry
from evc.cloud.rollout import DeviceReport, RolloutController
from evc.cloud.store import SqliteRecordStore
from evc.errors import EvcError
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
        self._client = new_client(client_id=f"evc-models-{uuid.uuid4().hex[:12]}", address=address)
        connect_async(self._client, address)
        self._client.loop_start()

    def __call__(self, site: str, group: str, manifest: SignedManifest | None) -> None:
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

    Only devices heard within ``window_s`` count, and not those whose last word was their death:
    a device that is gone does not hold a rollout. Gateways' own heartbeats are not devices.
    """

    def __init__(self, store: SqliteRecordStore, *, window_s: float = 300.0) -> None:
        self._store = store
        self._window_s = window_s

    def __call__(self, site: str) -> Sequence[DeviceReport]:
        since = int((time.time() - self._window_s) * 1000)
        return [
            _report(row.device, row.heartbeat_ms or row.last_seen_ms, row.heartbeat)
            for row in self._store.devices(site=site)
            if row.last_seen_ms >= since and row.online is not False and row.heartbeat
        ]


def _report(device: str, ts_ms: int, fields: Mapping[str, object]) -> DeviceReport:
    def text(key: str) -> str | None:
        value = fields.get(key)
        return None if value is None else str(value)

    return DeviceReport(
        device=device, group=text("group") or ALL_DEVICES, model=text("model"),
        sha256=text("model_sha256"), state=text("model_state"), failed=text("model_failed"),
        failure=text("model_failure"), ts_ms=ts_ms,
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
    """

    def __init__(
        self, *, address: BrokerAddress, registry: Path, store: SqliteRecordStore,
        rollouts: bool = True, tick_s: float = 2.0, report_window_s: float = 300.0,
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
            self._ticker.start()

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
                    log.info(
                        "rollout %d of %s:%s to %s is %s: %s", rollout.id, rollout.name,
                        rollout.version, rollout.site, rollout.stage.value, rollout.reason,
                    )
            except EvcError as exc:  # e.g. the broker is away: the next tick tries again
                log.warning("rollout step failed: %s", exc)

    def _lookup(self, sha256: str) -> tuple[Manifest, Path] | None:
        signed = self.registry.find(sha256)
        path = self.registry.artifact_path(sha256) if signed is not None else None
        if signed is None or path is None:
            return None
        return signed.manifest, path
