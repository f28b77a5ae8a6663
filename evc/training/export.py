"""ONNX export and import of the sample detector, built with ``onnx.helper`` only.

The graph uses standard opset-17 operators (Conv, Relu, Resize, Concat, Reshape, Split, Add,
Mul, Exp, Clip, Sigmoid) and decodes boxes inside, so its single output ``output0`` has the
Ultralytics export layout ``[1, 4 + nc, cells]``: cx, cy, w, h in input pixels, then sigmoid
class scores. The input ``images`` is ``[1, 3, imgsz, imgsz]`` RGB in 0..1, as Ultralytics
models take it. Metadata follows Ultralytics (``names``, ``imgsz``, ``stride``, ``task``) plus
EVC's own keys (``evc_model_version``, ``map50`` ...).

:func:`from_onnx` reads the weights back, so a deployed model can be fine-tuned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from evc.errors import EvcError, TrainingError
from evc.training import model as net
from evc.training.model import ModelConfig, Params

OPSET = 17
# IR version 8 is what opset 17 shipped with; older onnxruntime builds on devices can load it.
IR_VERSION = 8
INPUT_NAME = "images"
OUTPUT_NAME = "output0"


def names_metadata(class_names: Sequence[str]) -> str:
    """Class names in the form Ultralytics writes: ``{0: 'circle', 1: 'square'}``."""
    return str(dict(enumerate(class_names)))


def _conv_weight(weight: np.ndarray, kernel: int) -> np.ndarray:
    """im2col layout ``[k*k*C_in, C_out]`` -> ONNX ``[C_out, C_in, k, k]``."""
    c_in = weight.shape[0] // (kernel * kernel)
    return weight.reshape(kernel, kernel, c_in, -1).transpose(3, 2, 0, 1)


def _im2col_weight(weight: np.ndarray) -> np.ndarray:
    """ONNX ``[C_out, C_in, k, k]`` -> im2col layout ``[k*k*C_in, C_out]``."""
    c_out, c_in, kh, kw = weight.shape
    return weight.transpose(2, 3, 1, 0).reshape(kh * kw * c_in, c_out)


class _Graph:
    """Collects nodes and float32/int64 initialisers."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def node(
        self, op: str, inputs: Sequence[str], name: str, outputs: int = 1, **attrs: Any
    ) -> list[str]:
        names = [name] if outputs == 1 else [f"{name}_{i}" for i in range(outputs)]
        self.nodes.append(helper.make_node(op, list(inputs), names, name=name, **attrs))
        return names


def _backbone(graph: _Graph, params: Params, config: ModelConfig) -> str:
    """Convolutions, upsample, concat and head; returns the name of the ``[1, C, G, G]`` map."""
    x, outputs = INPUT_NAME, {}
    for name, _, _, stride in config.convs():
        w = graph.const(f"{name}.w", _conv_weight(params[f"{name}.w"], 3).astype(np.float32))
        b = graph.const(f"{name}.b", params[f"{name}.b"].astype(np.float32))
        (conv,) = graph.node(
            "Conv",
            [x, w, b],
            f"{name}_conv",
            kernel_shape=[3, 3],
            pads=[1, 1, 1, 1],
            strides=[stride, stride],
        )
        x = outputs[name] = graph.node("Relu", [conv], f"{name}_relu")[0]
    scales = graph.const("up_scales", np.array([1.0, 1.0, 2.0, 2.0], dtype=np.float32))
    (up,) = graph.node(
        "Resize",
        [outputs[net.P4_LAYER], "", scales],
        "up",
        mode="nearest",
        coordinate_transformation_mode="asymmetric",
        nearest_mode="floor",
    )
    (fused,) = graph.node("Concat", [outputs[net.P3_LAYER], up], "fuse", axis=1)
    head_w = params["head.w"].T[:, :, None, None].astype(np.float32)
    w, b = graph.const("head.w", head_w), graph.const("head.b", params["head.b"].astype(np.float32))
    return graph.node("Conv", [fused, w, b], "head", kernel_shape=[1, 1])[0]


