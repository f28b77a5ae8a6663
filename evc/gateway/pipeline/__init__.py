"""The gateway's declarative pipeline: small operators over each detections frame.

The gateway's ``pipeline:`` YAML is an ordered list of operator configs, each selected by its
``type`` (a discriminated union). Built-in operators: ``threshold``, ``zones`` and
``min_detections``; add your own with :func:`register_operator`.
"""

from evc.gateway.pipeline.base import (
    Drop,
    Frame,
    Operator,
    OperatorConfig,
    Outcome,
    PipelineListener,
)
from evc.gateway.pipeline.chain import Pipeline
from evc.gateway.pipeline.count import MinDetections, MinDetectionsConfig
from evc.gateway.pipeline.registry import (
    build_pipeline,
    operator_types,
    register_operator,
    validate_operators,
)
from evc.gateway.pipeline.threshold import Threshold, ThresholdConfig
from evc.gateway.pipeline.zones import Zones, ZonesConfig, inside

register_operator(ThresholdConfig, Threshold)
register_operator(ZonesConfig, Zones)
register_operator(MinDetectionsConfig, MinDetections)

__all__ = [
    "Drop",
    "Frame",
    "MinDetections",
    "MinDetectionsConfig",
    "Operator",
    "OperatorConfig",
    "Outcome",
    "Pipeline",
    "PipelineListener",
    "Threshold",
    "ThresholdConfig",
    "Zones",
    "ZonesConfig",
    "build_pipeline",
    "inside",
    "operator_types",
    "register_operator",
    "validate_operators",
]
