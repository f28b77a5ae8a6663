"""Benchmarks over real Mosquitto brokers: raw MQTT, the gateway, end-to-end latency, outages.

What is measured runs in this process; load generators run in child processes
(:mod:`evc.bench.loadgen`) so that they do not share its GIL. Every scenario uses its own site
name, so sessions and queues of one never feed another.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evc.bench.processes import BenchError, LoadProcess
from evc.bench.receivers import MessageCounter, RecordKey, TimingStore, batch_records
from evc.cloud import CloudIngest, SqliteRecordStore
from evc.config import (
    BrokerConfig,
    CloudConfig,
    CloudIngestConfig,
    GatewayConfig,
    OutboxConfig,
    StoreConfig,
)
from evc.gateway import Gateway
from evc.harness import Broker
from evc.wire import Channel, Kind, gateway_filter

# In-flight QoS 1 publishes per load generator: the fastest plain-paho pattern measured.
PUBLISH_WINDOW = 1000
DEVICES = 8  # simulated cameras behind one publisher
_READY_TIMEOUT_S = 60.0
_SETTLE_S = 0.3  # lets SUBACKs arrive before the load starts


def _site(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def _publish_job(broker: Broker, *, payloads: str, count: int, **extra: Any) -> dict[str, Any]:
    return {
        "type": "publish", "host": broker.host, "port": broker.port, "payloads": payloads,
        "client_id": f"evc-bench-pub-{uuid.uuid4().hex[:10]}", "count": count,
        "window": PUBLISH_WINDOW, "devices": DEVICES, **extra,
    }


def _run_load(load: LoadProcess, counter: MessageCounter, timeout: float) -> float:
    """Release the generator; return records/s from its first publish to the last arrival."""
    load.wait_ready(_READY_TIMEOUT_S)
    load.go()
    done_at = counter.wait(timeout)
    result = load.result(timeout)
    return counter.expected / (done_at - float(result["started"]))


# -- raw MQTT and the gateway ------------------------------------------------------------------


def raw_mqtt(broker: Broker, count: int) -> float:
    """Baseline: msgs/s from a paho publisher through Mosquitto to a paho subscriber, QoS 1."""
    topic = f"bench/raw/{uuid.uuid4().hex[:8]}"
    job = _publish_job(broker, payloads="raw", count=count, topic=topic)
    with LoadProcess(job) as load, MessageCounter(
        host=broker.host, port=broker.port, topic=topic, expected=count
    ) as counter:
        return _run_load(load, counter, timeout=60 + count / 1000)


def gateway_config(site: str, fog: Broker, cloud: Broker, workdir: Path) -> GatewayConfig:
    """A gateway of ``site`` with default intake and uplink settings, state under ``workdir``."""
    return GatewayConfig(
        site=site, gateway_id="gw-1", state_dir=workdir / "state",
        fog=BrokerConfig(url=fog.url), cloud=BrokerConfig(url=cloud.url),
        outbox=OutboxConfig(path=workdir / "outbox.db"), log_level="WARNING",
    )


def _wait_connected(gateway: Gateway, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not (gateway.intake.connected.is_set() and gateway.uplink.connected.is_set()):
        if time.monotonic() > deadline:
            raise BenchError("the gateway did not connect to both brokers")
        time.sleep(0.01)
    time.sleep(_SETTLE_S)


@contextmanager
def running_gateway(config: GatewayConfig) -> Iterator[Gateway]:
    """A started gateway, connected to both brokers; stopped on exit."""
    gateway = Gateway(config)
    gateway.start()
    try:
        _wait_connected(gateway)
        yield gateway
    finally:
        gateway.stop()


def gateway_throughput(fog: Broker, cloud: Broker, count: int, workdir: Path) -> float:
    """Frames/s from publishers on device topics, through a Gateway, to a cloud subscriber.

    A frame counts once a subscriber on the cloud broker has received the uplink batch that
    carries it: it was admitted, committed to the outbox, packed, published and acknowledged.
    """
    site = _site("thru")
    job = _publish_job(fog, payloads="frames", count=count, site=site)
    topic = gateway_filter(Channel.BATCH)
    with LoadProcess(job) as load, MessageCounter(
        host=cloud.host, port=cloud.port, topic=topic, expected=count, weigh=batch_records
    ) as counter, running_gateway(gateway_config(site, fog, cloud, workdir)):
        return _run_load(load, counter, timeout=60 + count / 500)


# -- end-to-end latency ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Latency:
    """Device publish -> committed in the cloud store, in milliseconds."""

    p50_ms: float
    p99_ms: float
    max_ms: float
    frames: int
    lost: int


def cloud_config(cloud: Broker, workdir: Path) -> CloudConfig:
    """A cloud worker on ``cloud`` with default batching and its own share group."""
    return CloudConfig(
        cloud=BrokerConfig(url=cloud.url),
        ingest=CloudIngestConfig(worker_id="cloud-1", share_group=_site("grp")),
        store=StoreConfig(path=workdir / "records.db"), log_level="WARNING",
    )


def e2e_latency(
    fog: Broker, cloud: Broker, workdir: Path, *, rate: float, seconds: float, warmup_s: float
) -> Latency:
    """Devices publish ``rate`` frames/s for ``seconds``; time each one until it is committed."""
    site = _site("lat")
    store = TimingStore(SqliteRecordStore(workdir / "records.db"))
    ingest = CloudIngest(cloud_config(cloud, workdir), store=store)
    job = {
        "type": "devices", "url": fog.url, "site": site, "devices": 10, "rate": rate,
        "count": int(rate * seconds), "heartbeat_interval_s": 0.0,
    }
    ingest.start()
    try:
        with LoadProcess(job) as load, running_gateway(
            gateway_config(site, fog, cloud, workdir)
        ):
            load.wait_ready(_READY_TIMEOUT_S)
            load.go()
            result = load.result(timeout=seconds + 60)
            published = [(str(o), int(e), int(s), int(t)) for o, e, s, t in result["published"]]
            _wait_stored(store, [(o, e, s) for o, e, s, _ in published], timeout=15)
    finally:
        ingest.stop()
    return _latency(store, published, skip=int(rate * warmup_s))


def _wait_stored(store: TimingStore, keys: list[RecordKey], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(store.committed(key) is not None for key in keys[-100:]):
            return
        time.sleep(0.05)


def _latency(store: TimingStore, published: list[tuple[str, int, int, int]], skip: int) -> Latency:
    measured = published[skip:]
    latencies = [
        (committed - at_ns) / 1e6
        for origin, epoch, seq, at_ns in measured
        if (committed := store.committed((origin, epoch, seq))) is not None
    ]
    lost = sum(1 for o, e, s, _ in published if store.committed((o, e, s)) is None)
    if not latencies:
        raise BenchError("no frame reached the cloud store")
    p50, p99 = np.percentile(latencies, [50, 99])
    return Latency(float(p50), float(p99), max(latencies), len(measured), lost)


# -- draining a backlog after a cloud outage ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Drain:
    """How fast a gateway catches up once the cloud broker is back."""

    production_per_s: float
    backlog: int
    reconnect_s: float
    drain_s: float
    forwarded_per_s: float
    stored: int
    produced: int

    @property
    def lost(self) -> int:
        """Frames published (and acknowledged by the fog broker) that never reached the store."""
        return self.produced - self.stored

    @property
    def speedup(self) -> float:
        """Forwarding rate during catch-up over production rate."""
        return self.forwarded_per_s / self.production_per_s


def drain_after_outage(
    fog: Broker, cloud: Broker, workdir: Path, *, rate: float, outage_s: float, tail_s: float
) -> Drain:
    """Stop the cloud broker under a steady load, restart it, time the backlog's drain.

    Production never stops: the gateway has to forward the backlog and the live stream.
    """
    site, lead_s = _site("drain"), 1.0
    count = int(rate * (lead_s + outage_s + tail_s))
    job = _publish_job(fog, payloads="frames", count=count, site=site, rate=rate)
    ingest = CloudIngest(cloud_config(cloud, workdir))
    ingest.start()
    try:
        with LoadProcess(job) as load, running_gateway(
            gateway_config(site, fog, cloud, workdir)
        ) as gateway:
            load.wait_ready(_READY_TIMEOUT_S)
            load.go()
            time.sleep(lead_s)
            cloud.stop()
            time.sleep(outage_s)
            drain = _time_drain(gateway, cloud, rate)
            load.result(timeout=lead_s + outage_s + tail_s + 60)
            stored = _wait_count(ingest, count, timeout=30)
    finally:
        ingest.stop()
    return Drain(rate, drain[0], drain[1], drain[2], drain[3], stored, count)


def _time_drain(gateway: Gateway, cloud: Broker, rate: float) -> tuple[int, float, float, float]:
    """Restart the cloud broker; return (backlog, reconnect s, drain s, records/s forwarded)."""
    cloud.restart()
    restarted = time.monotonic()
    while not gateway.uplink.connected.is_set():
        if time.monotonic() - restarted > 60:
            raise BenchError("the gateway did not reconnect to the cloud broker within 60 s")
        time.sleep(0.005)
    reconnected = time.monotonic()
    acked_before = gateway.uplink.counters.records_acked
    backlog = len(gateway.outbox)
    threshold = max(100, backlog // 100, int(rate * 0.05))
    while len(gateway.outbox) > threshold:
        if time.monotonic() - reconnected > 120:
            raise BenchError(f"backlog of {backlog} records did not drain within 120 s")
        time.sleep(0.01)
    drained = time.monotonic()
    forwarded = gateway.uplink.counters.records_acked - acked_before
    return backlog, reconnected - restarted, drained - reconnected, forwarded / (
        drained - reconnected
    )


def _wait_count(ingest: CloudIngest, expected: int, timeout: float) -> int:
    """Stored detections once all ``expected`` are in, or once the count stops moving for 2 s."""
    deadline = time.monotonic() + timeout
    stored, changed = -1, time.monotonic()
    while time.monotonic() < deadline:
        now_stored = ingest.store.stats().by_kind.get(int(Kind.DETECTIONS), 0)
        if now_stored >= expected:
            return now_stored
        if now_stored != stored:
            stored, changed = now_stored, time.monotonic()
        elif time.monotonic() - changed > 2.0:
            break
        time.sleep(0.1)
    return stored