def _decode(graph: _Graph, head: str, config: ModelConfig) -> None:
    """Reshape to cells and decode to ``output0``, exactly as :func:`evc.training.model.decode`."""
    shape = graph.const("cells_shape", np.array([0, config.outputs, -1], dtype=np.int64))
    (flat,) = graph.node("Reshape", [head, shape], "cells")
    split = graph.const("split_sizes", np.array([2, 2, config.num_classes], dtype=np.int64))
    offsets, log_sizes, logits = graph.node("Split", [flat, split], "split", outputs=3, axis=1)
    stride = graph.const("stride", np.array(net.OUTPUT_STRIDE, dtype=np.float32))
    grid = graph.const("grid", np.ascontiguousarray(net.cell_centres(config.grid).T[None]))
    (centres,) = graph.node("Add", [offsets, grid], "centres")
    (xy,) = graph.node("Mul", [centres, stride], "xy")
    low = graph.const("log_min", np.array(-net.LOG_SIZE_CLIP, dtype=np.float32))
    high = graph.const("log_max", np.array(net.LOG_SIZE_CLIP, dtype=np.float32))
    (clipped,) = graph.node("Clip", [log_sizes, low, high], "log_sizes")
    (sizes,) = graph.node("Exp", [clipped], "sizes")
    (wh,) = graph.node("Mul", [sizes, stride], "wh")
    (scores,) = graph.node("Sigmoid", [logits], "scores")
    graph.node("Concat", [xy, wh, scores], OUTPUT_NAME, axis=1)


def to_onnx(
    params: Params,
    config: ModelConfig,
    *,
    class_names: Sequence[str],
    metadata: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """The checked ONNX model of ``params``, with Ultralytics and extra ``metadata`` props.

    Raises:
        TrainingError: if the parameters or class names do not fit ``config``.
    """
    net.check_params(params, config)
    if len(class_names) != config.num_classes:
        raise TrainingError(f"{len(class_names)} class names for {config.num_classes} classes")
    graph = _Graph()
    _decode(graph, _backbone(graph, params, config), config)
    size = config.imgsz
    inputs = [helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, 3, size, size])]
    cells = config.grid * config.grid
    out_shape = [1, config.outputs, cells]
    outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, out_shape)]
    body = helper.make_graph(
        graph.nodes, "evc_shapes_detector", inputs, outputs, graph.initializers
    )
    model = helper.make_model(
        body,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="evc.training",
        ir_version=IR_VERSION,
    )
    props = {
        "description": "EVC sample detector: shapes on synthetic scenes",
        "author": "EVC",
        "task": "detect",
        "batch": "1",
        "stride": str(net.MAX_STRIDE),
        "imgsz": str([size, size]),
        "names": names_metadata(class_names),
    }
    props.update(metadata or {})
    helper.set_model_props(model, props)
    onnx.checker.check_model(model, full_check=True)
    return model


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    """The model's metadata props as a dict."""
    return {prop.key: prop.value for prop in model.metadata_props}


def from_onnx(source: onnx.ModelProto | bytes | str | Path) -> tuple[Params, ModelConfig]:
    """The numpy weights and shape of a model written by :func:`to_onnx`.

    Raises:
        TrainingError: if the file is not such a model.
    """
    try:
        model = source if isinstance(source, onnx.ModelProto) else _load(source)
    except Exception as exc:  # protobuf's DecodeError and file errors share no narrower base
        raise TrainingError(f"cannot read an ONNX model from {type(source).__name__}") from exc
    try:
        weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        dims = model.graph.input[0].type.tensor_type.shape.dim
        config = ModelConfig(
            imgsz=int(dims[3].dim_value),
            num_classes=int(weights["head.w"].shape[0]) - 4,
            widths=(
                weights["c1.w"].shape[0],
                weights["c2.w"].shape[0],
                weights["c3.w"].shape[0],
                weights[f"{net.P4_LAYER}.w"].shape[0],
            ),
        )
        params: Params = {"head.w": weights["head.w"][:, :, 0, 0].T.copy()}
        params["head.b"] = weights["head.b"].copy()
        for name, _, _, _ in config.convs():
            params[f"{name}.w"] = np.ascontiguousarray(_im2col_weight(weights[f"{name}.w"]))
            params[f"{name}.b"] = weights[f"{name}.b"].copy()
        net.check_params(params, config)
    except (KeyError, IndexError, ValueError, EvcError) as exc:
        raise TrainingError(f"not an EVC sample detector: {exc}") from exc
    return params, config


def _load(source: bytes | str | Path) -> onnx.ModelProto:
    if isinstance(source, bytes):
        return onnx.load_model_from_string(source)
    return onnx.load(str(source))
