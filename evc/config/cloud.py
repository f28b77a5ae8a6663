"""A cloud worker's config (``cloud.yaml``): intake, record store, model registry and rollouts."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import ByteSize, Field, field_validator

from evc.config.common import BrokerConfig, MetricsConfig, StrictModel, valid_name

__all__ = ["CloudConfig", "CloudIngestConfig", "CloudModelsConfig", "StoreConfig"]


class CloudModelsConfig(StrictModel):
    """Model registry, artifact serving and staged rollouts in the cloud."""

    registry: Path | None = Field(
        None, description="Model registry folder; null: this worker serves no models."
    )
    rollouts: bool = Field(
        True, description="Advance staged rollouts here; enable in one worker per deployment."
    )
    tick_s: float = Field(2.0, gt=0, description="Seconds between rollout steps.")
    report_window_s: float = Field(
        300.0, gt=0, description="Devices heard from within this window count in a rollout."
    )


class CloudIngestConfig(StrictModel):
    """How a cloud worker takes batches off the cloud broker."""

    worker_id: str = Field("cloud-1", description="Worker id; its MQTT session is kept under it.")
    share_group: str | None = Field(
        "evc-cloud",
        description="MQTT 5 shared-subscription group; workers in one group split the stream. "
        "null subscribes every worker to everything.",
    )
    max_batch: int = Field(50, ge=1, le=65535, description="Commit after this many batches.")
    max_delay_ms: float = Field(
        10.0, gt=0, le=10_000, description="Commit when the oldest batch is this old."
    )
    max_payload_bytes: ByteSize = Field(
        ByteSize(16 * 1024 * 1024), description="Uplink messages larger than this are rejected."
    )

    @field_validator("worker_id", "share_group")
    @classmethod
    def _valid_name(cls, value: str | None) -> str | None:
        return None if value is None else valid_name(value, "id")


class StoreConfig(StrictModel):
    """Where the cloud stores records."""

    type: Literal["sqlite"] = Field("sqlite", description="Store backend.")
    path: Path = Field(Path("var/cloud/records.db"), description="SQLite database file.")


class CloudConfig(StrictModel):
    """A cloud ingest worker."""

    cloud: BrokerConfig = Field(default_factory=BrokerConfig, description="The cloud broker.")
    ingest: CloudIngestConfig = Field(default_factory=CloudIngestConfig, description="Intake.")
    store: StoreConfig = Field(default_factory=StoreConfig, description="Record store.")
    models: CloudModelsConfig = Field(
        default_factory=CloudModelsConfig, description="Model registry and rollouts."
    )
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="Prometheus.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Logging level."
    )
