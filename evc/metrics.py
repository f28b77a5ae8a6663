"""Prometheus metrics: one registry per daemon, every name with its unit.

Each daemon builds its metrics object once and passes it to the parts that count. A registry per
instance (not the global one) lets tests and benchmarks run several daemons in one process.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from threading import Thread
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from evc.errors import ConfigError
from evc.outbox import DropReason, Outbox, Priority, now_ms


@dataclass
class MetricsServer:
    """A running /metrics endpoint."""

    server: WSGIServer
    thread: Thread

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve(registry: CollectorRegistry, *, host: str, port: int) -> MetricsServer:
    """Expose ``registry`` on http://host:port/metrics (port 0 picks a free port).

    Raises:
        ConfigError: the address cannot be bound (in use, or not an address of this host).
    """
    try:
        server, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise ConfigError(f"metrics endpoint {host}:{port} cannot listen: {exc}") from exc
    return MetricsServer(server, thread)


class CallbackCounter(Collector):
    """A counter whose value another object keeps; read at scrape time.

    For totals that are counted where they happen (``ForwarderCounters``, a consumer's commit
    failures) by code that should not depend on Prometheus.
    """

    def __init__(
        self, registry: CollectorRegistry, name: str, documentation: str,
        read: Callable[[], float],
    ) -> None:
        self._name = name
        self._documentation = documentation
        self.read: Callable[[], float] = read
        registry.register(self)

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self._name, self._documentation, value=self.read())


def _zero() -> float:
    return 0.0


class OutboxMetrics:
    """Backlog size, age and drops of one outbox, read at scrape time."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.dropped = Counter(
            f"{prefix}_outbox_dropped_total",
            "Records dropped from the outbox, by reason and priority class.",
            ["reason", "priority"],
            registry=registry,
        )
        self.backlog_records = Gauge(
            f"{prefix}_outbox_backlog_records", "Records waiting in the outbox.", registry=registry
        )
        self.backlog_bytes = Gauge(
            f"{prefix}_outbox_backlog_bytes", "Bytes waiting in the outbox.", registry=registry
        )
        self.backlog_age = Gauge(
            f"{prefix}_outbox_backlog_age_seconds",
            "Age of the oldest record waiting in the outbox.",
            registry=registry,
        )

        self.drain_rate = Gauge(
            f"{prefix}_outbox_drain_rate_records_per_second",
            "Records acknowledged by the next hop per second, over the last 30 s.",
            registry=registry,
        )
        self.drain_eta = Gauge(
            f"{prefix}_outbox_drain_eta_seconds",
            "Backlog divided by the drain rate; +Inf while records wait and none drain.",
            registry=registry,
        )

    def on_drop(self, reason: DropReason, priority: Priority, count: int) -> None:
        """Outbox drop listener."""
        self.dropped.labels(reason.value, priority.name.lower()).inc(count)

    def watch(self, outbox: Outbox, acked: Callable[[], int]) -> None:
        """Read the backlog gauges whenever metrics are scraped.

        Args:
            outbox: the queue to watch.
            acked: total records the next hop has acknowledged so far.
        """
        self.backlog_records.set_function(lambda: len(outbox))
        self.backlog_bytes.set_function(lambda: outbox.bytes)
        self.backlog_age.set_function(_age_of_oldest(outbox))
        estimate = DrainEstimate(acked)
        self.drain_rate.set_function(estimate.rate)
        self.drain_eta.set_function(lambda: estimate.eta(len(outbox)))


class DrainEstimate:
    """Drain rate and time-to-empty from a counter of acknowledged records, sampled on read."""

    def __init__(self, acked: Callable[[], int], *, window_s: float = 30.0) -> None:
        self._acked = acked
        self._window_s = window_s
        self._samples: deque[tuple[float, int]] = deque()
        self._lock = threading.Lock()

    def rate(self) -> float:
        """Records per second over the window (0 until two samples exist)."""
        now, acked = time.monotonic(), self._acked()
        with self._lock:
            self._samples.append((now, acked))
            while len(self._samples) > 2 and now - self._samples[0][0] > self._window_s:
                self._samples.popleft()
            first_time, first_acked = self._samples[0]
        elapsed = now - first_time
        return (acked - first_acked) / elapsed if elapsed > 0 else 0.0

    def eta(self, backlog: int) -> float:
        """Seconds until ``backlog`` records drain at the current rate."""
        if backlog == 0:
            return 0.0
        rate = self.rate()
        return backlog / rate if rate > 0 else math.inf


def _age_of_oldest(outbox: Outbox) -> Callable[[], float]:
    def age() -> float:
        oldest = outbox.stats().oldest_created_ms
        return 0.0 if oldest is None else max(0.0, (now_ms() - oldest) / 1000)

    return age


