"""YAML configuration of every EVC role, validated by pydantic.

Every model forbids unknown keys and describes every field; :func:`load_config` reports the first
problems with their key path (``outbox.max_bytes: ...``) so a typo never goes unnoticed.
Relative paths are taken relative to the working directory of the process.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from evc.errors import ConfigError, TopicError
from evc.mqtt.client import BrokerAddress
from evc.outbox import DropPolicy, Priority
from evc.wire.topics import ALL_DEVICES, validate_name

Model = TypeVar("Model", bound=BaseModel)
Value = TypeVar("Value")

# Record classes as config keys, lowest first: the names of evc.outbox.Priority in lower case.
ClassName = Literal["sample", "detection", "summary", "event", "alert"]
PositiveSeconds = Annotated[float, Field(gt=0, le=10 * 365 * 24 * 3600.0)]


def by_priority(values: Mapping[ClassName, Value]) -> dict[Priority, Value]:
    """Turn a ``{class name: value}`` config map into a ``{Priority: value}`` map."""
    return {Priority[name.upper()]: value for name, value in values.items()}


# A finite bound keeps deadlines inside SQLite's 64-bit integers (10 years).
MAX_TTL_S = 10 * 365 * 24 * 3600.0


class PublishMode(StrEnum):
    """Which frames a device publishes."""

    EVERY_FRAME = "every_frame"
    ON_CHANGE = "on_change"


class StrictModel(BaseModel):
    """Base of every config model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _name(value: str, what: str) -> str:
    try:
        return validate_name(value, what=what)
    except TopicError as exc:
        raise ValueError(str(exc)) from exc


class BrokerConfig(StrictModel):
    """How to reach one MQTT broker."""

    url: str = Field(
        "mqtt://127.0.0.1:1883",
        title="Broker URL",
        description="mqtt://[user[:password]@]host[:port], or mqtts:// for TLS.",
    )
    ca_file: str | None = Field(
        None, title="CA file", description="PEM file of the CA that signed the broker's cert."
    )
    cert_file: str | None = Field(
        None, title="Client certificate",
        description="PEM file of this client's certificate, for brokers that require one "
        "(mutual TLS, mqtts:// only); its CN is the username when the broker takes the identity "
        "from the certificate.",
    )
    key_file: str | None = Field(
        None, title="Client key",
        description="PEM file of the client certificate's private key; null if cert_file holds it.",
    )

    @field_validator("url")
    @classmethod
    def _parse_url(cls, url: str) -> str:
        try:
            BrokerAddress.from_url(url)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc  # pydantic reports ValueErrors with the key path
        return url

    @model_validator(mode="after")
    def _check_client_certificate(self) -> BrokerConfig:
        try:
            self.address  # noqa: B018  # built for its checks: cert needs mqtts://, key needs cert
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return self

    @property
    def address(self) -> BrokerAddress:
        """The parsed address."""
        return BrokerAddress.from_url(
            self.url, ca_file=self.ca_file, cert_file=self.cert_file, key_file=self.key_file
        )


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


class MetricsConfig(StrictModel):
    """The Prometheus endpoint."""

    port: int | None = Field(
        None, ge=0, le=65535, description="Port of /metrics; null disables it, 0 picks a free one."
    )
    host: str = Field("127.0.0.1", description="Address the metrics endpoint listens on.")


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


class ModelTrustConfig(StrictModel):
    """Model updates this node accepts: signed by one of these keys."""

    trusted_keys: list[Path] = Field(
        default_factory=list,
        description="Ed25519 public keys (.pub files, or folders of them) a model manifest "
        "must be signed with; empty: this node takes no model updates.",
    )


class GatewayModelsConfig(ModelTrustConfig):
    """Model delivery through the gateway: fetched once from the cloud, cached, served."""

    cache_max_bytes: ByteSize | None = Field(
        None, description="Evict least recently used artifacts past this size; null: keep all."
    )


