"""YAML configuration of every EVC role, validated by pydantic.

Every model forbids unknown keys and describes every field; :func:`load_config` reports the first
problems with their key path (``outbox.max_bytes: ...``) so a typo never goes unnoticed.
Relative paths are taken relative to the working directory of the process.

The modules mirror the YAML files: :mod:`~evc.config.gateway`, :mod:`~evc.config.cloud` and
:mod:`~evc.config.device` hold one role's config and its sections each; :mod:`~evc.config.common`
holds what they share (the strict base model, brokers, metrics, model trust, loading).
"""

from __future__ import annotations

from evc.config.cloud import CloudConfig, CloudIngestConfig, CloudModelsConfig, StoreConfig
from evc.config.common import (
    MAX_TTL_S,
    BrokerConfig,
    ClassName,
    MetricsConfig,
    ModelTrustConfig,
    PositiveSeconds,
    StrictModel,
    by_priority,
    load_config,
)
from evc.config.device import (
    ClassesSampler,
    DetectorConfig,
    DeviceConfig,
    DeviceModelsConfig,
    FewSampler,
    ManySampler,
    NearThresholdSampler,
    PublishConfig,
    PublishMode,
    RandomSampler,
    SamplerConfig,
    SamplingConfig,
    SimulationConfig,
)
from evc.config.gateway import (
    DegradeConfig,
    ForwardConfig,
    GatewayConfig,
    GatewayIngestConfig,
    GatewayModelsConfig,
    OutboxConfig,
)

__all__ = [
    "MAX_TTL_S",
    "BrokerConfig",
    "ClassName",
    "ClassesSampler",
    "CloudConfig",
    "CloudIngestConfig",
    "CloudModelsConfig",
    "DegradeConfig",
    "DetectorConfig",
    "DeviceConfig",
    "DeviceModelsConfig",
    "FewSampler",
    "ForwardConfig",
    "GatewayConfig",
    "GatewayIngestConfig",
    "GatewayModelsConfig",
    "ManySampler",
    "MetricsConfig",
    "ModelTrustConfig",
    "NearThresholdSampler",
    "OutboxConfig",
    "PositiveSeconds",
    "PublishConfig",
    "PublishMode",
    "RandomSampler",
    "SamplerConfig",
    "SamplingConfig",
    "SimulationConfig",
    "StoreConfig",
    "StrictModel",
    "by_priority",
    "load_config",
]