class PipelineMetrics:
    """What each pipeline operator did to each detections frame (a ``PipelineListener``)."""

    def __init__(self, registry: CollectorRegistry, prefix: str) -> None:
        self.frames = Counter(
            f"{prefix}_pipeline_frames_total",
            "Detections frames through each pipeline operator, by outcome (passed, changed, "
            "dropped, error) and reason.",
            ["operator", "outcome", "reason"],
            registry=registry,
        )
        self.removed = Counter(
            f"{prefix}_pipeline_detections_removed_total",
            "Detections removed by each pipeline operator (a dropped frame's all count), by "
            "outcome.",
            ["operator", "outcome"],
            registry=registry,
        )
        self.events = Counter(
            f"{prefix}_pipeline_events_total",
            "Object events (appeared, moved, left) emitted by the pipeline's operators, by type.",
            ["type"],
            registry=registry,
        )
        self.alerts = Counter(
            f"{prefix}_pipeline_alerts_total",
            "Alerts raised by the pipeline's alert rules, by rule name.",
            ["rule"],
            registry=registry,
        )

    def record(self, operator: str, outcome: str, reason: str, removed: int) -> None:
        """Count one frame through ``operator``."""
        self.frames.labels(operator, outcome, reason).inc()
        if removed:
            self.removed.labels(operator, outcome).inc(removed)

    def record_events(self, operator: str, event_type: str, count: int) -> None:
        """Count object events emitted by ``operator`` (labelled by type only)."""
        del operator  # one tracker per pipeline in practice; keep the series few
        self.events.labels(event_type).inc(count)

    def record_alert(self, operator: str, rule: str) -> None:
        """Count one alert of ``rule`` (labelled by rule only: rule names are unique enough)."""
        del operator
        self.alerts.labels(rule).inc()


