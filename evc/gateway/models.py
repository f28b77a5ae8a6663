"""The fog's part of model delivery: fetch each artifact once per site, serve devices from disk.

The gateway watches the site's desired-model manifests on the cloud broker
(``evc/{site}/model/{group}/desired``, retained). For each one it verifies the signature against
its trusted keys, fetches the artifact chunk by chunk into its content-addressed cache (resuming
a partial one; every chunk checked against the signed manifest) and only then republishes the
manifest, retained, on the fog broker, so devices never see a manifest whose artifact the fog
lacks. Devices fetch chunks from the gateway's :class:`~evc.models.transfer.ChunkServer`, which
reads the cache: fifty devices cost the uplink one copy, and they keep getting it while the
cloud is unreachable. Verified manifests are kept beside the cache, so a restarted gateway serves
without the cloud too.
"""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from evc.errors import EvcError
from evc.metrics import ModelDeliveryMetrics
from evc.models import Manifest
from evc.models.cache import ArtifactCache
from evc.models.signing import SignedManifest, TrustedKeys
from evc.models.transfer import ChunkFetcher, ChunkServer, TransferError
from evc.mqtt.client import BrokerAddress, connect_async, new_client
from evc.wire import (
    Channel,
    DesiredModelTopic,
    GatewayTopic,
    desired_model_filter,
    device_filter,
)

log = logging.getLogger(__name__)

_MAX_MANIFEST_BYTES = 64 * 1024
_FETCH_ROUND_S = 30.0  # one fetch attempt; the partial stays and the next round resumes it


