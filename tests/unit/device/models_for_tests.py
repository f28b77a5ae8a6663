"""Real ONNX models for the model slot's tests: copies of the sample model and small graphs."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
from onnx import TensorProto, helper, numpy_helper

from evc.errors import InferenceError
from evc.inference import Detections, Detector
from evc.models import Compatibility, Manifest
from evc.synthetic import CLASS_NAMES
from evc.synthetic.sample_model import sample_model_path

INPUT_SHAPE = (3, 160, 160)
ANCHORS = 400


def with_metadata(target: Path, **changes: str) -> Path:
    """A copy of the sample model with some metadata changed (so different bytes, same graph)."""
    model = onnx.load(sample_model_path())
    props = {p.key: p.value for p in model.metadata_props}
    props.update(changes)
    del model.metadata_props[:]
    helper.set_model_props(model, props)
    onnx.save(model, target)
    return target


def constant_model(target: Path, output: npt.NDArray[np.float32]) -> Path:
    """A graph shaped like the sample model (input, output, metadata) that outputs ``output``."""
    sample = onnx.load(sample_model_path())
    nodes = [
        helper.make_node("ReduceMax", ["images"], ["peak"], keepdims=0),
        helper.make_node("Mul", ["peak", "zero"], ["nothing"]),
        helper.make_node("Add", ["table", "nothing"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes,
        "constant_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, *INPUT_SHAPE])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
        initializer=[
            numpy_helper.from_array(output.astype(np.float32), "table"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {p.key: p.value for p in sample.metadata_props})
    onnx.save(model, target)
    return target


def yolo_output(*, box: tuple[float, float, float, float], score: float) -> npt.NDArray[np.float32]:
    """A ``[1, 4 + 3, 400]`` output with one anchor (``cx, cy, w, h``) scoring ``score``."""
    output = np.zeros((1, 4 + len(CLASS_NAMES), ANCHORS), np.float32)
    output[0, :4, 0] = box
    output[0, 4, 0] = score
    return output


def manifest_for(
    path: Path,
    version: str,
    *,
    classes: tuple[str, ...] = CLASS_NAMES,
    input_shape: tuple[int, int, int] = INPUT_SHAPE,
    task: str = "detect",
) -> Manifest:
    """The manifest of ``path`` as the registry would publish it."""
    compatibility = Compatibility(task=task, input_shape=input_shape, classes=classes)
    return Manifest.describe(
        path, name="shapes", version=version, compatibility=compatibility, created_ms=0
    )


class FaultyDetector(Detector):
    """A real detector that, after ``good_calls`` calls, raises, sleeps or returns bad output."""

    def __init__(
        self,
        path: Path,
        *,
        good_calls: int,
        fault: str,
        delay_s: float = 0.0,
    ) -> None:
        super().__init__(path)
        self.calls = 0
        self.good_calls = good_calls
        self.fault = fault
        self.delay_s = delay_s

    def __call__(self, frame: npt.NDArray[np.uint8], *, bgr: bool = False) -> Detections:
        self.calls += 1
        found = super().__call__(frame, bgr=bgr)
        if self.calls <= self.good_calls:
            return found
        if self.fault == "raise":
            raise InferenceError("injected failure", path=str(self.path))
        if self.fault == "slow":
            time.sleep(self.delay_s)
            return found
        return Detections(
            class_ids=np.array([0], np.uint16),
            scores=np.array([np.nan], np.float32),
            boxes=np.array([[1.0, 1.0, 5.0, 5.0]], np.float32),
            width=found.width,
            height=found.height,
        )


def faulty_factory(
    target: Manifest, *, good_calls: int, fault: str, delay_s: float = 0.0
) -> Callable[[Path], Detector]:
    """Load every model as usual, except ``target``'s, which gets a :class:`FaultyDetector`."""

    def load(path: Path) -> Detector:
        if path.name.startswith(target.sha256):
            return FaultyDetector(path, good_calls=good_calls, fault=fault, delay_s=delay_s)
        return Detector(path)

    return load


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
