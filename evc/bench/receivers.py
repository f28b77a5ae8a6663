"""Where benchmarks count arrivals: a counting subscriber, a store that timestamps commits."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from evc.bench.processes import BenchError
from evc.cloud import IncomingRecord, InsertResult, SqliteRecordStore, StoreStats
from evc.wire import batch_from, decode

_SUBSCRIBE_TIMEOUT_S = 10.0
_MAX_BATCH_BYTES = 64 * 1024 * 1024

RecordKey = tuple[str, int, int]


def one_record(_payload: bytes) -> int:
    """Weigh a plain message: it is one record."""
    return 1


def batch_records(payload: bytes) -> int:
    """Weigh an uplink batch: the number of records it carries."""
    return len(batch_from(decode(payload, max_bytes=_MAX_BATCH_BYTES)).records)


class MessageCounter:
    """A plain paho subscriber (QoS 1, clean session) that counts records until ``expected``.

    Args:
        host: broker address.
        port: broker port.
        topic: subscription filter.
        expected: records to wait for.
        weigh: records carried by one message.
    """

    def __init__(
        self, *, host: str, port: int, topic: str, expected: int,
        weigh: Callable[[bytes], int] = one_record,
    ) -> None:
        self.topic = topic
        self.expected = expected
        self.count = 0
        self.first_at: float | None = None
        self.done_at: float | None = None
        self.done = threading.Event()
        self._weigh = weigh
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"evc-bench-sub-{uuid.uuid4().hex[:10]}"
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._client.connect(host, port, keepalive=60)
        self._client.loop_start()
        if not self._subscribed.wait(_SUBSCRIBE_TIMEOUT_S):
            self.close()
            raise BenchError(f"counting subscriber could not subscribe to {topic} on {port}")

    def _on_connect(self, client: mqtt.Client, *_args: Any) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_subscribe(self, *_args: Any) -> None:
        self._subscribed.set()

    def _on_message(self, _client: mqtt.Client, _ud: Any, message: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        if self.first_at is None:
            self.first_at = now
        self.count += self._weigh(bytes(message.payload))
        if self.count >= self.expected and self.done_at is None:
            self.done_at = now
            self.done.set()

    def wait(self, timeout: float) -> float:
        """Block until every expected record arrived; return the monotonic time it did."""
        if not self.done.wait(timeout) or self.done_at is None:
            raise BenchError(
                f"only {self.count} of {self.expected} records reached {self.topic} in {timeout} s"
            )
        return self.done_at

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class TimingStore:
    """A :class:`~evc.cloud.RecordStore` that notes when each record's transaction committed.

    Wraps a real :class:`~evc.cloud.SqliteRecordStore`; the time is taken right after its
    ``insert`` returns, that is after COMMIT, with the wall clock the devices stamp frames with.
    """

    def __init__(self, inner: SqliteRecordStore) -> None:
        self.inner = inner
        self.committed_ns: dict[RecordKey, int] = {}
        self._lock = threading.Lock()

    def insert(self, records: Sequence[IncomingRecord]) -> InsertResult:
        result = self.inner.insert(records)
        now = time.time_ns()
        with self._lock:
            for record in records:
                self.committed_ns.setdefault((record.origin, record.epoch, record.seq), now)
        return result

    def stats(self) -> StoreStats:
        return self.inner.stats()

    def close(self) -> None:
        self.inner.close()

    def committed(self, key: RecordKey) -> int | None:
        """Wall-clock ns of the commit that stored ``key``, or None if it is not stored."""
        with self._lock:
            return self.committed_ns.get(key)