class ModelRelay:
    """Relays a site's desired models from the cloud to its devices, through the cache.

    Args:
        site: the gateway's site.
        gateway_id: the gateway; chunks are asked for on its own MODEL topic.
        fog: the site's broker.
        cloud: the cloud broker.
        folder: the cache's folder (artifacts, partial downloads, verified manifests).
        trusted: the keys a manifest must be signed with.
        metrics: counts manifests, refusals and bytes.
        cache_max_bytes: evict least recently used artifacts past this (None: keep all).
    """

    def __init__(
        self, *, site: str, gateway_id: str, fog: BrokerAddress, cloud: BrokerAddress,
        folder: Path, trusted: TrustedKeys, metrics: ModelDeliveryMetrics,
        cache_max_bytes: int | None = None,
    ) -> None:
        self._site = site
        self._trusted = trusted
        self._metrics = metrics
        self._fog, self._cloud = fog, cloud
        self.cache = ArtifactCache(folder / "artifacts", max_bytes=cache_max_bytes)
        self._manifest_dir = folder / "manifests"
        self._manifest_dir.mkdir(parents=True, exist_ok=True)
        self._known: dict[str, Manifest] = {}
        self._latest: dict[str, bytes] = {}  # group -> the newest payload seen on the cloud
        self._inbox: queue.Queue[str | None] = queue.Queue()
        self._stop = threading.Event()
        self._load_manifests()
        prefix = f"evc-gw-{site}-{gateway_id}"
        self.fetcher = ChunkFetcher(
            address=cloud, receiver=GatewayTopic(site, gateway_id, Channel.MODEL),
            cache=self.cache, client_id=f"{prefix}-fetch",
        )
        self.server = ChunkServer(
            address=fog, request_filter=device_filter(site, Channel.MODEL), lookup=self._lookup,
            client_id=f"{prefix}-chunks",
        )
        self._watcher = new_client(client_id=f"{prefix}-models", address=cloud)
        self._watcher.on_connect = self._subscribe
        self._watcher.on_message = self._on_desired
        self._announcer = new_client(client_id=f"{prefix}-announce", address=fog)
        self._worker = threading.Thread(target=self._work, name="model-relay", daemon=True)
        self._metrics.cached.set_function(lambda: float(len(self._known)))
        self._metrics.served_bytes.read = lambda: self.server.bytes_served
        self._metrics.served_chunks.read = lambda: self.server.chunks_served

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Serve devices from the cache at once; watch the cloud for new manifests."""
        self.server.start()
        self.fetcher.start()
        connect_async(self._announcer, self._fog)
        self._announcer.loop_start()
        connect_async(self._watcher, self._cloud, persistent=True)
        self._watcher.loop_start()
        self._worker.start()

    def stop(self) -> None:
        """Stop fetching (a partial download stays for the next start) and disconnect."""
        self._stop.set()
        self._inbox.put(None)
        if self._worker.is_alive():
            self._worker.join(timeout=_FETCH_ROUND_S + 5)
        for client in (self._watcher, self._announcer):
            client.disconnect()
            client.loop_stop()
        self.fetcher.stop()
        self.server.stop()

    # -- the cloud side ------------------------------------------------------------------------

    def _subscribe(
        self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any
    ) -> None:
        if not reason.is_failure:
            client.subscribe(desired_model_filter(self._site), qos=1)

    def _on_desired(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            group = DesiredModelTopic.parse(message.topic).group
        except EvcError:
            self._metrics.refused.labels("topic").inc()
            return
        self._latest[group] = bytes(message.payload)
        self._inbox.put(group)

    def _work(self) -> None:
        while not self._stop.is_set():
            group = self._inbox.get()
            if group is None:
                return
            try:
                self._relay(group, self._latest[group])
            except Exception:  # one bad update must not end model delivery for the site
                log.exception("relaying the desired model of group %s failed", group)

    def _relay(self, group: str, payload: bytes) -> None:
        topic = str(DesiredModelTopic(self._site, group))
        if not payload:  # the cloud cleared the group's entry: clear it for devices too
            self._announcer.publish(topic, b"", qos=1, retain=True)
            self._metrics.manifests.labels("cleared").inc()
            return
        manifest = self._verified(payload)
        if manifest is None or not self._fetch(group, payload, manifest):
            return
        self._announcer.publish(topic, payload, qos=1, retain=True)
        self._metrics.manifests.labels("relayed").inc()
        log.info("model %s is desired for group %s of %s", manifest.label, group, self._site)

    def _verified(self, payload: bytes) -> Manifest | None:
        try:
            if len(payload) > _MAX_MANIFEST_BYTES:
                raise TransferError("manifest too large", reason="manifest")
            return self._trusted.verify(SignedManifest.parse(payload))
        except EvcError as exc:
            self._refuse(getattr(exc, "reason", "manifest"), exc)
            return None

    def _fetch(self, group: str, payload: bytes, manifest: Manifest) -> bool:
        """Fetch until complete, refused, stopped, or superseded by a newer manifest."""
        while not self._stop.is_set() and self._latest.get(group) == payload:
            before = self.fetcher.bytes_received
            try:
                self.fetcher.fetch(manifest, timeout_s=_FETCH_ROUND_S)
            except TransferError as exc:
                if exc.reason != "timeout":
                    self._refuse(exc.reason, exc)
                    return False
                continue  # the cloud is slow or away: resume in the next round
            finally:
                self._metrics.fetched_bytes.inc(self.fetcher.bytes_received - before)
            self._remember(manifest, payload)
            return True
        return False

    def _refuse(self, reason: str, exc: Exception) -> None:
        self._metrics.refused.labels(reason).inc()
        log.warning("refused a model update for %s: %s", self._site, exc)

    # -- the cache -----------------------------------------------------------------------------

    def _remember(self, manifest: Manifest, payload: bytes) -> None:
        path = self._manifest_dir / f"{manifest.sha256}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(payload)
        temporary.replace(path)
        self._known[manifest.sha256] = manifest

    def _load_manifests(self) -> None:
        for path in self._manifest_dir.glob("*.json"):
            try:
                manifest = self._trusted.verify(SignedManifest.parse(path.read_bytes()))
            except (EvcError, OSError) as exc:  # e.g. a key no longer trusted
                log.warning("ignoring the cached manifest %s: %s", path.name, exc)
                continue
            self._known[manifest.sha256] = manifest

    def _lookup(self, sha256: str) -> tuple[Manifest, Path] | None:
        manifest = self._known.get(sha256)
        path = self.cache.path(sha256) if manifest is not None else None
        if manifest is None or path is None:
            return None
        return manifest, path
