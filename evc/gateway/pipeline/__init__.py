"""The gateway's declarative pipeline: small operators over each detections frame.

The gateway's ``pipeline:`` YAML is an ordered list of operator configs, each selected by its
``type`` (a discriminated union). Built-in operators: ``threshold``, ``zones``,
``min_detections``, ``track``, ``aggregate`` and ``alert`` over detections frames, and
``sample`` over SAMPLE records; add your own with :func:`register_operator`.
"""

from evc.gateway.pipeline.aggregate import Aggregate, AggregateConfig
from evc.gateway.pipeline.alert import AlertConfig, Alerts
from evc.gateway.pipeline.base import (
    Drop,
    Frame,
    Operator,
    OperatorConfig,
    Outcome,
    PipelineListener,
    PipelineResult,
)
from evc.gateway.pipeline.chain import Pipeline
from evc.gateway.pipeline.count import MinDetections, MinDetectionsConfig
from evc.gateway.pipeline.registry import (
    build_pipeline,
    operator_types,
    register_operator,
    validate_operators,
)
from evc.gateway.pipeline.sample import SampleConfig, SampleOperator, SampleRecord, SampleSelect
from evc.gateway.pipeline.threshold import Threshold, ThresholdConfig
from evc.gateway.pipeline.track import Track, TrackConfig, greedy_match
from evc.gateway.pipeline.zones import Zones, ZonesConfig, inside

register_operator(ThresholdConfig, Threshold)
register_operator(ZonesConfig, Zones)
register_operator(MinDetectionsConfig, MinDetections)
register_operator(TrackConfig, Track)
register_operator(AggregateConfig, Aggregate)
register_operator(AlertConfig, Alerts)
register_operator(SampleConfig, SampleSelect)

__all__ = [
    "Aggregate",
    "AggregateConfig",
    "AlertConfig",
    "Alerts",
    "Drop",
    "Frame",
    "MinDetections",
    "MinDetectionsConfig",
    "Operator",
    "OperatorConfig",
    "Outcome",
    "Pipeline",
    "PipelineListener",
    "PipelineResult",
    "SampleConfig",
    "SampleOperator",
    "SampleRecord",
    "SampleSelect",
    "Threshold",
    "ThresholdConfig",
    "Track",
    "TrackConfig",
    "Zones",
    "ZonesConfig",
    "build_pipeline",
    "greedy_match",
    "inside",
    "operator_types",
    "register_operator",
    "validate_operators",
]
