"""A device's config (``device.yaml``): detector, publishing, simulation, sampling, models."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ByteSize, Field, field_validator, model_validator

from evc.config.common import BrokerConfig, ModelTrustConfig, StrictModel, valid_name
from evc.wire.topics import ALL_DEVICES

__all__ = [
    "ClassesSampler",
    "DetectorConfig",
    "DeviceConfig",
    "DeviceModelsConfig",
    "FewSampler",
    "ManySampler",
    "NearThresholdSampler",
    "PublishConfig",
    "PublishMode",
    "RandomSampler",
    "SamplerConfig",
    "SamplingConfig",
    "SimulationConfig",
]


class PublishMode(StrEnum):
    """Which frames a device publishes."""

    EVERY_FRAME = "every_frame"
    ON_CHANGE = "on_change"


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
        return valid_name(value, "group")


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
        return valid_name(value, "id")
