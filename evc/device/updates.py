"""The device's part of model delivery: follow the desired manifest, verify, fetch, install.

A device watches two retained manifests on its fog broker: its group's
(``evc/{site}/model/{group}/desired``, set during a staged rollout) and the site's default
(group ``all``). The group's wins while it exists. A manifest must be signed by a trusted key
before a byte is fetched; the artifact comes chunk by chunk from the gateway's cache, each chunk
checked against the signed manifest, and is then handed to the :class:`ModelSlot`, which loads
it beside the running model, smoke-tests it and swaps it in between two frames (or refuses it).
Every refusal is counted by reason and the running model keeps serving.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from evc.device.model_slot import ModelSlot
from evc.errors import EvcError
from evc.models.cache import ArtifactCache
from evc.models.signing import SignedManifest, TrustedKeys
from evc.models.transfer import ChunkFetcher, TransferError
from evc.mqtt.client import BrokerAddress, connect_async, new_client
from evc.wire import ALL_DEVICES, Channel, DesiredModelTopic, DeviceTopic

log = logging.getLogger(__name__)

_MAX_MANIFEST_BYTES = 64 * 1024


class ModelUpdater:
    """Keeps a device's :class:`ModelSlot` on the model its site wants.

    Args:
        site: the device's site.
        device_id: the device; chunks are asked for on its own MODEL topic.
        group: its rollout group (``all`` for none).
        address: the site's fog broker.
        slot: the model slot to install into.
        trusted: the keys a manifest must be signed with.
        folder: where partial and complete downloads are kept.
        fetch_timeout_s: one fetch attempt; a partial download resumes in the next.
    """

    def __init__(
        self, *, site: str, device_id: str, group: str = ALL_DEVICES, address: BrokerAddress,
        slot: ModelSlot, trusted: TrustedKeys, folder: Path, fetch_timeout_s: float = 60.0,
    ) -> None:
        self.group = group
        self.slot = slot
        self.refused: Counter[str] = Counter()
        self.installed = 0
        self._trusted = trusted
        self._address = address
        self._fetch_timeout_s = fetch_timeout_s
        self._topics = {str(DesiredModelTopic(site, g)): g for g in {ALL_DEVICES, group}}
        self._desired: dict[str, bytes] = {}
        self._handled: bytes | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.fetcher = ChunkFetcher(
            address=address, receiver=DeviceTopic(site, device_id, Channel.MODEL),
            cache=ArtifactCache(folder), client_id=f"evc-dev-{site}-{device_id}-fetch",
        )
        self._client = new_client(client_id=f"evc-dev-{site}-{device_id}-models", address=address)
        self._client.on_connect = self._subscribe
        self._client.on_message = self._on_desired
        self._worker = threading.Thread(target=self._work, name="model-updates", daemon=True)

    def start(self) -> ModelUpdater:
        """Connect and follow the desired model in the background."""
        self.fetcher.start()
        connect_async(self._client, self._address)
        self._client.loop_start()
        self._worker.start()
        return self

    def stop(self) -> None:
        """Stop following (a partial download stays for the next start); disconnect."""
        self._stop.set()
        self._wake.set()
        if self._worker.is_alive():
            self._worker.join(timeout=self._fetch_timeout_s + 5)
        self._client.disconnect()
        self._client.loop_stop()
        self.fetcher.stop()

    def heartbeat_fields(self) -> dict[str, str | int | float | None]:
        """The slot's fields, plus the active model's digest, the group and refusals."""
        return {
            **self.slot.heartbeat_fields(),
            "model_sha256": self.slot.status().sha256,
            "group": self.group,
            "model_refused": sum(self.refused.values()),
        }

    # -- MQTT (paho's thread) ------------------------------------------------------------------

    def _subscribe(
        self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any
    ) -> None:
        if not reason.is_failure:
            client.subscribe([(topic, 1) for topic in self._topics])

    def _on_desired(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        group = self._topics.get(message.topic)
        if group is None:
            return
        if message.payload:
            self._desired[group] = bytes(message.payload)
        else:
            self._desired.pop(group, None)
        self._wake.set()

    # -- the worker ----------------------------------------------------------------------------

    def _effective(self) -> bytes | None:
        return self._desired.get(self.group) or self._desired.get(ALL_DEVICES)

    def _work(self) -> None:
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            payload = self._effective()
            if payload is None or payload == self._handled:
                continue
            try:
                done = self._follow(payload)
            except Exception:  # a bug here must not end model updates for good
                log.exception("following the desired model failed")
                done = True
            if done:
                self._handled = payload
            elif not self._stop.is_set():
                self._wake.set()  # not finished (the fog is slow or away): try again

    def _follow(self, payload: bytes) -> bool:
        """Act on one desired manifest; False if it should be tried again."""
        try:
            if len(payload) > _MAX_MANIFEST_BYTES:
                raise TransferError("manifest too large", reason="manifest")
            manifest = self._trusted.verify(SignedManifest.parse(payload))
        except EvcError as exc:
            self._refuse(getattr(exc, "reason", "manifest"), exc)
            return True
        if manifest.sha256 == self.slot.status().sha256:
            return True
        try:
            artifact = self.fetcher.fetch(manifest, timeout_s=self._fetch_timeout_s)
        except TransferError as exc:
            if exc.reason == "timeout":
                return self._stop.wait(1.0)  # back off; the partial download stays
            self._refuse(exc.reason, exc)
            return True
        outcome = self.slot.install(manifest, artifact)
        if outcome.installed:
            self.installed += 1
            log.info("model %s installed, on probation", manifest.label)
        else:
            self._refuse(outcome.reason or "install", EvcError(outcome.detail))
        return True

    def _refuse(self, reason: str, exc: Exception) -> None:
        self.refused[reason] += 1
        log.warning("refused a model update (%s): %s", reason, exc)


def updates_folder(state_dir: Path, device_id: str) -> Path:
    """Where a device keeps its downloads, beside its buffer."""
    return Path(state_dir) / f"{device_id}.models"
