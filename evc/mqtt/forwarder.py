"""Draining an outbox into an MQTT broker: the second half of the per-hop guarantee.

Rows are published at QoS 1 and deleted only when the broker's PUBACK for them arrives. A
bounded window of messages is in flight; on disconnect the window is forgotten and everything
not acknowledged is sent again, in order, after reconnect (the next hop deduplicates).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from evc.mqtt.budget import UplinkBudget
from evc.mqtt.client import BrokerAddress, Will, connect_async, new_client
from evc.outbox import Outbox, Priority, StoredRecord, now_ms
from evc.wire import codec

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One MQTT message to publish and the outbox rows it carries."""

    topic: str
    payload: bytes
    row_ids: list[int]
    records: int
    # Record payload bytes per class, before any compression (for per-class metrics).
    class_bytes: Mapping[Priority, int] = field(default_factory=dict)


def _class_bytes(rows: Sequence[StoredRecord]) -> dict[Priority, int]:
    sizes: Counter[Priority] = Counter()
    for row in rows:
        sizes[row.priority] += len(row.payload)
    return dict(sizes)


class Packer(Protocol):
    """Turns outbox rows into MQTT messages."""

    def pack(self, rows: Sequence[StoredRecord]) -> list[Outgoing]:
        """Return the messages that carry ``rows``, in order."""
        ...


class OneToOnePacker:
    """Each row is one message on its own topic (a device talking to its fog broker)."""

    def pack(self, rows: Sequence[StoredRecord]) -> list[Outgoing]:
        return [
            Outgoing(row.topic, row.payload, [row.id], 1, {row.priority: len(row.payload)})
            for row in rows
        ]


class BatchPacker:
    """All rows go in one batch envelope on the gateway's uplink topic.

    Args:
        topic: the gateway's batch topic.
        site: the site the records come from.
        origin: the gateway id.
        epoch: the gateway's boot epoch; with ``seq`` it keys each batch.
        encoding: how the records are packed (``ZSTD`` compresses them as one block).
        level: zstd compression level.
    """

    def __init__(
        self,
        *,
        topic: str,
        site: str,
        origin: str,
        epoch: int,
        encoding: codec.BatchEncoding = codec.BatchEncoding.PLAIN,
        level: int = codec.DEFAULT_ZSTD_LEVEL,
    ) -> None:
        self.topic = topic
        self.site = site
        self.origin = origin
        self.epoch = epoch
        self.encoding = encoding
        self.level = level
        self._seq = 0

    def pack(self, rows: Sequence[StoredRecord]) -> list[Outgoing]:
        self._seq += 1
        payload = codec.encode_batch(
            origin=self.origin,
            epoch=self.epoch,
            seq=self._seq,
            ts_ms=now_ms(),
            site=self.site,
            records=[row.payload for row in rows],
            encoding=self.encoding,
            level=self.level,
        )
        return [
            Outgoing(self.topic, payload, [row.id for row in rows], len(rows), _class_bytes(rows))
        ]


@dataclass(slots=True)
class ForwarderCounters:
    """What a forwarder has done since it started (read by metrics)."""

    messages_sent: int = 0
    records_acked: int = 0
    bytes_sent: int = 0
    resends: int = 0
    refused: int = 0
    throttled_s: float = 0.0


