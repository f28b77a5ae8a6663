"""The pipeline runs operators in order and counts each one's outcome; its config is strict."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from pydantic import Field

from evc.config import GatewayConfig, load_config
from evc.errors import ConfigError
from evc.gateway.pipeline import (
    Drop,
    Frame,
    Operator,
    OperatorConfig,
    build_pipeline,
    register_operator,
)
from evc.metrics import GatewayMetrics


def frame(classes: list[int], scores: list[float]) -> Frame:
    return Frame(
        origin="cam-1", epoch=1, seq=1, ts_ms=0, model_version="m", width=640, height=480,
        class_ids=np.array(classes, dtype=np.uint16),
        scores=np.array(scores, dtype=np.float32),
        boxes=np.tile(np.array([[10, 10, 20, 20]], dtype=np.float32), (len(classes), 1)),
    )


PIPELINE = [
    {"type": "threshold", "default": 0.5},
    {"type": "min_detections"},
]


def counted(metrics: GatewayMetrics, operator: str, outcome: str, reason: str = "") -> float:
    value = metrics.registry.get_sample_value(
        "evc_gateway_pipeline_frames_total",
        {"operator": operator, "outcome": outcome, "reason": reason},
    )
    return value or 0.0


def test_pipeline_counts_passed_changed_and_dropped() -> None:
    metrics = GatewayMetrics()
    config = GatewayConfig(site="s", gateway_id="g", pipeline=PIPELINE)
    pipeline = build_pipeline(config.pipeline, listener=metrics.pipeline)
    untouched = frame([0, 1], [0.9, 0.8])
    assert pipeline(untouched) is untouched
    changed = pipeline(frame([0, 1, 2], [0.9, 0.1, 0.2]))
    assert changed is not None
    assert changed.class_ids.tolist() == [0]
    assert pipeline(frame([0], [0.1])) is None

    assert counted(metrics, "threshold", "passed") == 1
    assert counted(metrics, "threshold", "changed", "threshold") == 2
    assert counted(metrics, "min_detections", "passed") == 2
    assert counted(metrics, "min_detections", "dropped", "too_few_detections") == 1
    removed = metrics.registry.get_sample_value(
        "evc_gateway_pipeline_detections_removed_total",
        {"operator": "threshold", "outcome": "changed"},
    )
    assert removed == 3


class EveryOtherConfig(OperatorConfig):
    """Test operator: drops odd sequence numbers."""

    type: Literal["every_other"] = Field(description="Selects this operator.")


class EveryOther(Operator[EveryOtherConfig]):
    def __call__(self, frame: Frame) -> Frame:
        if frame.seq % 2:
            raise Drop("odd")
        return frame


class BrokenConfig(OperatorConfig):
    """Test operator that always fails."""

    type: Literal["broken"] = Field(description="Selects this operator.")


class Broken(Operator[BrokenConfig]):
    def __call__(self, frame: Frame) -> Frame:  # noqa: ARG002 -- fails before reading it
        raise RuntimeError("bug")


def test_a_registered_user_operator_is_selected_by_type() -> None:
    register_operator(EveryOtherConfig, EveryOther)
    config = GatewayConfig(
        site="s", gateway_id="g", pipeline=[{"type": "every_other", "name": "sampler"}]
    )
    pipeline = build_pipeline(config.pipeline)
    assert pipeline(frame([0], [0.9])) is None
    assert pipeline.operators[0].name == "sampler"


def test_a_failing_operator_passes_the_frame_on_and_is_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    register_operator(BrokenConfig, Broken)
    metrics = GatewayMetrics()
    config = GatewayConfig(site="s", gateway_id="g", pipeline=[{"type": "broken"}])
    detections = frame([0], [0.9])
    assert build_pipeline(config.pipeline, listener=metrics.pipeline)(detections) is detections
    assert counted(metrics, "broken", "error", "RuntimeError") == 1
    assert "broken failed" in caplog.text


def test_registering_needs_a_type_literal() -> None:
    with pytest.raises(ValueError, match="Literal"):
        register_operator(OperatorConfig, EveryOther)  # type: ignore[arg-type]


YAML = """
site: depot-1
gateway_id: gw-1
pipeline:
  - type: threshold
    default: 0.4
    min_score: {person: 0.6, 2: 0.3}
    class_names: [person, car, dog]
  - type: zones
    mode: keep
    devices:
      cam-1:
        - [[0, 0], [320, 0], [320, 480], [0, 480]]
  - type: min_detections
"""


def test_a_yaml_pipeline_parses(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(YAML)
    config = load_config(path, GatewayConfig)
    assert [operator.type for operator in config.pipeline] == [
        "threshold", "zones", "min_detections",
    ]
    pipeline = build_pipeline(config.pipeline)
    assert len(pipeline) == 3


@pytest.mark.parametrize(
    ("replace", "by", "message"),
    [
        ("type: zones", "type: zonez", "pipeline.1: Input tag 'zonez'"),
        ("- [[0, 0], [320, 0], [320, 480], [0, 480]]", "- [[0, 0], [320, 0]]",
         "pipeline.1.zones.devices.cam-1.0: List should have at least 3 items"),
        ("default: 0.4", "default: 0.4\n    mode: keep",
         "pipeline.0.threshold.mode: Extra inputs are not permitted"),
        ("  - type: min_detections", "  - type: threshold", "operator names must be unique"),
    ],
)
def test_a_bad_pipeline_is_a_config_error_naming_the_key(
    tmp_path: Path, replace: str, by: str, message: str
) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(YAML.replace(replace, by))
    with pytest.raises(ConfigError, match="invalid setting") as error:
        load_config(path, GatewayConfig)
    assert message in str(error.value)