class DeviceModelsConfig(ModelTrustConfig):
    """Model updates on a device: verified, smoke-tested, swapped, rolled back if bad."""

    group: str = Field(
        ALL_DEVICES,
        description="Rollout group (e.g. canary); `all` follows only the site default.",
    )
    smoke_max_ms: float = Field(
        2000.0, gt=0, description="A new model slower than this on its smoke test is refused."
    )
    probation_s: float = Field(
        60.0, ge=0, description="Seconds a swapped-in model is watched before it is trusted."
    )
    max_latency_ratio: float = Field(
        2.0, gt=0, description="Roll back when probation latency exceeds this times the old."
    )
    max_error_rate: float = Field(
        0.05, ge=0, lt=1, description="Roll back when this share of probation frames fail."
    )

    @field_validator("group")
    @classmethod
    def _valid_group(cls, value: str) -> str:
        return _name(value, "group")


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
        return _name(value, "id")

    @field_validator("pipeline", mode="before")
    @classmethod
    def _operators(cls, value: Any) -> Any:
        # Imported here: the pipeline's configs build on this module's StrictModel.
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
        return None if value is None else _name(value, "id")


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


class SimulationConfig(StrictModel):
    """Synthetic cameras for demos, tests and benchmarks."""

    devices: int = Field(3, ge=1, le=10_000, description="Simulated cameras.")
    fps: float = Field(10.0, gt=0, le=10_000, description="Frames per second per camera.")
    detections_per_frame: int = Field(10, ge=0, le=1000, description="Detections per frame.")
    duration_s: float | None = Field(
        None, gt=0, description="Stop after this many seconds; null runs until interrupted."
    )
    seed: int = Field(0, description="Seed of the synthetic cameras or detections.")
    domain: Literal["base", "shifted"] = Field(
        "base", description="Scene distribution of the synthetic cameras."
    )
    processes: int = Field(
        1, ge=1, le=64, description="Split the cameras over this many processes."
    )
    shift_after_s: float | None = Field(
        None, gt=0,
        description="Shift every camera's scene to the shifted domain after this many seconds "
        "(a new background and colours: the sample model's accuracy drops); null: never.",
    )


class DetectorConfig(StrictModel):
    """The on-device ONNX detector."""

    model: Path = Field(
        Path("samples/models/shapes-v1.onnx"),
        description="ONNX detection model (Ultralytics YOLOv8/YOLO11 export layout).",
    )
    conf_threshold: float = Field(0.25, ge=0, le=1, description="Minimum confidence kept.")
    iou_threshold: float = Field(0.45, gt=0, le=1, description="Class-wise NMS IoU threshold.")
    max_detections: int = Field(300, ge=1, le=4096, description="Detections per frame, at most.")
    intra_op_threads: int | None = Field(
        None, ge=1, description="ONNX Runtime threads per inference; null lets it choose."
    )
    class_names: list[str] | None = Field(
        None, description="Class names, if the model's metadata has none."
    )


class PublishConfig(StrictModel):
    """Which frames a device publishes (traffic reduction at the source)."""

    mode: PublishMode = Field(
        PublishMode.EVERY_FRAME,
        description="every_frame, or on_change: only frames whose detections changed.",
    )
    iou_threshold: float = Field(
        0.7, gt=0, le=1, description="Same-class boxes overlapping this much are unchanged."
    )
    keyframe_interval_s: float = Field(
        10.0, ge=0, description="Publish at least this often even if nothing changed; 0: never."
    )


class NearThresholdSampler(StrictModel):
    """Sample a frame when any score lies in ``low..high``: the model was unsure."""

    type: Literal["near_threshold"] = Field(description="Selects this sampler.")
    low: float = Field(0.25, ge=0, le=1, description="Lowest score that counts as unsure.")
    high: float = Field(0.5, ge=0, le=1, description="Highest score that counts as unsure.")

    @model_validator(mode="after")
    def _ordered(self) -> NearThresholdSampler:
        if self.low > self.high:
            raise ValueError("low must not be above high")
        return self


class FewSampler(StrictModel):
    """Sample a frame with fewer than ``count`` detections (objects may have been missed)."""

    type: Literal["few"] = Field(description="Selects this sampler.")
    count: int = Field(1, ge=1, le=100_000, description="Fewer detections than this sample.")


class ManySampler(StrictModel):
    """Sample a frame with more than ``count`` detections (a crowded, hard scene)."""

    type: Literal["many"] = Field(description="Selects this sampler.")
    count: int = Field(20, ge=0, le=100_000, description="More detections than this sample.")


