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

What the gateway announces stays available:

- The artifact of every manifest announced for some group is pinned in the cache, so fetching
  another group's model (a canary) never evicts it; it is unpinned once no group announces it
  (the group's manifest was replaced or cleared). If it goes missing anyway (deleted by hand),
  the first device that asks for it makes the gateway fetch it again.
- The announced manifest of each group is kept in ``announced/<group>.json`` and published again
  whenever the fog connection is (re)made, so a fog broker that lost its retained messages (a
  crash before its autosave, a replaced box) gets them back. After a gateway restart these are
  pinned and announced again at once; the cloud's retained manifests, arriving on the gateway's
  persistent session, then replace any that changed meanwhile.
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
from evc.models.manifest import ManifestError
from evc.models.signing import SignatureError, TrustedKeys
from evc.models.transfer import Backoff, ChunkFetcher, ChunkServer, TransferError
from evc.mqtt.client import BrokerAddress, connect_async, new_client
from evc.wire import (
    Channel,
    DesiredModelTopic,
    GatewayTopic,
    desired_model_filter,
    device_filter,
)

log = logging.getLogger(__name__)

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
        self._announced_dir = folder / "announced"
        for directory in (self._manifest_dir, self._announced_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self._known: dict[str, Manifest] = {}
        self._latest: dict[str, bytes] = {}  # group -> the newest payload seen on the cloud
        # group -> the manifest on the fog broker; changed with its publish under _announcing,
        # so a republish after a reconnect never overtakes a newer announce.
        self._announced: dict[str, tuple[Manifest, bytes]] = {}
        self._announcing = threading.Lock()
        self._pending: set[str] = set()  # groups queued again because their artifact is gone
        self._inbox: queue.Queue[str | None] = queue.Queue()
        self._stop = threading.Event()
        self._retry = Backoff()
        self._load_manifests()
        self._load_announced()
        self._connect_clients(f"evc-gw-{site}-{gateway_id}", gateway_id)
        self._worker = threading.Thread(target=self._work, name="model-relay", daemon=True)
        self._export_metrics()

    def _connect_clients(self, prefix: str, gateway_id: str) -> None:
        """Build the MQTT clients (connected by :meth:`start`)."""
        on_refused = self._metrics.refused.labels
        self.fetcher = ChunkFetcher(
            address=self._cloud, receiver=GatewayTopic(self._site, gateway_id, Channel.MODEL),
            cache=self.cache, client_id=f"{prefix}-fetch",
            on_refused=lambda reason: on_refused(reason).inc(),
        )
        requests_refused = self._metrics.requests_refused.labels
        self.server = ChunkServer(
            address=self._fog, request_filter=device_filter(self._site, Channel.MODEL),
            lookup=self._lookup, client_id=f"{prefix}-chunks",
            on_refused=lambda reason: requests_refused(reason).inc(),
        )
        self._watcher = new_client(client_id=f"{prefix}-models", address=self._cloud)
        self._watcher.on_connect = self._subscribe
        self._watcher.on_message = self._on_desired
        self._announcer = new_client(client_id=f"{prefix}-announce", address=self._fog)
        self._announcer.on_connect = self._announce_again

    def _export_metrics(self) -> None:
        self._metrics.cached.set_function(lambda: float(self.cache.count()))
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
        for group in list(self._announced):  # fetch again what went missing while down
            self._inbox.put(group)

    def stop(self) -> None:
        """Stop fetching (a partial download stays for the next start) and disconnect."""
        self._stop.set()
        self.fetcher.stop()  # a fetch in progress gives up now, not at the end of its round
        self._inbox.put(None)
        if self._worker.is_alive():
            self._worker.join(timeout=_FETCH_ROUND_S + 5)
        for client in (self._watcher, self._announcer):
            client.disconnect()
            client.loop_stop()
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
            with self._announcing:
                self._pending.discard(group)
            try:
                self._relay(group, self._latest[group])
            except Exception:  # one bad update must not end model delivery for the site
                log.exception("relaying the desired model of group %s failed", group)
                self._metrics.refused.labels("error").inc()
                if not self._stop.wait(self._retry.next_s()):
                    self._inbox.put(group)  # try again, unless a newer manifest replaced it

    def _relay(self, group: str, payload: bytes) -> None:
        if not payload:  # the cloud cleared the group's entry: clear it for devices too
            self._withdraw(group)
            self._metrics.manifests.labels("cleared").inc()
            return
        manifest = self._verified(payload)
        if manifest is None or not self._fetch(group, payload, manifest):
            return
        if self._announce(group, manifest, payload):
            self._metrics.manifests.labels("relayed").inc()
            log.info("model %s is desired for group %s of %s", manifest.label, group, self._site)

    def _verified(self, payload: bytes) -> Manifest | None:
        try:
            return self._trusted.verify_payload(payload)
        except (ManifestError, SignatureError) as exc:
            self._refuse(exc.reason, exc)
            return None

    def _fetch(self, group: str, payload: bytes, manifest: Manifest) -> bool:
        """Fetch until complete, refused, stopped, or superseded by a newer manifest."""
        while not self._stop.is_set() and self._latest.get(group) == payload:
            try:
                self._fetch_once(manifest, payload)
            except TransferError as exc:
                if not self._may_retry(exc):
                    return False
                continue
            self._retry.reset()
            return True
        return False

    def _fetch_once(self, manifest: Manifest, payload: bytes) -> None:
        """One round: the artifact into the cache, then its manifest beside it."""
        before = self.fetcher.bytes_received
        try:
            self.fetcher.fetch(manifest, timeout_s=_FETCH_ROUND_S)
        finally:
            self._metrics.fetched_bytes.inc(self.fetcher.bytes_received - before)
        try:
            self._remember(manifest, payload)
        except OSError as exc:
            raise TransferError(
                f"cannot keep the manifest of {manifest.label}: {exc}", reason="io",
                sha256=manifest.sha256,
            ) from exc

    def _may_retry(self, exc: TransferError) -> bool:
        """Count a failed round; True if another round may do better (after a pause)."""
        if exc.reason == "timeout":
            return True  # the cloud is slow or away: resume in the next round
        if exc.reason == "stopped":
            return False
        self._refuse(exc.reason, exc)
        if exc.reason != "io":
            return False  # e.g. digest: the manifest itself is wrong, a refetch would repeat it
        self._stop.wait(self._retry.next_s())  # e.g. a full disk, which may have room later
        return True

    def _refuse(self, reason: str, exc: Exception) -> None:
        self._metrics.refused.labels(reason).inc()
        log.warning("refused a model update for %s: %s", self._site, exc)

    # -- the fog side --------------------------------------------------------------------------

    def _announce(self, group: str, manifest: Manifest, payload: bytes) -> bool:
        """Pin the artifact and publish the manifest for ``group``; False if already announced.

        Published again all the same: the fog broker's retained copy may have been cleared.
        """
        with self._announcing:
            old = self._announced.get(group)
            self._announced[group] = (manifest, payload)
            self.cache.pin(manifest.sha256)
            if old is not None:
                self._unpin_unless_announced(old[0].sha256)
            self._save_announced(group, payload)
            self._announcer.publish(self._topic(group), payload, qos=1, retain=True)
        return old is None or old[1] != payload

    def _withdraw(self, group: str) -> None:
        """Clear ``group``'s manifest on the fog broker and let its artifact be evicted."""
        with self._announcing:
            old = self._announced.pop(group, None)
            if old is not None:
                self._unpin_unless_announced(old[0].sha256)
            self._save_announced(group, None)
            self._announcer.publish(self._topic(group), b"", qos=1, retain=True)

    def _unpin_unless_announced(self, sha256: str) -> None:
        """(Under ``_announcing``.) Another group may announce the same artifact."""
        if all(manifest.sha256 != sha256 for manifest, _ in self._announced.values()):
            self.cache.unpin(sha256)

    def _announce_again(
        self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any
    ) -> None:
        """On every (re)connect to the fog broker: it may have lost its retained messages."""
        if reason.is_failure:
            return
        with self._announcing:
            for group, (_manifest, payload) in self._announced.items():
                client.publish(self._topic(group), payload, qos=1, retain=True)
            count = len(self._announced)
        self._metrics.manifests.labels("republished").inc(count)

    def _topic(self, group: str) -> str:
        return str(DesiredModelTopic(self._site, group))

    # -- the cache -----------------------------------------------------------------------------

    def _remember(self, manifest: Manifest, payload: bytes) -> None:
        path = self._manifest_dir / f"{manifest.sha256}.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_bytes(payload)
        temporary.replace(path)
        self._known[manifest.sha256] = manifest

    def _save_announced(self, group: str, payload: bytes | None) -> None:
        """Record (or forget, for None) what ``group`` announces, for the next start."""
        path = self._announced_dir / f"{group}.json"
        try:
            if payload is None:
                path.unlink(missing_ok=True)
                return
            temporary = path.with_suffix(".tmp")
            temporary.write_bytes(payload)
            temporary.replace(path)
        except OSError as exc:  # the announce itself stands; only a restart would miss it
            log.error("cannot record the manifest announced for group %s: %s", group, exc)

    def _load_manifests(self) -> None:
        for path in self._manifest_dir.glob("*.json"):
            found = self._read_manifest(path)
            if found is not None:
                self._known[found[0].sha256] = found[0]

    def _load_announced(self) -> None:
        """Pin and re-announce what was announced before a restart."""
        for path in self._announced_dir.glob("*.json"):
            found = self._read_manifest(path)
            try:
                group = DesiredModelTopic(self._site, path.stem).group
            except EvcError:  # not a file this class wrote
                found = None
            if found is None:
                continue
            manifest, payload = found
            self._announced[group] = (manifest, payload)
            self._latest[group] = payload
            self._known.setdefault(manifest.sha256, manifest)
            self.cache.pin(manifest.sha256)

    def _read_manifest(self, path: Path) -> tuple[Manifest, bytes] | None:
        """A kept manifest and its signed payload, if it still verifies."""
        try:
            payload = path.read_bytes()
            return self._trusted.verify_payload(payload), payload
        except (EvcError, OSError) as exc:  # e.g. a key no longer trusted
            log.warning("ignoring the cached manifest %s: %s", path.name, exc)
            return None

    def _lookup(self, sha256: str) -> tuple[Manifest, Path] | None:
        manifest = self._known.get(sha256)
        if manifest is None:
            return None
        path = self.cache.path(sha256)
        if path is None:
            self._fetch_again(sha256)
            return None
        return manifest, path

    def _fetch_again(self, sha256: str) -> None:
        """Queue the groups that announce ``sha256`` again: its artifact went missing.

        An artifact no group announces was evicted on purpose; devices no longer want it.
        """
        with self._announcing:
            groups = {g for g, (m, _) in self._announced.items() if m.sha256 == sha256}
            groups -= self._pending
            self._pending |= groups
        for group in groups:
            log.warning("the artifact announced for group %s is missing; fetching it again",
                        group)
            self._inbox.put(group)
