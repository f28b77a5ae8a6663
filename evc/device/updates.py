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
from evc.models.manifest import ManifestError
from evc.models.signing import SignatureError, TrustedKeys
from evc.models.transfer import Backoff, ChunkFetcher, TransferError
from evc.mqtt.client import BrokerAddress, connect_async, new_client
from evc.wire import ALL_DEVICES, Channel, DesiredModelTopic, DeviceTopic

log = logging.getLogger(__name__)

_TIMEOUT_PAUSE_S = 1.0  # after a fetch round that timed out: it already waited its full round


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

    Attributes:
        refused: model updates refused or failed, by reason (``signature``, ``too_large``,
            ``digest``, ``io``: the download could not be written, retried with back-off;
            ``error``: an unexpected failure, retried with back-off; and the slot's reasons).
        installed: models swapped in.
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
        self._retry = Backoff()
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
        self.fetcher.stop()  # a fetch in progress gives up now, not at the end of its round
        self._wake.set()
        if self._worker.is_alive():
            self._worker.join(timeout=self._fetch_timeout_s + 5)
        self._client.disconnect()
        self._client.loop_stop()

    def heartbeat_fields(self) -> dict[str, str | int | float | None]:
        """The slot's fields, plus the active model's digest, the group and refusals."""
        return {
            **self.slot.heartbeat_fields(),
            "model_sha256": self.slot.status().sha256,
            "group": self.group,
            # Whole updates refused, and single chunks refused (and asked for again).
            "model_refused": sum(self.refused.values()) + sum(self.fetcher.refused.values()),
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
            if self._attempt(payload):
                self._handled = payload
                self._retry.reset()
            elif not self._stop.is_set():
                self._wake.set()  # not finished (the fog is slow or away): try again

    def _attempt(self, payload: bytes) -> bool:
        """Follow one desired manifest; False (after a pause) if it should be tried again."""
        try:
            return self._follow(payload)
        # A bug or an unforeseen failure must neither end model updates nor skip this model.
        except Exception as exc:
            log.exception("following the desired model failed")
            self._refuse("error", exc)
            self._stop.wait(self._retry.next_s())
            return False

    def _follow(self, payload: bytes) -> bool:
        """Act on one desired manifest; False if it should be tried again."""
        try:
            manifest = self._trusted.verify_payload(payload)
        except (ManifestError, SignatureError) as exc:
            self._refuse(exc.reason, exc)
            return True
        if manifest.sha256 == self.slot.status().sha256:
            return True
        try:
            artifact = self.fetcher.fetch(manifest, timeout_s=self._fetch_timeout_s)
        except TransferError as exc:
            return self._fetch_failed(exc)
        outcome = self.slot.install(manifest, artifact)
        if outcome.installed:
            self.installed += 1
            self._retry.reset()
            # The slot keeps its own copy (and the previous one): the download is done with.
            self.fetcher.cache.remove(manifest.sha256)
            log.info("model %s installed, on probation", manifest.label)
            return True
        self._refuse(outcome.reason or "install", EvcError(outcome.detail))
        if outcome.reason == "storage":  # the device's disk, not the model: try again later
            self._stop.wait(self._retry.next_s())
            return False
        return True

    def _fetch_failed(self, exc: TransferError) -> bool:
        """Count a failed fetch; True if it is final, False (after a pause) to try again."""
        if exc.reason == "stopped":
            return False
        if exc.reason == "timeout":
            self._stop.wait(_TIMEOUT_PAUSE_S)  # the partial download stays for the next round
            return False
        self._refuse(exc.reason, exc)
        if exc.reason == "io":  # e.g. a full disk, which may have room later
            self._stop.wait(self._retry.next_s())
            return False
        return True

    def _refuse(self, reason: str, exc: Exception) -> None:
        self.refused[reason] += 1
        log.warning("refused a model update (%s): %s", reason, exc)
