"""The committed sample model: small, standard, and as accurate as its metadata says."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from evc.inference.evaluate import GroundTruth, box_iou
from evc.synthetic import CLASS_NAMES, Domain, SceneConfig, random_frames
from evc.training import measure
from evc.training.export import metadata

MODEL = Path(__file__).resolve().parents[3] / "samples" / "models" / "shapes-v1.onnx"
# Not the seeds the recorded figures were measured on: these frames are new to the model.
FRESH_SEED = 20_261_127


@pytest.fixture(scope="module")
def props() -> dict[str, str]:
    return metadata(onnx.load(str(MODEL)))


def test_the_model_is_small_and_described(props: dict[str, str]) -> None:
    assert MODEL.stat().st_size <= 5 * 1024 * 1024
    assert props["names"] == "{0: 'circle', 1: 'square', 2: 'triangle'}"
    assert props["imgsz"] == "[160, 160]"
    assert props["evc_model_version"] == "shapes-1"
    assert float(props["map50"]) >= 0.9
    assert int(props["train_steps"]) > 0
    assert "train_seed" in props
    card = json.loads(MODEL.with_suffix(".json").read_text())
    assert card["metadata"] == props
    assert card["size_bytes"] == MODEL.stat().st_size


@pytest.mark.parametrize(("domain", "key"), [(Domain.BASE, "map50"), (Domain.SHIFTED, None)])
def test_the_model_reaches_its_recorded_map_on_fresh_frames(
    props: dict[str, str], domain: Domain, key: str | None
) -> None:
    predict = measure.onnx_predictor(str(MODEL))
    frames = list(random_frames(FRESH_SEED, 100, config=SceneConfig(domain=domain)))
    score = measure.map50(predict, frames, num_classes=len(CLASS_NAMES))
    if key is not None:
        assert score >= float(props[key]) - 0.05
    else:
        # The shifted scene is meant to be hard for a model that never saw it.
        assert score <= float(props["map50_shifted"]) + 0.15
        assert score < float(props["map50"]) - 0.3


def test_the_device_detector_runs_the_model() -> None:
    from evc.inference import Detector  # noqa: PLC0415 - the device runtime, tested here for fit

    detector = Detector(MODEL, conf_threshold=0.3)
    assert detector.class_names == CLASS_NAMES
    assert detector.input_size == (160, 160)
    found = total = 0
    for frame in random_frames(FRESH_SEED + 1, 20):
        detections = detector(frame.image)
        truth = GroundTruth(frame.boxes, frame.class_ids)
        iou = box_iou(detections.boxes, truth.boxes)
        same = detections.class_ids[:, None].astype(np.int64) == truth.class_ids[None, :]
        found += int(((iou >= 0.5) & same).any(axis=0).sum())
        total += len(truth.class_ids)
    assert found >= 0.9 * total
