"""The sample detector: a small CNN with a YOLO-style output, forward and backward in numpy.

Architecture (``widths = (16, 32, 64, 96)``, 160x160 input, about 209k parameters)::

    c1 3x3/2 -> c2 3x3/2 -> c3 3x3/2 -> c4 3x3                (stride 8: P3)
                                  c4 -> c5 3x3/2 -> c6 3x3    (stride 16: P4)
    head 1x1 over concat(P3, upsample2(P4)) -> 4 + nc channels per stride-8 cell

every 3x3 convolution followed by ReLU. Per cell the head predicts the box centre as an offset
from the cell centre and the log of the box size (both in units of the stride), and one logit
per class. :func:`decode` turns that into the Ultralytics export layout ``[N, 4 + nc, cells]``
(cx, cy, w, h in input pixels, then sigmoid class scores); the ONNX graph does the same inside.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from evc.errors import ConfigError, TrainingError
from evc.training import layers
from evc.training.layers import Array

Params = dict[str, Array]

OUTPUT_STRIDE = 8
MAX_STRIDE = 16
# Log-sizes are clipped before exp so that a wild prediction cannot overflow.
LOG_SIZE_CLIP = 6.0
# Class scores start at 1% so the first steps are not swamped by easy negatives.
PRIOR_SCORE = 0.01
PRIOR_SIZE = 30.0


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelConfig:
    """The shape of the network: square input size, class count and the four stage widths."""

    imgsz: int = 160
    num_classes: int = 3
    widths: tuple[int, int, int, int] = (16, 32, 64, 96)

    def __post_init__(self) -> None:
        if self.imgsz <= 0 or self.imgsz % MAX_STRIDE:
            raise ConfigError(f"imgsz must be a multiple of {MAX_STRIDE}", path="imgsz")
        if self.num_classes < 1:
            raise ConfigError("num_classes must be at least 1", path="num_classes")
        if len(self.widths) != 4 or min(self.widths) < 1:
            raise ConfigError("widths must be four positive channel counts", path="widths")

    @property
    def grid(self) -> int:
        """Cells per side of the output map."""
        return self.imgsz // OUTPUT_STRIDE

    @property
    def outputs(self) -> int:
        """Channels per cell: 4 box values and one score per class."""
        return 4 + self.num_classes

    def convs(self) -> tuple[tuple[str, int, int, int], ...]:
        """(name, in channels, out channels, stride) of the 3x3 convolutions, in order."""
        w0, w1, w2, w3 = self.widths
        return (
            ("c1", 3, w0, 2),
            ("c2", w0, w1, 2),
            ("c3", w1, w2, 2),
            ("c4", w2, w2, 1),
            ("c5", w2, w3, 2),
            ("c6", w3, w3, 1),
        )


P3_LAYER = "c4"
P4_LAYER = "c6"


@dataclass(frozen=True, slots=True)
class ForwardCache:
    """Activations kept by :func:`forward` for :func:`backward`."""

    convs: dict[str, layers.ConvCache]
    outputs: dict[str, Array]
    fused: Array


def init_params(config: ModelConfig, seed: int) -> Params:
    """He-initialised convolutions; a head biased to small boxes of prior size and 1% scores."""
    rng = np.random.default_rng(seed)
    params: Params = {}
    for name, c_in, c_out, _ in config.convs():
        fan_in = layers.KERNEL * layers.KERNEL * c_in
        params[f"{name}.w"] = rng.normal(0.0, math.sqrt(2.0 / fan_in), (fan_in, c_out))
        params[f"{name}.b"] = np.zeros(c_out)
    fused = config.widths[2] + config.widths[3]
    params["head.w"] = rng.normal(0.0, 0.01, (fused, config.outputs))
    bias = np.zeros(config.outputs)
    bias[2:4] = math.log(PRIOR_SIZE / OUTPUT_STRIDE)
    bias[4:] = -math.log((1.0 - PRIOR_SCORE) / PRIOR_SCORE)
    params["head.b"] = bias
    return {key: value.astype(np.float32) for key, value in params.items()}


def param_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The name and shape of every parameter of a network of this shape."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, c_in, c_out, _ in config.convs():
        shapes[f"{name}.w"] = (layers.KERNEL * layers.KERNEL * c_in, c_out)
        shapes[f"{name}.b"] = (c_out,)
    shapes["head.w"] = (config.widths[2] + config.widths[3], config.outputs)
    shapes["head.b"] = (config.outputs,)
    return shapes


def check_params(params: Params, config: ModelConfig) -> None:
    """Raise :class:`TrainingError` unless ``params`` are exactly the weights of ``config``."""
    expected = param_shapes(config)
    actual = {key: tuple(value.shape) for key, value in params.items()}
    if actual != expected:
        raise TrainingError(f"parameters do not fit {config}: {actual} != {expected}")


def count_params(params: Params) -> int:
    """The number of scalar parameters."""
    return sum(int(value.size) for value in params.values())


def forward(params: Params, x: Array, config: ModelConfig) -> tuple[Array, ForwardCache]:
    """Raw head output ``[N, G, G, 4 + nc]`` for NHWC input in 0..1, and the backward cache."""
    caches: dict[str, layers.ConvCache] = {}
    outputs: dict[str, Array] = {}
    act = x
    for name, _, _, stride in config.convs():
        pre, caches[name] = layers.conv3x3(act, params[f"{name}.w"], params[f"{name}.b"], stride)
        act = outputs[name] = layers.relu(pre)
    fused = np.concatenate([outputs[P3_LAYER], layers.upsample2(outputs[P4_LAYER])], axis=-1)
    raw = layers.conv1x1(fused, params["head.w"], params["head.b"])
    return raw, ForwardCache(caches, outputs, fused)


def backward(params: Params, cache: ForwardCache, draw: Array, config: ModelConfig) -> Params:
    """Gradients of the loss w.r.t. every parameter, given its gradient w.r.t. the raw output."""
    grads: Params = {}
    dfused, grads["head.w"], grads["head.b"] = layers.conv1x1_backward(
        draw, cache.fused, params["head.w"]
    )
    split = config.widths[2]
    dp3 = dfused[..., :split]
    dact: Array | None = layers.upsample2_backward(dfused[..., split:])
    for name, _, _, _ in reversed(config.convs()):
        assert dact is not None  # only the first layer skips its input gradient
        if name == P3_LAYER:
            dact = dact + dp3
        dpre = dact * (cache.outputs[name] > 0)
        dact, grads[f"{name}.w"], grads[f"{name}.b"] = layers.conv3x3_backward(
            dpre, params[f"{name}.w"], cache.convs[name], need_input_grad=name != "c1"
        )
    return grads


def cell_centres(grid: int) -> npt.NDArray[np.float32]:
    """``[grid * grid, 2]`` (x, y) centres of the output cells in stride units, row-major."""
    rows, cols = np.mgrid[0:grid, 0:grid].astype(np.float32) + 0.5
    return np.stack([cols.reshape(-1), rows.reshape(-1)], axis=1)


def sigmoid(x: Array) -> Array:
    """The logistic function, without overflow warnings for large negative inputs."""
    out: Array = 0.5 * (1.0 + np.tanh(0.5 * x))
    return out


def decode(raw: Array, config: ModelConfig) -> Array:
    """Raw head output -> ``[N, 4 + nc, cells]``: cx, cy, w, h in pixels, then class scores."""
    n = raw.shape[0]
    flat = raw.reshape(n, -1, config.outputs)
    xy = (flat[..., :2] + cell_centres(config.grid)) * OUTPUT_STRIDE
    wh = np.exp(np.clip(flat[..., 2:4], -LOG_SIZE_CLIP, LOG_SIZE_CLIP)) * OUTPUT_STRIDE
    out: Array = np.concatenate([xy, wh, sigmoid(flat[..., 4:])], axis=-1)
    return out.transpose(0, 2, 1)


def to_input(images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """uint8 RGB ``[N, H, W, 3]`` -> float32 NHWC in 0..1 (the ONNX model takes NCHW)."""
    out: npt.NDArray[np.float32] = images.astype(np.float32) * np.float32(1.0 / 255.0)
    return out


def predict(
    params: Params, images: npt.NDArray[np.uint8], config: ModelConfig, *, batch: int = 32
) -> Array:
    """Decoded outputs ``[N, 4 + nc, cells]`` of uint8 RGB images ``[N, imgsz, imgsz, 3]``."""
    outs = [
        decode(forward(params, to_input(images[i : i + batch]), config)[0], config)
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(outs, axis=0)
