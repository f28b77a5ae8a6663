"""The fog gateway daemon: fog broker -> validate -> outbox -> cloud broker.

Two connections, two threads of work:

* intake: a commit-then-ack consumer on the fog broker (persistent session, manual acks)
  admits each device message and commits the batch to the outbox before acking it;
* uplink: an outbox forwarder to the cloud broker that packs many records per message and
  deletes rows only on PUBACK.

The gateway publishes a retained birth on the cloud broker when it connects, and its Last Will
publishes the matching death when it vanishes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import paho.mqtt.client as mqtt

from evc.config import GatewayConfig, by_priority
from evc.errors import WireError
from evc.gateway.commands import PipelineCommands
from evc.gateway.downlink import DownlinkRelay
from evc.gateway.intake import admit
from evc.gateway.models import ModelRelay
from evc.gateway.pipeline import Aggregate, AggregateConfig, Pipeline, build_pipeline
from evc.identity import SequenceCounter, next_boot_epoch
from evc.metrics import GatewayMetrics, MetricsServer, serve
from evc.models.signing import TrustedKeys
from evc.mqtt import BatchPacker, CommitThenAckConsumer, OutboxForwarder, Will
from evc.mqtt.budget import UplinkBudget
from evc.mqtt.forwarder import Outgoing
from evc.outbox import NewRecord, Outbox, Priority, now_ms
from evc.service import Service
from evc.wire import (
    UPLINK_CHANNELS,
    Channel,
    DeviceTopic,
    GatewayTopic,
    Kind,
    decode,
    device_filter,
    encode_map,
    map_from,
)
from evc.wire.codec import BatchEncoding

log = logging.getLogger(__name__)

# Channels whose records feed the per-device gauges (evc_gateway_device_*).
_REPORT_CHANNELS = frozenset({Channel.HEARTBEAT, Channel.STATE})
# Outbox state key of the degrade windows (pipeline operators' keys start with "pipeline/").
DEGRADE_STATE_KEY = "degrade/aggregate"


class Gateway(Service):
    """A running fog gateway. Use as a context manager, or call :meth:`start` and :meth:`stop`."""

    def __init__(self, config: GatewayConfig, *, metrics: GatewayMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or GatewayMetrics()
        self.epoch = next_boot_epoch(config.state_dir, config.gateway_id)
        self._state_seq = SequenceCounter()
        self.metrics_server: MetricsServer | None = None
        self._state_topic = str(GatewayTopic(config.site, config.gateway_id, Channel.STATE))
        # No operators, no pipeline: records are stored as received, with no decode cost.
        self.pipeline: Pipeline | None = (
            build_pipeline(config.pipeline, listener=self.metrics.pipeline)
            if config.pipeline else None
        )
        self.outbox = Outbox(
            config.outbox.path,
            max_bytes=int(config.outbox.max_bytes),
            policy=config.outbox.drop_policy,
            default_ttl_s=config.outbox.ttl_s,
            ttl_s_by_priority=by_priority(config.outbox.ttl_s_by_class),
            weights=by_priority(config.forward.weights_by_class),
            synchronous=config.outbox.synchronous,
            on_drop=self.metrics.outbox.on_drop,
        )
        # Stateful operators (aggregate) resume from the snapshot committed with the last batch.
        if self.pipeline is not None:
            self.pipeline.restore(self.outbox.load_state)
        # Degradation while offline: frames summarised instead of stored over a large backlog.
        self.degrade: Aggregate | None = None
        self._restore_degrade()
        # A pipeline pushed by the cloud (and saved in state_dir) replaces the YAML's; it needs
        # the outbox to restore its operators' state.
        self.commands = PipelineCommands(
            config=config, metrics=self.metrics, install=self._install_pipeline
        )
        self.intake = CommitThenAckConsumer(
            client_id=f"evc-gw-{config.site}-{config.gateway_id}",
            address=config.fog.address,
            # Only what devices send up: model requests on the same broker are not for the outbox.
            subscriptions=[device_filter(config.site, channel) for channel in UPLINK_CHANNELS],
            retired=[device_filter(config.site)],
            commit=self._commit,
            max_batch=config.ingest.max_batch,
            max_delay_s=config.ingest.max_delay_ms / 1000,
            mqtt5=config.ingest.protocol == "5",
        )
        self.uplink = OutboxForwarder(
            outbox=self.outbox,
            client_id=f"evc-gw-{config.site}-{config.gateway_id}-up",
            address=config.cloud.address,
            packer=BatchPacker(
                topic=str(GatewayTopic(config.site, config.gateway_id, Channel.BATCH)),
                site=config.site,
                origin=config.gateway_id,
                epoch=self.epoch,
                encoding=(
                    BatchEncoding.ZSTD
                    if config.forward.compression == "zstd"
                    else BatchEncoding.PLAIN
                ),
                level=config.forward.compression_level,
            ),
            max_inflight=config.forward.max_inflight,
            peek_records=config.forward.batch_max_records,
            peek_bytes=int(config.forward.batch_max_bytes),
            will=Will(self._state_topic, self._state_payload("offline")),
            on_connect=self._publish_birth,
            on_acked=self._count_acked,
            budget=_budget(config),
        )
        self.downlink = DownlinkRelay(
            site=config.site, gateway_id=config.gateway_id, fog=config.fog.address,
            cloud=config.cloud.address, metrics=self.metrics,
        )
        self.models: ModelRelay | None = None
        if config.models.trusted_keys:
            cap = config.models.cache_max_bytes
            self.models = ModelRelay(
                site=config.site, gateway_id=config.gateway_id, fog=config.fog.address,
                cloud=config.cloud.address, folder=Path(config.state_dir) / "models",
                trusted=TrustedKeys.load(config.models.trusted_keys),
                metrics=self.metrics.models, cache_max_bytes=None if cap is None else int(cap),
            )
        self._beats = threading.Thread(target=self._beat, name="gateway-heartbeat", daemon=True)
        self._stopping = threading.Event()
        self._watch_counters()
        self.metrics.fog_connected.set_function(lambda: float(self.intake.connected.is_set()))
        self.metrics.cloud_connected.set_function(lambda: float(self.uplink.connected.is_set()))

    def _watch_counters(self) -> None:
        counters = self.uplink.counters
        self.metrics.outbox.watch(self.outbox, lambda: counters.records_acked)
        self.metrics.uplink_resends.read = lambda: counters.resends
        self.metrics.uplink_refused.read = lambda: counters.refused
        self.metrics.uplink_throttled.read = lambda: counters.throttled_s
        self.metrics.commit_failures.read = lambda: self.intake.commit_failures

    def start(self) -> None:
        """Open the metrics endpoint and both connections."""
        if self.config.metrics.port is not None:
            self.metrics_server = serve(
                self.metrics.registry, host=self.config.metrics.host, port=self.config.metrics.port
            )
        self.uplink.start()
        self.intake.start()
        self.commands.start()
        self.downlink.start()
        if self.models is not None:
            self.models.start()
        self._beats.start()
        log.info(
            "gateway %s/%s up (epoch %d): fog %s -> cloud %s, backlog %d records",
            self.config.site, self.config.gateway_id, self.epoch,
            self.config.fog.address, self.config.cloud.address, len(self.outbox),
        )

    def stop(self, drain_timeout_s: float = 0.0) -> None:
        """Stop taking messages, optionally let the outbox drain, say goodbye, close."""
        self._stopping.set()
        if self._beats.is_alive():
            self._beats.join(timeout=5)
        if self.models is not None:
            self.models.stop()
        self.downlink.stop()
        self.commands.stop()
        self.intake.stop()
        self._flush_pipeline()
        self.uplink.wake()
        self.uplink.stop(
            drain_timeout_s=drain_timeout_s,
            goodbye=(self._state_topic, self._state_payload("offline")),
        )
        self.outbox.close()
        if self.metrics_server:
            self.metrics_server.close()
        log.info("gateway %s/%s stopped", self.config.site, self.config.gateway_id)


    # -- intake --------------------------------------------------------------------------------

    def _commit(self, messages: Sequence[mqtt.MQTTMessage]) -> None:
        records: list[NewRecord] = []
        max_bytes = int(self.config.ingest.max_payload_bytes)
        pipeline = self.pipeline  # read once: a pushed config swaps it between batches only
        degrade = self._degrading()
        reports: list[bytes] = []
        for message in messages:
            payload = bytes(message.payload)
            try:
                admitted, channel = admit(
                    message.topic, payload, site=self.config.site,
                    max_bytes=max_bytes, pipeline=pipeline,
                    degrade=degrade, listener=self.metrics.pipeline,
                )
            except WireError as exc:
                self.metrics.rejected.labels(exc.reason).inc()
                log.debug("rejected a message on %s: %s", message.topic, exc)
                continue
            self.metrics.received.labels(channel.value).inc()
            # Nothing for a frame the pipeline dropped (counted there, still acked); plus an
            # EVENT record for the events an operator derived from the frame.
            records.extend(admitted)
            if channel in _REPORT_CHANNELS:
                reports.append(payload)
        started = time.perf_counter()
        try:
            stored = self.outbox.put(records, state=self._snapshot(pipeline))
        except Exception:
            # The batch will be redelivered: forget what the operators saw of it.
            if pipeline is not None:
                pipeline.restore(self.outbox.load_state)
            self._restore_degrade()
            raise
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        self.metrics.committed.inc(stored)
        self.uplink.wake()
        self._observe_devices(reports)

    def _observe_devices(self, reports: list[bytes]) -> None:
        """Update the per-device gauges from admitted heartbeats and state records.

        Only these two kinds are decoded again (a few per device per minute); detections
        frames, the bulk of the traffic, never are.
        """
        for payload in reports:
            try:
                envelope = decode(payload, max_bytes=len(payload))
                fields = map_from(envelope)
            except WireError:  # admitted already: cannot happen, and never stops the intake
                continue
            self.metrics.devices.observe(
                envelope.origin, heartbeat=envelope.kind is Kind.HEARTBEAT,
                epoch=envelope.epoch, seq=envelope.seq, ts_ms=envelope.ts_ms, fields=fields,
            )

    def _install_pipeline(self, pipeline: Pipeline | None) -> None:
        # One attribute assignment, read once per batch by _commit: no lock needed.
        if pipeline is not None:
            pipeline.restore(self.outbox.load_state)
        self.pipeline = pipeline

    def _flush_pipeline(self) -> None:
        """Close every open window (``aggregate``) and store its summary with the new state.

        Called once intake has stopped; windows otherwise close on the next frame of their
        device past their end.
        """
        pipeline = self.pipeline
        if pipeline is None and self.degrade is None:
            return
        closed = [
            *(pipeline.flush(None) if pipeline is not None else ()),
            *(self.degrade.flush(None) if self.degrade is not None else ()),
        ]
        records = [
            NewRecord(
                topic=str(DeviceTopic(self.config.site, decode(data).origin, Channel.DETECTIONS)),
                payload=data, priority=Priority.SUMMARY,
            )
            for data in closed
        ]
        self.metrics.committed.inc(self.outbox.put(records, state=self._snapshot(pipeline)))

    # -- degradation while offline -------------------------------------------------------------

    def _degrading(self) -> Aggregate | None:
        """The degrade operator if this batch is to be summarised (backlog over the limit)."""
        limit = self.config.degrade.backlog_records
        if self.degrade is None or limit is None:
            return None
        return self.degrade if len(self.outbox) > limit else None

    def _restore_degrade(self) -> None:
        """(Re)build the degrade windows from the state committed with the last batch."""
        if self.config.degrade.backlog_records is None:
            return
        self.degrade = Aggregate(AggregateConfig(
            type="aggregate", name="degrade", window_s=self.config.degrade.window_s,
            forward_frames=False,
        ))
        data = self.outbox.load_state(DEGRADE_STATE_KEY)
        if data is not None:
            self.degrade.restore(data)

    def _snapshot(self, pipeline: Pipeline | None) -> dict[str, bytes] | None:
        """The state to commit with a batch: the pipeline's operators' and the degrade windows'."""
        state = pipeline.snapshot() if pipeline is not None else {}
        if self.degrade is not None:
            state[DEGRADE_STATE_KEY] = self.degrade.snapshot()
        return state or None

    # -- uplink --------------------------------------------------------------------------------

    def _state_payload(self, state: str) -> bytes:
        return encode_map(
            Kind.STATE, origin=self.config.gateway_id, epoch=self.epoch,
            seq=self._state_seq.next(), ts_ms=now_ms(),
            fields={"state": state, "site": self.config.site},
        )

    def _beat(self) -> None:
        # Through the outbox, like any record: the cloud learns the backlog of a gateway it
        # cannot hear from as soon as the link is back, in order with the rest.
        while not self._stopping.wait(self.config.heartbeat_interval_s):
            try:
                self.outbox.put([NewRecord(
                    topic=self._state_topic, payload=self._heartbeat_payload(),
                    priority=Priority.SUMMARY,
                )])
                self.uplink.wake()
            except Exception:  # a full disk must not end the heartbeats for good
                log.exception("gateway heartbeat failed")

    def _heartbeat_payload(self) -> bytes:
        stats = self.outbox.stats()
        now = now_ms()
        oldest = stats.oldest_created_ms
        return encode_map(
            Kind.HEARTBEAT, origin=self.config.gateway_id, epoch=self.epoch,
            seq=self._state_seq.next(), ts_ms=now,
            fields={
                "outbox_records": stats.records, "outbox_bytes": stats.bytes,
                "backlog_age_s": 0.0 if oldest is None else round((now - oldest) / 1000, 3),
                "cloud_connected": self.uplink.connected.is_set(),
                "fog_connected": self.intake.connected.is_set(),
            },
        )

    def _publish_birth(self, client: mqtt.Client) -> None:
        client.publish(self._state_topic, self._state_payload("online"), qos=1, retain=True)

    def _count_acked(self, message: Outgoing, seconds: float) -> None:
        self.metrics.forwarded.inc(message.records)
        self.metrics.uplink_messages.inc()
        self.metrics.uplink_bytes.inc(len(message.payload))
        self.metrics.uplink_ack.observe(seconds)
        for priority, size in message.class_bytes.items():
            self.metrics.uplink_class_bytes.labels(priority.name.lower()).inc(size)


def _budget(config: GatewayConfig) -> UplinkBudget | None:
    rate = config.forward.max_bytes_per_s
    if rate is None:
        return None
    return UplinkBudget(bytes_per_s=int(rate), burst_bytes=config.forward.burst)