class OutboxForwarder:
    """Publish outbox rows at QoS 1; delete them on PUBACK.

    One thread owns the in-flight window: it publishes, and it applies the acknowledgements and
    disconnects that paho's network thread reports through a queue. paho calls ``on_publish``
    while holding its own message lock, so that callback must never wait for ours: an earlier
    design that shared one lock between the two threads deadlocked under load.

    Args:
        outbox: the rows to forward.
        client_id: MQTT client id of the uplink connection.
        address: the next hop's broker.
        packer: how rows become messages.
        max_inflight: messages published and not yet acknowledged, at most.
        peek_records: rows read per message, at most.
        peek_bytes: payload bytes read per message, about.
        will: Last Will of the uplink connection.
        on_connect: called after every (re)connect, for birth messages.
        on_disconnect: called after every disconnect, before paho reconnects (to renew a will).
        on_acked: called with each acknowledged message and its publish-to-ack seconds.
        expire_interval_s: how often TTLs are enforced.
        budget: a bandwidth cap; messages wait (in the outbox) until it allows them.
    """

    def __init__(
        self,
        *,
        outbox: Outbox,
        client_id: str,
        address: BrokerAddress,
        packer: Packer,
        max_inflight: int = 16,
        peek_records: int = 500,
        peek_bytes: int = 256 * 1024,
        will: Will | None = None,
        on_connect: Callable[[mqtt.Client], None] | None = None,
        on_disconnect: Callable[[mqtt.Client], None] | None = None,
        on_acked: Callable[[Outgoing, float], None] | None = None,
        expire_interval_s: float = 5.0,
        budget: UplinkBudget | None = None,
    ) -> None:
        self.outbox = outbox
        self.address = address
        self.packer = packer
        self.max_inflight = max_inflight
        self.peek_records = peek_records
        self.peek_bytes = peek_bytes
        self.expire_interval_s = expire_interval_s
        self.budget = budget
        self.counters = ForwarderCounters()
        self.connected = threading.Event()
        self._on_connect_hook = on_connect
        self._on_disconnect_hook = on_disconnect
        self._on_acked = on_acked
        # Touched only by the forwarder thread.
        self._inflight: dict[int, tuple[Outgoing, float]] = {}
        self._cursors: dict[Priority, int] = {}
        self._refusing = False
        self._unreachable = False
        # From paho's network thread to the forwarder thread: (mid, reason) or _RESET.
        self._events: queue.SimpleQueue[tuple[int, ReasonCode | None]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._client = new_client(
            client_id=client_id, will=will, address=address, max_inflight=max_inflight
        )
        self._client.on_connect = self._on_connect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        self._thread = threading.Thread(target=self._run, name="forwarder", daemon=True)

    @property
    def client(self) -> mqtt.Client:
        """The underlying paho client (for births and other direct publishes)."""
        return self._client

    def start(self) -> None:
        """Connect in the background and start draining."""
        connect_async(self._client, self.address)
        self._client.loop_start()
        self._thread.start()

    def wake(self) -> None:
        """Tell the forwarder that new rows were committed."""
        self._wake.set()

    def inflight(self) -> int:
        """Messages published and not yet acknowledged."""
        return len(self._inflight)

    def stop(
        self,
        *,
        drain_timeout_s: float = 0.0,
        goodbye: tuple[str, bytes] | None = None,
    ) -> None:
        """Stop forwarding and disconnect.

        Args:
            drain_timeout_s: first wait up to this long for the outbox to empty.
            goodbye: a retained (topic, payload) to publish before disconnecting, such as a
                death message; a clean DISCONNECT suppresses the Last Will.
        """
        deadline = time.monotonic() + drain_timeout_s
        while time.monotonic() < deadline and (len(self.outbox) or self.inflight()):
            time.sleep(0.02)
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        if goodbye and self.connected.is_set():
            topic, payload = goodbye
            self._client.publish(topic, payload, qos=1, retain=True).wait_for_publish(timeout=2)
        self._client.disconnect()
        self._client.loop_stop()

    # -- draining (forwarder thread) -----------------------------------------------------------

    def _run(self) -> None:
        next_expiry = 0.0
        while not self._stop.is_set():
            try:
                next_expiry = self._step(next_expiry)
            except Exception:
                # A full disk or a failing database must not end this thread. Rows whose ack
                # could not be applied are still in the outbox: forget the window so they are
                # sent again (the next hop deduplicates) once the outbox works again.
                log.exception("forwarding failed; retrying in 1 s")
                self._forget_inflight()
                self._stop.wait(1.0)
        with contextlib.suppress(Exception):
            self._apply_events()

    def _step(self, next_expiry: float) -> float:
        """One turn of the loop: apply acks, expire, send what fits; return the next expiry."""
        self._apply_events()
        if time.monotonic() >= next_expiry:
            self.outbox.expire()
            next_expiry = time.monotonic() + self.expire_interval_s
        if not self.connected.is_set() or len(self._inflight) >= self.max_inflight:
            self._wait(0.2)
        elif not self._throttled() and not self._send_next():
            self._wait(0.5)
        return next_expiry

    def _throttled(self) -> bool:
        """Wait (a little) if the budget holds the next message back; say whether it did."""
        delay = self.budget.wait_s() if self.budget else 0.0
        if delay <= 0:
            return False
        started = time.monotonic()
        # Acks keep arriving while we wait; the loop applies them and asks again.
        self._wait(min(delay, 0.2))
        self.counters.throttled_s += time.monotonic() - started
        return True

    def _wait(self, timeout: float) -> None:
        if self._events.empty():
            self._wake.wait(timeout)
        self._wake.clear()

    def _send_next(self) -> bool:
        rows = self.outbox.peek(
            after=self._cursors, max_records=self.peek_records, max_bytes=self.peek_bytes
        )
        if not rows:
            return False
        for message in self.packer.pack(rows):
            info = self._client.publish(message.topic, message.payload, qos=1)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                return False  # not connected: the disconnect event resets the cursors
            self._inflight[info.mid] = (message, time.monotonic())
            self.counters.messages_sent += 1
            self.counters.bytes_sent += len(message.payload)
            if self.budget:
                self.budget.spend(len(message.payload))
        for row in rows:
            self._cursors[row.priority] = max(self._cursors.get(row.priority, 0), row.id)
        return True

    def _apply_events(self) -> None:
        while True:
            try:
                mid, reason = self._events.get_nowait()
            except queue.Empty:
                return
            if mid == _RESET:
                self._forget_inflight()
            else:
                self._acknowledged(mid, reason)

    def _acknowledged(self, mid: int, reason: ReasonCode | None) -> None:
        entry = self._inflight.pop(mid, None)
        if entry is None:
            return  # a birth, or a late ack from before a reconnect whose rows are resent
        message, sent_at = entry
        if reason is not None and (reason.is_failure or reason.value == _NO_MATCHING_SUBSCRIBERS):
            # "No matching subscribers" is a success code in MQTT 5, but the broker dropped the
            # message: nobody was there to receive it (Mosquitto 2.0 does not restore a
            # persistent shared subscription after a restart until its worker reconnects).
            # Keep the rows and send them again once someone listens.
            self.counters.refused += 1
            if not self._refusing:
                log.warning("broker did not deliver a message on %s: %s; resending until it does",
                            message.topic, reason)
            self._refusing = True
            self._forget_inflight()
            self._stop.wait(1.0)  # do not spin on a broker that keeps refusing
            return
        self._refusing = False
        self.outbox.ack(message.row_ids)
        self.counters.records_acked += message.records
        if self._on_acked:
            self._on_acked(message, time.monotonic() - sent_at)

    def _forget_inflight(self) -> None:
        # Un-acknowledged rows stay in the outbox; resetting the cursors sends them again.
        self.counters.resends += len(self._inflight)
        self._inflight.clear()
        self._cursors.clear()

    # -- paho callbacks (network thread): never block here -------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _ud: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("connect to %s refused: %s", self.address, reason)
            return
        self.connected.set()
        self._unreachable = False
        self._wake.set()
        if self._on_connect_hook:
            self._on_connect_hook(client)
        log.info("connected to %s", self.address)

    def _on_connect_fail(self, _client: mqtt.Client, _ud: Any) -> None:
        if not self._unreachable:  # once per outage, not once per attempt
            log.warning("cannot reach %s; retrying with back-off", self.address)
        self._unreachable = True

    def _on_disconnect(
        self, client: mqtt.Client, _ud: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        # The forwarder thread forgets the in-flight window, so it is sent again after reconnect.
        self.connected.clear()
        self._events.put((_RESET, None))
        self._wake.set()
        if self._on_disconnect_hook:
            self._on_disconnect_hook(client)
        if not self._stop.is_set():
            log.warning("lost connection to %s (%s); reconnecting", self.address, reason)

    def _on_publish(
        self, _client: mqtt.Client, _ud: Any, mid: int, reason: ReasonCode, _props: Any
    ) -> None:
        self._events.put((mid, reason))
        self._wake.set()


# Packet ids are 1..65535, so 0 can mark a disconnect in the event queue.
_RESET = 0
# MQTT 5 PUBACK reason 0x10.
_NO_MATCHING_SUBSCRIBERS = 16
