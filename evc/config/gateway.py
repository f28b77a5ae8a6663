"""The fog gateway's config (``gateway.yaml``): outbox, intake, uplink, degradation, models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ByteSize, Field, field_validator, model_validator

from evc.config.common import (
    MAX_TTL_S,
    BrokerConfig,
    ClassName,
    MetricsConfig,
    ModelTrustConfig,
    PositiveSeconds,
    StrictModel,
    valid_name,
)
from evc.outbox import DropPolicy

__all__ = [
    "DegradeConfig",
    "ForwardConfig",
    "GatewayConfig",
    "GatewayIngestConfig",
    "GatewayModelsConfig",
    "OutboxConfig",
]


class OutboxConfig(StrictModel):
    """The SQLite store-and-forward queue."""

    path: Path = Field(..., description="Database file; created with its folder if missing.")
    max_bytes: ByteSize = Field(
        ByteSize(1 << 30), description="Byte cap on stored records, e.g. 512MiB or 2GB."
    )
    drop_policy: DropPolicy = Field(
        DropPolicy.EVICT_LOWEST_OLDEST,
        description="When full: evict_lowest_oldest (lowest priority, oldest first) or "
        "reject_new (keep what is stored, refuse new records). Every drop is counted.",
    )
    ttl_s: float | None = Field(
        7 * 24 * 3600.0,
        gt=0,
        le=MAX_TTL_S,
        description="Wall-clock time-to-live of a record in seconds; null keeps records forever.",
    )
    ttl_s_by_class: dict[ClassName, PositiveSeconds | None] = Field(
        default_factory=dict,
        description="Time-to-live per record class (sample, detection, summary, event, alert) "
        "in seconds, null for no limit; classes left out use ttl_s.",
    )
    synchronous: Literal["NORMAL", "FULL"] = Field(
        "NORMAL",
        description="NORMAL survives a killed process; FULL also survives power loss "
        "(one fsync per commit, 1-20 ms on SD cards).",
    )


class GatewayIngestConfig(StrictModel):
    """How the gateway takes device messages off the fog broker."""

    max_batch: int = Field(
        200, ge=1, le=65535,
        description="Commit and ack after this many messages (also the MQTT Receive Maximum).",
    )
    max_delay_ms: float = Field(
        5.0, gt=0, le=10_000, description="Commit and ack when the oldest message is this old."
    )
    max_payload_bytes: ByteSize = Field(
        ByteSize(256 * 1024), ge=64, description="Device messages larger than this are rejected."
    )
    protocol: Literal["3.1.1", "5"] = Field(
        "3.1.1",
        description="MQTT version of the intake connection to the fog broker. 3.1.1 is about "
        "twice as fast to consume in Python (no properties to parse per message); its window "
        "is the broker's max_inflight_messages, which should be >= max_batch.",
    )


class ForwardConfig(StrictModel):
    """How the gateway forwards its outbox to the cloud broker."""

    batch_max_records: int = Field(500, ge=1, description="Records per uplink message, at most.")
    batch_max_bytes: ByteSize = Field(
        ByteSize(256 * 1024),
        ge=1024,
        le=15 * 1024 * 1024,
        description="Record bytes per uplink message, about; keep it under the cloud broker's "
        "max_packet_size (16 MiB in brokers/) and the cloud's ingest.max_payload_bytes.",
    )
    max_inflight: int = Field(
        16, ge=1, le=1000, description="Uplink messages published and not yet acknowledged."
    )
    weights_by_class: dict[ClassName, Annotated[int, Field(ge=1, le=1_000_000)]] = Field(
        default_factory=dict,
        description="Share of the uplink per record class while several wait (deficit round "
        "robin by bytes); classes left out keep their default (alert 16, event 8, summary 4, "
        "detection 2, sample 1). Every class with records gets some: none starves.",
    )
    compression: Literal["none", "zstd"] = Field(
        "zstd", description="Compression of uplink batches (the cloud reads both)."
    )
    compression_level: int = Field(3, ge=1, le=19, description="zstd level of uplink batches.")
    max_bytes_per_s: ByteSize | None = Field(
        None,
        description="Uplink bandwidth cap in bytes per second (e.g. 256KiB); null: no cap. "
        "What does not fit waits in the outbox, it is never dropped for it.",
    )
    burst_bytes: ByteSize | None = Field(
        None,
        description="Bytes the uplink may send at once after an idle period; null: one "
        "second of max_bytes_per_s, but at least batch_max_bytes.",
    )

    @model_validator(mode="after")
    def _burst_needs_a_rate(self) -> ForwardConfig:
        if self.burst_bytes is not None and self.max_bytes_per_s is None:
            raise ValueError("forward.burst_bytes needs forward.max_bytes_per_s")
        if self.max_bytes_per_s is not None and int(self.max_bytes_per_s) <= 0:
            raise ValueError("forward.max_bytes_per_s must be positive")
        if self.burst_bytes is not None and int(self.burst_bytes) <= 0:
            raise ValueError("forward.burst_bytes must be positive")
        return self

    @property
    def burst(self) -> int:
        """The token bucket size (only meaningful with a rate)."""
        if self.burst_bytes is not None:
            return int(self.burst_bytes)
        return max(int(self.max_bytes_per_s or 0), int(self.batch_max_bytes))


class DegradeConfig(StrictModel):
    """Degradation while offline: summarise detections instead of storing every frame."""

    backlog_records: int | None = Field(
        None, ge=1,
        description="When the outbox holds more records than this (checked once per intake "
        "batch), detections frames the pipeline would forward are summarised per device and "
        "class over window_s windows (SUMMARY records with exact counts) instead of stored; "
        "null (the default) never degrades.",
    )
    window_s: float = Field(
        10.0, gt=0, le=86_400,
        description="Length of a summary window while degraded, in seconds of device time.",
    )


class GatewayModelsConfig(ModelTrustConfig):
    """Model delivery through the gateway: fetched once from the cloud, cached, served."""

    cache_max_bytes: ByteSize | None = Field(
        None, description="Evict least recently used artifacts past this size; null: keep all."
    )


class GatewayConfig(StrictModel):
    """A fog gateway: one per site, beside the site's Mosquitto."""

    site: str = Field(..., description="Site id; devices publish under evc/{site}/dev/...")
    gateway_id: str = Field(..., description="Gateway id, unique in the deployment.")
    state_dir: Path = Field(Path("var/gateway"), description="Folder for the boot epoch file.")
    fog: BrokerConfig = Field(default_factory=BrokerConfig, description="The site's broker.")
    cloud: BrokerConfig = Field(default_factory=BrokerConfig, description="The cloud broker.")
    outbox: OutboxConfig = Field(
        default_factory=lambda: OutboxConfig(path=Path("var/gateway/outbox.db")),
        description="Store-and-forward queue towards the cloud.",
    )
    ingest: GatewayIngestConfig = Field(default_factory=GatewayIngestConfig, description="Intake.")
    forward: ForwardConfig = Field(default_factory=ForwardConfig, description="Uplink batching.")
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Logging level."
    )
    pipeline: list[Any] = Field(
        default_factory=list,
        description="Operators run in order over each detections frame before it is stored, "
        "each selected by its type (threshold, zones, min_detections, or a registered one); "
        "empty forwards every record as received.",
    )
    degrade: DegradeConfig = Field(
        default_factory=DegradeConfig,
        description="Summarise detections frames instead of storing them while the outbox "
        "backlog is large (a long cloud outage); off by default.",
    )
    models: GatewayModelsConfig = Field(
        default_factory=GatewayModelsConfig,
        description="Model updates for the site's devices; off without trusted keys.",
    )
    heartbeat_interval_s: float = Field(
        10.0, gt=0,
        description="Seconds between the gateway's own heartbeats (outbox depth, backlog age, "
        "links), sent to the cloud with its batches.",
    )

    @field_validator("site", "gateway_id")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return valid_name(value, "id")

    @field_validator("pipeline", mode="before")
    @classmethod
    def _operators(cls, value: Any) -> Any:
        # Imported here: the pipeline's configs build on evc.config's StrictModel, so evc.config
        # cannot import the pipeline while it loads.
        from evc.gateway.pipeline import validate_operators  # noqa: PLC0415

        operators = validate_operators(value)
        labels = [operator.label for operator in operators]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            raise ValueError(f"operator names must be unique; give each a name: {repeated}")
        return operators

    @model_validator(mode="after")
    def _consistent_sizes(self) -> GatewayConfig:
        if int(self.outbox.max_bytes) < int(self.ingest.max_payload_bytes):
            raise ValueError(
                "outbox.max_bytes must be at least ingest.max_payload_bytes, or an accepted "
                "message could never be stored"
            )
        uses_aggregate = any(getattr(op, "type", None) == "aggregate" for op in self.pipeline)
        if self.degrade.backlog_records is not None and uses_aggregate:
            # Both would key their summaries by a window's first frame: one would be lost.
            raise ValueError(
                "degrade cannot be combined with an aggregate operator in the pipeline; "
                "the pipeline's aggregate already summarises"
            )
        return self
