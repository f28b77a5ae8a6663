"""ONNX export: standard ops, the Ultralytics layout, and the same numbers as numpy."""

from __future__ import annotations

import ast

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from evc.errors import TrainingError
from evc.synthetic import CLASS_NAMES, SceneConfig, random_frames
from evc.training.export import from_onnx, metadata, names_metadata, to_onnx
from evc.training.model import ModelConfig, init_params, predict

SMALL = ModelConfig(imgsz=64, num_classes=3, widths=(4, 6, 8, 8))
STANDARD_OPS = {
    "Conv",
    "Relu",
    "Resize",
    "Concat",
    "Reshape",
    "Split",
    "Add",
    "Mul",
    "Exp",
    "Clip",
    "Sigmoid",
}


def _random_params() -> dict[str, np.ndarray]:
    params = init_params(SMALL, 0)
    rng = np.random.default_rng(1)
    # Larger head weights than at initialisation, so boxes and scores vary across cells.
    params["head.w"] = rng.normal(0.0, 0.3, params["head.w"].shape).astype(np.float32)
    params["head.b"] = rng.normal(0.0, 0.5, params["head.b"].shape).astype(np.float32)
    return params


def test_onnx_runtime_agrees_with_numpy() -> None:
    params = _random_params()
    model = to_onnx(params, SMALL, class_names=CLASS_NAMES, metadata={"evc_model_version": "t-1"})
    assert {node.op_type for node in model.graph.node} <= STANDARD_OPS
    assert model.opset_import[0].version == 17
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 64, 64]
    assert session.get_outputs()[0].shape == [1, 7, 64]
    frames = list(random_frames(0, 3, config=SceneConfig(width=64, height=64, max_size=24)))
    images = np.stack([frame.image for frame in frames])
    expected = predict(params, images, SMALL)
    for image, want in zip(images, expected, strict=True):
        x = image.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
        (got,) = session.run(None, {"images": x})
        assert got.shape == (1, 7, 64)
        np.testing.assert_allclose(got[0, :4], want[:4], rtol=1e-5, atol=1e-3)  # pixels
        np.testing.assert_allclose(got[0, 4:], want[4:], atol=1e-5)  # scores
        assert want[4:].std() > 0.01


def test_metadata_follows_ultralytics() -> None:
    model = to_onnx(_random_params(), SMALL, class_names=CLASS_NAMES, metadata={"map50": "0.5"})
    props = metadata(model)
    assert props["names"] == "{0: 'circle', 1: 'square', 2: 'triangle'}"
    assert ast.literal_eval(props["names"]) == dict(enumerate(CLASS_NAMES))
    assert ast.literal_eval(props["imgsz"]) == [64, 64]
    assert props["task"] == "detect"
    assert props["map50"] == "0.5"
    assert names_metadata(["a"]) == "{0: 'a'}"


def test_weights_round_trip_through_onnx() -> None:
    params = _random_params()
    model = to_onnx(params, SMALL, class_names=CLASS_NAMES)
    loaded, config = from_onnx(model.SerializeToString())
    assert config == SMALL
    assert loaded.keys() == params.keys()
    assert all(np.array_equal(loaded[k], params[k]) for k in params)


def test_bad_inputs_raise_training_errors() -> None:
    with pytest.raises(TrainingError):
        to_onnx(_random_params(), SMALL, class_names=("circle",))
    with pytest.raises(TrainingError):
        to_onnx(init_params(ModelConfig(), 0), SMALL, class_names=CLASS_NAMES)
    with pytest.raises(TrainingError):
        from_onnx(b"not a model")
    empty = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))
    with pytest.raises(TrainingError):
        from_onnx(empty)
