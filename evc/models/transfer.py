"""Chunked, resumable transfer of model artifacts over MQTT.

A receiver (a gateway fetching from the cloud, a device fetching from its gateway) asks for
chunks on its own MODEL topic and gets them on its own CHUNK topic (:mod:`evc.wire.delivery`
describes the messages). A :class:`ChunkServer` answers every receiver under one subscription
filter; a :class:`ChunkFetcher` keeps a window of chunks in flight, checks each chunk against
the manifest before writing it to the :class:`~evc.models.cache.ArtifactCache`, and asks again
for what is refused or lost. Nothing but the receiver's own check decides what is accepted, so
a chunk from anyone on the topic is as good as one from the server, and a bad one costs only
that chunk.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from evc.errors import EvcError, TopicError, WireError
from evc.models.cache import ArtifactCache, CacheError, PartialArtifact
from evc.models.manifest import Manifest, ManifestError
from evc.mqtt.client import BrokerAddress, connect_async, new_client
from evc.wire.delivery import (
    MAX_CHUNK_BYTES,
    MAX_CHUNKS_PER_REQUEST,
    NOT_AVAILABLE,
    Chunk,
    chunk_from,
    chunk_request_from,
    encode_chunk,
    encode_chunk_error,
    encode_chunk_request,
)
from evc.wire.topics import Channel, DeviceTopic, GatewayTopic

log = logging.getLogger(__name__)

_DISCONNECTED_POLL_S = 0.2
_MIN_WAIT_S = 0.01
# Replies a window may have in flight, plus re-asks' duplicates; past this a flood is refused
# rather than kept in memory (a message may be up to a broker's packet limit, 1 MiB).
_INBOX_PER_WINDOW_SLOT = 4
Lookup = Callable[[str], tuple[Manifest, Path] | None]
OnRefused = Callable[[str], None]
ReceiverTopic = DeviceTopic | GatewayTopic


class TransferError(EvcError):
    """An artifact could not be fetched (``reason``: ``timeout``, ``digest``, ``io`` or
    ``stopped``)."""

    def __init__(self, message: str, *, reason: str, sha256: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.sha256 = sha256


@dataclass
class Backoff:
    """Growing pauses between retries of something that failed at once (e.g. a full disk).

    Args:
        first_s: the first pause.
        max_s: no pause is longer than this.
    """

    first_s: float = 1.0
    max_s: float = 30.0
    _next_s: float = field(default=0.0, init=False)

    def next_s(self) -> float:
        """The pause before the next retry; each one twice the last, up to ``max_s``."""
        self._next_s = min(self.max_s, max(self.first_s, self._next_s * 2))
        return self._next_s

    def reset(self) -> None:
        """Start again from ``first_s`` (after a success)."""
        self._next_s = 0.0


def chunk_topic_for(request_topic: str) -> ReceiverTopic:
    """The CHUNK topic answering a request published on ``request_topic`` (a MODEL topic).

    Raises:
        TopicError: ``request_topic`` is not a device's or a gateway's MODEL topic.
    """
    parsed: ReceiverTopic
    try:
        parsed = DeviceTopic.parse(request_topic)
    except TopicError:
        parsed = GatewayTopic.parse(request_topic)
    if parsed.channel is not Channel.MODEL:
        raise TopicError(f"not a model request topic: {request_topic!r}")
    return replace(parsed, channel=Channel.CHUNK)


class _Connection:
    """One paho client that (re)subscribes to ``topic`` on every connect.

    ``generation`` counts SUBACKs: a change tells the owner the session was (re)made and
    anything it had in flight may be lost.
    """

    def __init__(
        self, *, address: BrokerAddress, client_id: str, topic: str, mqtt5: bool,
        on_message: Callable[[mqtt.MQTTMessage], None],
    ) -> None:
        self.address = address
        self.topic = topic
        self.ready = threading.Event()
        self.generation = 0
        self._on_message = on_message
        self._client = new_client(client_id=client_id, address=address, mqtt5=mqtt5)
        self._client.on_connect = self._connected
        self._client.on_subscribe = self._subscribed
        self._client.on_disconnect = lambda *_a: self.ready.clear()
        self._client.on_message = self._message
        self._started = False

    def start(self) -> None:
        if self._started:
            return
        connect_async(self._client, self.address)
        self._client.loop_start()
        self._started = True

    def stop(self) -> None:
        if not self._started:
            return
        self._client.disconnect()
        self._client.loop_stop()
        self._started = False
        self.ready.clear()

    def publish(self, topic: str, payload: bytes) -> None:
        self._client.publish(topic, payload, qos=1)

    def _connected(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if not reason.is_failure:
            client.subscribe(self.topic, qos=1)

    def _subscribed(self, *_args: Any) -> None:
        self.generation += 1
        self.ready.set()

    def _message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            self._on_message(message)
        except Exception:  # a bug must not kill paho's network thread
            log.exception("handling a message on %s failed", message.topic)


class ChunkServer:
    """Serves chunks of the artifacts its owner holds, to every receiver under one filter.

    Args:
        address: the broker the receivers ask on.
        request_filter: which MODEL topics to answer, e.g. ``device_filter(site,
            Channel.MODEL)`` on a fog broker or ``gateway_filter(Channel.MODEL)`` on the cloud.
        lookup: the manifest and file of an artifact by its SHA-256, None if not held (yet).
        client_id: the MQTT client id; a unique one if None.
        mqtt5: speak MQTT 5 (else 3.1.1).
        on_refused: called with the reason of each refusal (in paho's thread), e.g. to count it
            in Prometheus.

    Attributes:
        chunks_served: chunks published; ``bytes_served`` their data bytes.
        requests: requests received; ``refused`` those not (wholly) served, by reason
            (``malformed``, ``topic``, ``not_available``, ``chunk_index``, ``chunk_size``: the
            manifest's chunks are too large to send).
    """

    def __init__(
        self, *, address: BrokerAddress, request_filter: str, lookup: Lookup,
        client_id: str | None = None, mqtt5: bool = True, on_refused: OnRefused | None = None,
    ) -> None:
        self._lookup = lookup
        self._on_refused = on_refused
        self.chunks_served = 0
        self.bytes_served = 0
        self.requests = 0
        self.refused: Counter[str] = Counter()
        self._connection = _Connection(
            address=address, client_id=client_id or f"evc-chunks-{uuid.uuid4().hex[:12]}",
            topic=request_filter, mqtt5=mqtt5, on_message=self._on_request,
        )

    @property
    def ready(self) -> threading.Event:
        """Set while subscribed to the request filter."""
        return self._connection.ready

    def start(self) -> ChunkServer:
        """Connect and start answering requests (in paho's network thread)."""
        self._connection.start()
        return self

    def stop(self) -> None:
        """Disconnect."""
        self._connection.stop()

    def _on_request(self, message: mqtt.MQTTMessage) -> None:
        self.requests += 1
        try:
            reply_topic = str(chunk_topic_for(message.topic))
            request = chunk_request_from(bytes(message.payload))
        except TopicError:
            self._count("topic")
            return
        except WireError:
            self._count("malformed")
            return
        found = self._lookup(request.sha256)
        if found is None:
            self._refuse(reply_topic, request.sha256, NOT_AVAILABLE)
        elif found[0].chunk_size > MAX_CHUNK_BYTES:  # would not fit a broker's packet limit
            self._refuse(reply_topic, request.sha256, "chunk_size")
        else:
            self._serve(reply_topic, found, request.chunks)

    def _count(self, reason: str) -> None:
        self.refused[reason] += 1
        if self._on_refused is not None:
            self._on_refused(reason)

    def _refuse(self, topic: str, sha256: str, reason: str) -> None:
        self._count(reason)
        self._connection.publish(topic, encode_chunk_error(sha256, reason))

    def _serve(self, topic: str, found: tuple[Manifest, Path], chunks: Sequence[int]) -> None:
        manifest, path = found
        try:
            with path.open("rb") as file:
                for index in dict.fromkeys(chunks):  # each once, in the order asked
                    if not 0 <= index < manifest.chunk_count:
                        self._count("chunk_index")
                        continue
                    file.seek(index * manifest.chunk_size)
                    data = file.read(manifest.chunk_length(index))
                    self._connection.publish(topic, encode_chunk(manifest.sha256, index, data))
                    self.chunks_served += 1
                    self.bytes_served += len(data)
        except OSError as exc:  # e.g. evicted between the lookup and the read
            log.warning("cannot read %s for %s: %s", path, manifest.label, exc)
            self._refuse(topic, manifest.sha256, NOT_AVAILABLE)


@dataclass
class _Progress:
    """The state of one fetch: what is asked, since when, and how long to wait before asking
    again."""

    partial: PartialArtifact
    missing: set[int]
    quiet_s: float
    in_flight: set[int] = field(default_factory=set)
    last_progress: float = field(default_factory=time.monotonic)
    generation: int = 0


class ChunkFetcher:
    """Fetches artifacts chunk by chunk into an :class:`ArtifactCache`, resuming partials.

    Long-lived: :meth:`fetch` may be called many times, one fetch at a time. Messages arrive in
    paho's network thread and are handed to the fetching thread through a bounded queue, only
    while a fetch runs: between fetches nothing is asked for, so whatever arrives (late replies,
    or anyone publishing on the CHUNK topic) is dropped unread instead of held in memory.

    Args:
        address: the broker of the tier above.
        receiver: who fetches (a :class:`DeviceTopic` or :class:`GatewayTopic`; its channel is
            ignored): requests go to its MODEL topic, chunks come on its CHUNK topic.
        cache: where partial and complete artifacts are kept.
        window: how many chunks may be asked for and not yet received.
        quiet_s: ask again for everything in flight after this long without a good chunk;
            doubled after each such re-ask, up to ``max_quiet_s``.
        client_id: the MQTT client id; a unique one if None.
        mqtt5: speak MQTT 5 (else 3.1.1).
        on_refused: called with the reason of each refusal (in the fetching thread, or paho's
            for ``overflow``), e.g. to count it in Prometheus.

    Attributes:
        chunks_received: new chunks checked and written; ``bytes_received`` their bytes.
        duplicates: good chunks that were already held (asked twice, or resent).
        refused: chunks and replies refused, by reason (``chunk_size``, ``chunk_digest``,
            ``chunk_index``, ``unknown_artifact``, ``malformed``, ``not_available``,
            ``refusal``, ``overflow``: more messages waiting than the inbox holds).
        ignored: messages that arrived while no fetch was running, dropped unread.
        requests_sent: chunk requests published.
    """

    def __init__(
        self, *, address: BrokerAddress, receiver: ReceiverTopic, cache: ArtifactCache,
        window: int = 8, quiet_s: float = 1.0, max_quiet_s: float = 8.0,
        client_id: str | None = None, mqtt5: bool = True, on_refused: OnRefused | None = None,
    ) -> None:
        if not 1 <= window <= MAX_CHUNKS_PER_REQUEST:
            raise ValueError(f"window must be in 1..{MAX_CHUNKS_PER_REQUEST}")
        self.cache = cache
        self.window = window
        self.quiet_s = quiet_s
        self.max_quiet_s = max_quiet_s
        self.request_topic = str(replace(receiver, channel=Channel.MODEL))
        self.chunk_topic = str(replace(receiver, channel=Channel.CHUNK))
        self.chunks_received = 0
        self.bytes_received = 0
        self.duplicates = 0
        self.requests_sent = 0
        self.ignored = 0
        self.refused: Counter[str] = Counter()
        self._on_refused = on_refused
        # None wakes a waiting fetch (see stop); it is not a message.
        self._inbox: queue.Queue[bytes | None] = queue.Queue(_INBOX_PER_WINDOW_SLOT * window)
        self._fetching = threading.Lock()
        self._active = threading.Event()
        self._stopped = threading.Event()
        self._earlier: set[str] = set()
        self._connection = _Connection(
            address=address, client_id=client_id or f"evc-fetch-{uuid.uuid4().hex[:12]}",
            topic=self.chunk_topic, mqtt5=mqtt5, on_message=self._deliver,
        )

    @property
    def ready(self) -> threading.Event:
        """Set while subscribed to the CHUNK topic."""
        return self._connection.ready

    @property
    def connections(self) -> int:
        """How many times the CHUNK subscription was made (more than 1 after reconnects)."""
        return self._connection.generation

    def start(self) -> ChunkFetcher:
        """Connect in the background (fetch waits for the subscription)."""
        self._stopped.clear()
        self._connection.start()
        return self

    def stop(self) -> None:
        """Make a running fetch give up at once (reason ``stopped``), then disconnect.

        Partial downloads stay in the cache for the next fetch.
        """
        self._stopped.set()
        with contextlib.suppress(queue.Full):  # a full inbox wakes the fetch anyway
            self._inbox.put_nowait(None)
        self._connection.stop()

    def _deliver(self, message: mqtt.MQTTMessage) -> None:
        """Hand a message to the running fetch (paho's thread); drop it if none runs."""
        if not self._active.is_set():
            self.ignored += 1
            return
        try:
            self._inbox.put_nowait(bytes(message.payload))
        except queue.Full:
            self._count("overflow")

    def _count(self, reason: str) -> None:
        self.refused[reason] += 1
        if self._on_refused is not None:
            self._on_refused(reason)

    def fetch(self, manifest: Manifest, *, timeout_s: float) -> Path:
        """Fetch ``manifest``'s artifact (or resume it) and return its path in the cache.

        Raises:
            TransferError: not complete within ``timeout_s`` (reason ``timeout``; what was
                received stays for the next call), the assembled file does not match the
                manifest (reason ``digest``; the partial is discarded), the cache could not be
                written (reason ``io``, e.g. a full disk; what was written stays), or
                :meth:`stop` was called (reason ``stopped``).
        """
        with self._fetching:
            try:
                return self._fetch(manifest, timeout_s)
            except (CacheError, OSError) as exc:
                raise TransferError(
                    f"cannot store {manifest.label}: {exc}", reason="io", sha256=manifest.sha256,
                ) from exc

    def _fetch(self, manifest: Manifest, timeout_s: float) -> Path:
        done = self.cache.path(manifest.sha256)
        if done is not None:
            return done
        deadline = time.monotonic() + timeout_s
        partial = self.cache.partial(manifest)
        progress = _Progress(partial, set(partial.missing()), self.quiet_s)
        self._open_inbox()
        try:
            self._receive_all(progress, deadline)
        finally:
            self._active.clear()
            self._earlier.add(manifest.sha256)
        try:
            return partial.complete()
        except ManifestError as exc:
            raise TransferError(
                f"{manifest.label} does not match its manifest: {exc}",
                reason="digest", sha256=manifest.sha256,
            ) from exc

    def _open_inbox(self) -> None:
        """Take messages from now on, after emptying what an earlier fetch left behind."""
        self._active.set()
        while True:
            try:
                self._inbox.get_nowait()
            except queue.Empty:
                return

    def _receive_all(self, progress: _Progress, deadline: float) -> None:
        while progress.missing:
            if self._stopped.is_set():
                raise TransferError(
                    "the fetcher was stopped", reason="stopped",
                    sha256=progress.partial.manifest.sha256,
                )
            now = time.monotonic()
            if now >= deadline:
                manifest = progress.partial.manifest
                raise TransferError(
                    f"{manifest.label}: {len(progress.missing)} of {manifest.chunk_count} "
                    "chunks still missing", reason="timeout", sha256=manifest.sha256,
                )
            self._ask(progress, now)
            wait = self._wait_s(progress, now, deadline)
            try:
                payload = self._inbox.get(timeout=max(0.01, wait))
            except queue.Empty:
                continue
            if payload is not None:
                self._handle(progress, payload)

    def _wait_s(self, progress: _Progress, now: float, deadline: float) -> float:
        """How long to wait for a message before looking at the connection and timers again."""
        if not self._connection.ready.is_set():
            until = now + _DISCONNECTED_POLL_S  # nothing to ask until paho has reconnected
        else:
            until = progress.last_progress + progress.quiet_s
        return max(_MIN_WAIT_S, min(until, deadline) - now)

    def _ask(self, progress: _Progress, now: float) -> None:
        """Ask for what is missing and not in flight, re-asking after reconnects and silence."""
        if not self._connection.ready.is_set():
            return
        if progress.generation != self._connection.generation:
            progress.generation = self._connection.generation
            progress.in_flight.clear()  # a new session: whatever was in flight may be lost
        elif progress.in_flight and now - progress.last_progress >= progress.quiet_s:
            progress.in_flight.clear()
            progress.quiet_s = min(progress.quiet_s * 2, self.max_quiet_s)
            progress.last_progress = now
        room = self.window - len(progress.in_flight)
        wanted = sorted(progress.missing - progress.in_flight)[:room]
        if not wanted:
            return
        if not progress.in_flight:
            progress.last_progress = now  # the quiet period runs from the first ask
        sha256 = progress.partial.manifest.sha256
        self._connection.publish(self.request_topic, encode_chunk_request(sha256, wanted))
        self.requests_sent += 1
        progress.in_flight.update(wanted)

    def _handle(self, progress: _Progress, payload: bytes) -> None:
        manifest = progress.partial.manifest
        try:
            message = chunk_from(payload)
        except WireError:
            self._count("malformed")
            return
        if message.sha256 != manifest.sha256:
            if message.sha256 not in self._earlier:  # not a late reply to an earlier fetch
                self._count("unknown_artifact")
            return
        if not isinstance(message, Chunk):
            # Ask again when quiet. Other slugs are pooled so a sender cannot grow the Counter.
            self._count(message.error if message.error == NOT_AVAILABLE else "refusal")
            return
        self._write(progress, message)

    def _write(self, progress: _Progress, chunk: Chunk) -> None:
        try:
            written = progress.partial.write(chunk.index, chunk.data)
        except ManifestError as exc:
            self._count(exc.reason)
            progress.in_flight.discard(chunk.index)  # ask again for the honest one
            return
        if not written:
            self.duplicates += 1
            return
        self.chunks_received += 1
        self.bytes_received += len(chunk.data)
        progress.missing.discard(chunk.index)
        progress.in_flight.discard(chunk.index)
        progress.last_progress = time.monotonic()
        progress.quiet_s = self.quiet_s
