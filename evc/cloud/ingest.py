"""The cloud ingest worker: cloud broker -> validate -> store, exactly once.

Workers share the uplink stream through an MQTT 5 shared subscription, commit each batch of
uplink messages to the store in one transaction, and acknowledge only after that commit.
Records are deduplicated on (site, origin, epoch, seq, kind), so redelivery is harmless.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import paho.mqtt.client as mqtt

from evc.cloud.models import ModelService
from evc.cloud.store import IncomingRecord, RecordStore, SqliteRecordStore
from evc.config import CloudConfig
from evc.errors import SchemaError, WireError
from evc.metrics import CloudMetrics, MetricsServer, serve
from evc.mqtt import CommitThenAckConsumer
from evc.outbox import now_ms
from evc.service import Service
from evc.wire import Channel, GatewayTopic, batch_from, decode, gateway_filter
from evc.wire.codec import detection_count, validate_record

log = logging.getLogger(__name__)


class CloudIngest(Service):
    """A running cloud ingest worker."""

    def __init__(
        self,
        config: CloudConfig,
        *,
        store: RecordStore | None = None,
        metrics: CloudMetrics | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or CloudMetrics()
        self.store = store or SqliteRecordStore(config.store.path)
        self.metrics_server: MetricsServer | None = None
        self.consumer = CommitThenAckConsumer(
            client_id=f"evc-cloud-{config.ingest.worker_id}",
            address=config.cloud.address,
            subscriptions=[gateway_filter(Channel.BATCH, share_group=config.ingest.share_group)],
            commit=self._commit,
            max_batch=config.ingest.max_batch,
            max_delay_s=config.ingest.max_delay_ms / 1000,
        )
        self.models: ModelService | None = None
        if config.models.registry is not None and isinstance(self.store, SqliteRecordStore):
            self.models = ModelService(
                address=config.cloud.address, registry=config.models.registry, store=self.store,
                rollouts=config.models.rollouts, tick_s=config.models.tick_s,
                report_window_s=config.models.report_window_s, metrics=self.metrics,
            )
        self.metrics.connected.set_function(lambda: float(self.consumer.connected.is_set()))
        self.metrics.commit_failures.read = lambda: self.consumer.commit_failures

    def start(self) -> None:
        """Open the metrics endpoint and start consuming."""
        if self.config.metrics.port is not None:
            self.metrics_server = serve(
                self.metrics.registry, host=self.config.metrics.host, port=self.config.metrics.port
            )
        self.consumer.start()
        if self.models is not None:
            self.models.start()
        log.info(
            "cloud ingest %s up on %s", self.config.ingest.worker_id, self.config.cloud.address
        )

    def stop(self) -> None:
        """Commit what is pending, disconnect, close the store."""
        if self.models is not None:
            self.models.stop()
        self.consumer.stop()
        self.store.close()
        if self.metrics_server:
            self.metrics_server.close()


    def _commit(self, messages: Sequence[mqtt.MQTTMessage]) -> None:
        records: list[IncomingRecord] = []
        for message in messages:
            records.extend(self._unpack(message))
        started = time.perf_counter()
        result = self.store.insert(records)
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        self.metrics.stored.inc(result.stored)
        self.metrics.duplicates.inc(result.duplicates)

    def _unpack(self, message: mqtt.MQTTMessage) -> list[IncomingRecord]:
        max_bytes = int(self.config.ingest.max_payload_bytes)
        try:
            topic = GatewayTopic.parse(message.topic)
            # A compressed batch may unpack to no more than a plain one could carry.
            batch = batch_from(
                decode(bytes(message.payload), max_bytes=max_bytes), max_bytes=max_bytes
            )
            if batch.site != topic.site:
                raise SchemaError(f"batch of site {batch.site!r} on the topic of {topic.site!r}")
        except WireError as exc:
            self.metrics.rejected.labels(exc.reason).inc()
            log.warning("rejected an uplink message on %s: %s", message.topic, exc)
            return []
        self.metrics.batches.inc()
        stored_ms = now_ms()
        records = []
        for data in batch.records:
            try:
                envelope = validate_record(data, max_bytes=max_bytes)
            except WireError as exc:
                self.metrics.rejected.labels(exc.reason).inc()
                continue
            records.append(
                IncomingRecord(
                    site=batch.site, origin=envelope.origin, epoch=envelope.epoch,
                    seq=envelope.seq, kind=int(envelope.kind), ts_ms=envelope.ts_ms,
                    stored_ms=stored_ms, gateway=topic.gateway,
                    detections=detection_count(envelope), payload=data,
                )
            )
        return records