class ClassesSampler(StrictModel):
    """Sample a frame in which one of the listed classes was detected (rare classes)."""

    type: Literal["classes"] = Field(description="Selects this sampler.")
    class_ids: list[Annotated[int, Field(ge=0, le=65535)]] = Field(
        ..., min_length=1, description="Class ids whose presence makes a frame a sample."
    )


class RandomSampler(StrictModel):
    """Sample a frame at random: an unbiased view of what the camera sees."""

    type: Literal["random"] = Field(description="Selects this sampler.")
    probability: float = Field(0.01, ge=0, le=1, description="Chance that a frame is sampled.")


SamplerConfig = Annotated[
    NearThresholdSampler | FewSampler | ManySampler | ClassesSampler | RandomSampler,
    Field(discriminator="type"),
]


def _default_samplers() -> list[SamplerConfig]:
    return [NearThresholdSampler(type="near_threshold")]


class SamplingConfig(StrictModel):
    """Which frames a device uploads as hard examples for the learning loop (SAMPLE records)."""

    enabled: bool = Field(False, description="Offer frames to the samplers at all.")
    samplers: list[SamplerConfig] = Field(
        default_factory=_default_samplers,
        description="Tried in order; the first that picks a frame names the sample's reason "
        "(near_threshold, few, many, classes or random).",
    )
    content: Literal["frame", "crops"] = Field(
        "frame",
        description="Upload the whole frame, or only crops around the boxes (where whole "
        "frames may not leave the camera).",
    )
    crop_margin: int = Field(
        4, ge=0, le=1024, description="Pixels kept around each box when content is crops."
    )
    max_per_minute: int = Field(6, ge=0, description="Samples sent per minute, at most.")
    max_per_hour: int = Field(60, ge=0, description="Samples sent per hour, at most.")

    @model_validator(mode="after")
    def _budgets(self) -> SamplingConfig:
        if self.max_per_minute > self.max_per_hour:
            raise ValueError("max_per_minute must not exceed max_per_hour")
        return self


class DeviceConfig(StrictModel):
    """A device node (or a set of simulated ones)."""

    site: str = Field(..., description="Site id of the fog broker this device talks to.")
    device_id: str = Field(
        ..., description="Device id, unique in the site; simulated cameras append -N."
    )
    fog: BrokerConfig = Field(default_factory=BrokerConfig, description="The site's broker.")
    state_dir: Path = Field(
        Path("var/device"), description="Folder for the boot epoch and the offline buffer."
    )
    buffer_max_bytes: ByteSize = Field(
        ByteSize(64 * 1024 * 1024),
        description="Cap of the local buffer used while the fog broker is unreachable.",
    )
    heartbeat_interval_s: float = Field(10.0, gt=0, description="Seconds between heartbeats.")
    model_version: str = Field(
        "synthetic-0",
        description="Model version put in frames when there is no detector (a detector's "
        "model carries its own).",
    )
    detector: DetectorConfig | None = Field(
        None,
        description="Run this detector on synthetic camera frames; null publishes random "
        "synthetic detections instead.",
    )
    publish: PublishConfig = Field(default_factory=PublishConfig, description="Frame policy.")
    simulate: SimulationConfig = Field(
        default_factory=SimulationConfig, description="Used by `evc device simulate`."
    )
    sampling: SamplingConfig = Field(
        default_factory=SamplingConfig,
        description="Hard examples uploaded for retraining (SAMPLE records); off by default.",
    )
    models: DeviceModelsConfig = Field(
        default_factory=DeviceModelsConfig,
        description="Signed model updates through the fog; off without trusted keys.",
    )

    @field_validator("site", "device_id")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return _name(value, "id")


def load_config(path: str | Path, model: type[Model]) -> Model:
    """Read a YAML file into ``model``.

    Raises:
        ConfigError: the file cannot be read, is not YAML, or does not validate; the message
            names each bad key by its dotted path.
    """
    source = Path(path)
    try:
        data = yaml.safe_load(source.read_text()) or {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {source}: {exc}", path=str(source)) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}", path=str(source)) from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: top level must be a mapping", path=str(source))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_describe(source, exc), path=str(source)) from exc


def _describe(source: Path, exc: ValidationError) -> str:
    lines = [f"{source}: {exc.error_count()} invalid setting(s)"]
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"]) or "(top level)"
        lines.append(f"  {key}: {error['msg']}")
    return "\n".join(lines)
