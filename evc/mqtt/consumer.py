"""Commit-then-ack consumption: the first half of the per-hop guarantee.

A consumer subscribes with a persistent session and manual acknowledgements. Messages are
collected into a batch that is handed to a commit function when it holds ``max_batch`` messages
or its oldest message is ``max_delay_s`` old, whichever comes first, and only after that function
returns are they acknowledged. A process killed before the ack gets the messages again from the
broker on reconnect; the commit function must therefore be idempotent.

The batch size must stay within the broker's in-flight window (our Receive Maximum): a consumer
that waited for more un-acked messages than the broker will send would wait forever.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from evc.mqtt.client import BrokerAddress, Will, connect_async, new_client

log = logging.getLogger(__name__)

CommitFunction = Callable[[Sequence[mqtt.MQTTMessage]], None]


class CommitThenAckConsumer:
    """Subscribe, commit in batches, then acknowledge.

    Args:
        client_id: stable id; the broker keeps our session (and un-acked messages) under it.
        address: the broker.
        subscriptions: topic filters, subscribed at QoS 1 on every (re)connect.
        retired: filters an earlier version subscribed to, unsubscribed on every connect: a
            persistent session would otherwise keep delivering what they match.
        commit: called with each batch; must make it durable before returning. If it raises,
            the batch is retried with backoff and nothing is acknowledged meanwhile.
        max_batch: flush after this many messages (also our Receive Maximum).
        max_delay_s: flush when the oldest pending message is this old.
        will: Last Will published by the broker if this process vanishes.
        on_connect: called after every (re)connect, for birth messages.
        mqtt5: MQTT 5 (Receive Maximum = ``max_batch``, shared subscriptions by the standard);
            or MQTT 3.1.1, about twice as fast to parse, for high-rate intakes. A 3.1.1
            consumer's window is the broker's ``max_inflight_messages``, which should be at
            least ``max_batch`` (the time-based flush keeps a smaller window from stalling).
    """

    def __init__(
        self,
        *,
        client_id: str,
        address: BrokerAddress,
        subscriptions: Sequence[str],
        commit: CommitFunction,
        max_batch: int = 100,
        max_delay_s: float = 0.005,
        will: Will | None = None,
        on_connect: Callable[[mqtt.Client], None] | None = None,
        mqtt5: bool = True,
        retired: Sequence[str] = (),
    ) -> None:
        self.address = address
        self.subscriptions = list(subscriptions)
        self.retired = [topic for topic in retired if topic not in self.subscriptions]
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.connected = threading.Event()
        self.commit_failures = 0
        self._commit = commit
        self._on_connect_hook = on_connect
        self._pending: list[mqtt.MQTTMessage] = []
        self._oldest = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._unreachable = False
        self._client = new_client(
            client_id=client_id, manual_ack=True, will=will, address=address, mqtt5=mqtt5,
            persistent=True,
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_connect_fail = self._on_connect_fail
        self._client.on_message = self._on_message
        self._timer = threading.Thread(
            target=self._flush_on_time, name="consumer-timer", daemon=True
        )

    @property
    def client(self) -> mqtt.Client:
        """The underlying paho client (for publishing births and replies)."""
        return self._client

    def start(self) -> None:
        """Connect in the background and start consuming."""
        connect_async(self._client, self.address, persistent=True, receive_maximum=self.max_batch)
        self._client.loop_start()
        self._timer.start()

    def stop(self, *, disconnect: bool = True) -> None:
        """Commit and ack what is pending, then disconnect (the session stays on the broker)."""
        self._stop.set()
        self._timer.join(timeout=5)
        self.flush()
        if disconnect:
            self._client.disconnect()
        self._client.loop_stop()

    def flush(self) -> None:
        """Commit and acknowledge the pending batch now."""
        with self._lock:
            self._flush_locked()

    # -- paho callbacks (network thread) -------------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, _ud: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if reason.is_failure:
            log.warning("connect to %s refused: %s", self.address, reason)
            return
        if self.retired:
            client.unsubscribe(self.retired)
        for topic in self.subscriptions:
            client.subscribe(topic, qos=1)
        self.connected.set()
        self._unreachable = False
        if self._on_connect_hook:
            self._on_connect_hook(client)
        log.info("connected to %s, subscribed to %s", self.address, self.subscriptions)

    def _on_connect_fail(self, _client: mqtt.Client, _ud: Any) -> None:
        if not self._unreachable:  # once per outage, not once per attempt
            log.warning("cannot reach %s; retrying with back-off", self.address)
        self._unreachable = True

    def _on_disconnect(
        self, _client: mqtt.Client, _ud: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        self.connected.clear()
        # Un-acked messages come back from the broker on reconnect, so what is pending now
        # must not be acked on the new connection with stale packet ids: commit it and forget.
        with self._lock:
            if self._pending:
                self._commit_with_retry(self._pending)
                self._pending = []
        if not self._stop.is_set():
            log.warning("disconnected from %s: %s; reconnecting", self.address, reason)

    def _on_message(self, _client: mqtt.Client, _ud: Any, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            if not self._pending:
                self._oldest = time.monotonic()
            self._pending.append(message)
            if len(self._pending) >= self.max_batch:
                self._flush_locked()

    # -- batching ------------------------------------------------------------------------------

    def _flush_on_time(self) -> None:
        while not self._stop.wait(self.max_delay_s / 2):
            with self._lock:
                if self._pending and time.monotonic() - self._oldest >= self.max_delay_s:
                    self._flush_locked()

    def _flush_locked(self) -> None:
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        self._commit_with_retry(batch)
        for message in batch:
            if message.qos > 0:
                self._client.ack(message.mid, message.qos)

    def _commit_with_retry(self, batch: Sequence[mqtt.MQTTMessage]) -> None:
        # Holding the batch un-acked while retrying is deliberate back-pressure: the broker
        # stops sending once our Receive Maximum is reached, and queues for us instead.
        delay = 0.1
        while True:
            try:
                self._commit(batch)
                return
            except Exception:
                self.commit_failures += 1
                log.exception("commit of %d messages failed; retrying in %.1fs", len(batch), delay)
                if self._stop.wait(delay):
                    raise
                delay = min(delay * 2, 5.0)