class GatewayMetrics:
    """Everything a fog gateway counts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "evc_gateway_received_messages_total", "Device messages taken off the fog broker.",
            ["channel"], registry=r,
        )
        self.rejected = Counter(
            "evc_gateway_rejected_messages_total", "Device messages rejected, by reason.",
            ["reason"], registry=r,
        )
        self.committed = Counter(
            "evc_gateway_committed_records_total", "Device records committed to the outbox.",
            registry=r,
        )
        self.forwarded = Counter(
            "evc_gateway_forwarded_records_total",
            "Records acknowledged by the cloud broker.", registry=r,
        )
        self.uplink_messages = Counter(
            "evc_gateway_uplink_batches_total", "Batches acknowledged by the cloud broker.",
            registry=r,
        )
        self.uplink_bytes = Counter(
            "evc_gateway_uplink_bytes_total", "Payload bytes acknowledged by the cloud broker.",
            registry=r,
        )
        self.uplink_class_bytes = Counter(
            "evc_gateway_uplink_record_bytes_total",
            "Record bytes acknowledged by the cloud broker, by priority class, before "
            "compression.",
            ["priority"], registry=r,
        )
        self.uplink_resends = CallbackCounter(
            r, "evc_gateway_uplink_resent_batches_total",
            "Uplink batches sent again after a disconnect or a refusal.", _zero,
        )
        self.uplink_refused = CallbackCounter(
            r, "evc_gateway_uplink_refused_batches_total",
            "Uplink batches the cloud broker did not deliver (kept and resent).", _zero,
        )
        self.uplink_throttled = CallbackCounter(
            r, "evc_gateway_uplink_throttled_seconds_total",
            "Time the uplink waited for its bandwidth budget.", _zero,
        )
        self.commit_failures = CallbackCounter(
            r, "evc_gateway_commit_failures_total",
            "Intake batches whose commit to the outbox failed (retried, not acked).", _zero,
        )
        self.uplink_ack = Histogram(
            "evc_gateway_uplink_ack_seconds", "Publish-to-PUBACK time of uplink batches.",
            registry=r,
        )
        self.commit_seconds = Histogram(
            "evc_gateway_commit_seconds", "Time to commit one intake batch to the outbox.",
            registry=r,
        )
        self.cloud_connected = Gauge(
            "evc_gateway_cloud_connected", "1 while connected to the cloud broker.", registry=r
        )
        self.fog_connected = Gauge(
            "evc_gateway_fog_connected", "1 while connected to the fog broker.", registry=r
        )
        self.outbox = OutboxMetrics(r, "evc_gateway")
        self.pipeline = PipelineMetrics(r, "evc_gateway")
        self.config_updates = Counter(
            "evc_gateway_config_updates_total",
            "Pipeline configs pushed on the command topic, by result (applied, rejected, stale).",
            ["result"], registry=r,
        )
        self.downlink_relayed = Counter(
            "evc_gateway_downlink_relayed_total",
            "Device commands relayed down to the fog broker and replies relayed up, by direction.",
            ["direction"], registry=r,
        )
        self.downlink_refused = Counter(
            "evc_gateway_downlink_refused_total",
            "Device commands or replies not relayed (wrong site or topic, too large).",
            ["direction"], registry=r,
        )
        self.models = ModelDeliveryMetrics(r, "evc_gateway")
        self.devices = DeviceMetrics(r, "evc_gateway")


# A sweep walks every device: at most once a minute from the intake (and at each scrape).
_SWEEP_EVERY_MS = 60_000


@dataclass
class _DeviceSeen:
    """What the gateway last heard from one device (for :class:`DeviceMetrics`)."""

    last_ms: int = 0  # newest ts_ms (device clock) of a heartbeat or state record
    heartbeat_key: tuple[int, int] = (-1, -1)  # (epoch, seq) of the newest heartbeat
    state_key: tuple[int, int] = (-1, -1)  # (epoch, seq) of the newest state record
    alive: bool = True  # the newest state record was not a death
    model: tuple[str, str] | None = None  # the (model, state) labels of model_info


class DeviceMetrics:
    """Per-device gauges from the heartbeats and state records a gateway admits.

    Records of a device are ordered by ``(epoch, seq)``, which grows with every record, so a
    redelivered old one changes nothing. A device is online while its newest state record is not
    a death and it was heard from within ``stale_after_s`` (gateway clock against device
    ``ts_ms``). A device silent for ``forget_after_s``, or the least recently heard beyond
    ``max_devices``, loses all its series: label cardinality stays bounded by the live fleet.
    """

    def __init__(
        self, r: CollectorRegistry, prefix: str, *, stale_after_s: float = 60.0,
        forget_after_s: float = 86_400.0, max_devices: int = 10_000,
    ) -> None:
        self.stale_after_s = stale_after_s
        self.forget_after_s = forget_after_s
        self.max_devices = max_devices
        self._seen: dict[str, _DeviceSeen] = {}
        self._swept_ms = 0
        self._lock = threading.Lock()
        self.devices = Gauge(
            f"{prefix}_devices",
            "Devices by state: online (newest state record a birth, heard from within the "
            "stale limit) or offline.", ["state"], registry=r,
        )
        self.devices.labels("online").set_function(lambda: self._count(online=True))
        self.devices.labels("offline").set_function(lambda: self._count(online=False))
        self.last_heartbeat = Gauge(
            f"{prefix}_device_last_heartbeat_timestamp_seconds",
            "Device clock time of the newest heartbeat of each device, Unix seconds.",
            ["device"], registry=r,
        )
        self.inference_p50 = Gauge(
            f"{prefix}_device_inference_p50_seconds",
            "Median inference latency each device reported in its newest heartbeat.",
            ["device"], registry=r,
        )
        self.fps = Gauge(
            f"{prefix}_device_frames_per_second",
            "Frames per second each device reported in its newest heartbeat.",
            ["device"], registry=r,
        )
        self.model_info = Gauge(
            f"{prefix}_device_model_info",
            "1 for the model version and model state each device reported last.",
            ["device", "model", "state"], registry=r,
        )

    def observe(
        self, device: str, *, heartbeat: bool, epoch: int, seq: int, ts_ms: int,
        fields: dict[str, Any],
    ) -> None:
        """Take one admitted heartbeat (``heartbeat=True``) or state record of ``device``."""
        with self._lock:
            seen = self._seen.setdefault(device, _DeviceSeen())
            seen.last_ms = max(seen.last_ms, ts_ms)
            key = (epoch, seq)
            if heartbeat and key > seen.heartbeat_key:
                seen.heartbeat_key = key
                self._heartbeat(device, seen, ts_ms, fields)
            elif not heartbeat and key > seen.state_key:
                seen.state_key = key
                seen.alive = fields.get("state") != "offline"
                self._model(device, seen, fields)
            now = now_ms()
            if now - self._swept_ms >= _SWEEP_EVERY_MS:
                self._forget(now)

    def _heartbeat(self, device: str, seen: _DeviceSeen, ts_ms: int, fields: dict[str, Any]
                   ) -> None:
        self.last_heartbeat.labels(device).set(ts_ms / 1000)
        p50 = _number(fields.get("inference_ms_p50"))
        if p50 is not None:
            self.inference_p50.labels(device).set(p50 / 1000)  # heartbeats carry milliseconds
        fps = _number(fields.get("fps"))
        if fps is not None:
            self.fps.labels(device).set(fps)
        self._model(device, seen, fields)

    def _model(self, device: str, seen: _DeviceSeen, fields: dict[str, Any]) -> None:
        """Point model_info at the reported model; a birth without ``model_state`` keeps it."""
        model = fields.get("model")
        if not isinstance(model, str):
            return
        state = fields.get("model_state")
        if not isinstance(state, str):
            state = seen.model[1] if seen.model and seen.model[0] == model else "unknown"
        if seen.model == (model, state):
            return
        if seen.model is not None:
            self.model_info.remove(device, *seen.model)
        seen.model = (model, state)
        self.model_info.labels(device, model, state).set(1)

    def _count(self, *, online: bool) -> float:
        now = now_ms()
        with self._lock:
            self._forget(now)
            return float(sum(self._online(seen, now) == online for seen in self._seen.values()))

    def _online(self, seen: _DeviceSeen, now: int) -> bool:
        return seen.alive and (now - seen.last_ms) / 1000 <= self.stale_after_s

    def _forget(self, now: int) -> None:
        """Drop devices silent past ``forget_after_s``, then the oldest beyond ``max_devices``."""
        self._swept_ms = now
        limit = now - self.forget_after_s * 1000
        gone = [device for device, seen in self._seen.items() if seen.last_ms < limit]
        extra = len(self._seen) - len(gone) - self.max_devices
        if extra > 0:
            kept = sorted((s.last_ms, d) for d, s in self._seen.items() if s.last_ms >= limit)
            gone += [device for _, device in kept[:extra]]
        for device in gone:
            seen = self._seen.pop(device)
            for gauge in (self.last_heartbeat, self.inference_p50, self.fps):
                with contextlib.suppress(KeyError):
                    gauge.remove(device)
            if seen.model is not None:
                self.model_info.remove(device, *seen.model)


def _number(value: Any) -> float | None:
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if is_number else None


class ModelDeliveryMetrics:
    """Model updates through a gateway: manifests, the one fetch per artifact, serving devices."""

    def __init__(self, r: CollectorRegistry, prefix: str) -> None:
        self.manifests = Counter(
            f"{prefix}_model_manifests_total",
            "Desired-model manifests, by result (relayed, cleared, republished after a "
            "reconnect to the fog broker).",
            ["result"], registry=r,
        )
        self.refused = Counter(
            f"{prefix}_model_refused_total",
            "Model updates or chunks from the tier above refused, by reason (signature, "
            "unknown_key, too_large, chunk_digest, digest, io, overflow, ...).",
            ["reason"], registry=r,
        )
        self.requests_refused = Counter(
            f"{prefix}_model_requests_refused_total",
            "Chunk requests from devices not (wholly) served, by reason (not_available, "
            "malformed, topic, chunk_index, chunk_size).",
            ["reason"], registry=r,
        )
        self.fetched_bytes = Counter(
            f"{prefix}_model_fetched_bytes_total",
            "Artifact bytes received from the tier above (the model's uplink cost).",
            registry=r,
        )
        self.served_bytes = CallbackCounter(
            r, f"{prefix}_model_served_bytes", "Artifact bytes served to devices from the cache.",
            _zero,
        )
        self.served_chunks = CallbackCounter(
            r, f"{prefix}_model_served_chunks", "Chunks served to devices.", _zero,
        )
        self.cached = Gauge(
            f"{prefix}_model_cached_artifacts", "Complete artifacts in the cache, read from disk.",
            registry=r,
        )


class CloudMetrics:
    """Everything a cloud ingest worker counts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.batches = Counter(
            "evc_cloud_batches_total", "Uplink batches taken off the cloud broker.", registry=r
        )
        self.stored = Counter(
            "evc_cloud_records_stored_total", "Records newly stored.", registry=r
        )
        self.duplicates = Counter(
            "evc_cloud_duplicate_records_total",
            "Records already stored, dropped by idempotency key.",
            registry=r,
        )
        self.rejected = Counter(
            "evc_cloud_rejected_messages_total", "Batches or records rejected, by reason.",
            ["reason"],
            registry=r,
        )
        self.commit_seconds = Histogram(
            "evc_cloud_commit_seconds", "Time to commit one intake batch to the store.",
            registry=r,
        )
        self.connected = Gauge(
            "evc_cloud_connected", "1 while connected to the cloud broker.", registry=r
        )
        self.commit_failures = CallbackCounter(
            r, "evc_cloud_commit_failures_total",
            "Intake batches whose commit to the store failed (retried, not acked).", _zero,
        )
        self.rollouts = Gauge(
            "evc_cloud_rollouts", "Model rollouts known to this worker, by stage.", ["stage"],
            registry=r,
        )
        self.rollouts_halted = Counter(
            "evc_cloud_rollouts_halted_total",
            "Rollouts halted because a device rolled the new model back, by site and model.",
            ["site", "model"], registry=r,
        )
        self.model_served_bytes = CallbackCounter(
            r, "evc_cloud_model_served_bytes",
            "Model artifact bytes served to gateways (one copy per site is the goal).", _zero,
        )
