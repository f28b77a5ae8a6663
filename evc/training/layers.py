"""The few layers the sample detector needs, forward and backward, in numpy.

Activations are NHWC. A 3x3 convolution is im2col (nine strided slices copied into one
``[N*H*W, 9*C]`` matrix) followed by one matrix multiply, which hands the work to BLAS; its
weights are stored in that im2col layout, ``[9*C_in, C_out]`` ordered (ky, kx, c_in). The
functions are dtype-agnostic so the gradient check can run them in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.floating]

KERNEL = 3
PAD = 1


@dataclass(frozen=True, slots=True)
class ConvCache:
    """What a convolution's backward pass needs from its forward pass."""

    cols: Array
    input_shape: tuple[int, ...]
    stride: int


def _out_size(size: int, stride: int) -> int:
    return (size + 2 * PAD - KERNEL) // stride + 1


def im2col(x: Array, stride: int) -> Array:
    """``[N, H, W, C]`` -> ``[N*Ho*Wo, 9*C]``: the padded 3x3 neighbourhood of every output."""
    n, h, w, c = x.shape
    ho, wo = _out_size(h, stride), _out_size(w, stride)
    padded = np.pad(x, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
    # A strided view [N, Ho, Wo, C, ky, kx] and one copy into (ky, kx, C) order: several times
    # faster than nine slice copies whose contiguous runs are only C long.
    windows = np.lib.stride_tricks.sliding_window_view(padded, (KERNEL, KERNEL), axis=(1, 2))
    view = windows[:, : stride * (ho - 1) + 1 : stride, : stride * (wo - 1) + 1 : stride]
    cols: Array = np.ascontiguousarray(view.transpose(0, 1, 2, 4, 5, 3))
    return cols.reshape(n * ho * wo, KERNEL * KERNEL * c)


def col2im(dcols: Array, input_shape: tuple[int, ...], stride: int) -> Array:
    """The adjoint of :func:`im2col`: scatter-add column gradients back onto the input."""
    n, h, w, c = input_shape
    ho, wo = _out_size(h, stride), _out_size(w, stride)
    grads = dcols.reshape(n, ho, wo, KERNEL * KERNEL, c)
    padded = np.zeros((n, h + 2 * PAD, w + 2 * PAD, c), dtype=dcols.dtype)
    for ky in range(KERNEL):
        for kx in range(KERNEL):
            rows = slice(ky, ky + stride * (ho - 1) + 1, stride)
            columns = slice(kx, kx + stride * (wo - 1) + 1, stride)
            padded[:, rows, columns, :] += grads[:, :, :, ky * KERNEL + kx, :]
    return padded[:, PAD : PAD + h, PAD : PAD + w, :]


def conv3x3(x: Array, weight: Array, bias: Array, stride: int) -> tuple[Array, ConvCache]:
    """A 3x3 convolution with padding 1: ``[N, H, W, C_in]`` -> ``[N, Ho, Wo, C_out]``."""
    n, h, w, _ = x.shape
    cols = im2col(x, stride)
    out = cols @ weight + bias
    shape = (n, _out_size(h, stride), _out_size(w, stride), weight.shape[1])
    return out.reshape(shape), ConvCache(cols, x.shape, stride)


def conv3x3_backward(
    dout: Array, weight: Array, cache: ConvCache, *, need_input_grad: bool = True
) -> tuple[Array | None, Array, Array]:
    """Gradients of :func:`conv3x3` w.r.t. its input (unless not needed), weight and bias."""
    dflat = dout.reshape(-1, weight.shape[1])
    dweight = cache.cols.T @ dflat
    dbias = dflat.sum(axis=0)
    if not need_input_grad:
        return None, dweight, dbias
    dx = col2im(dflat @ weight.T, cache.input_shape, cache.stride)
    return dx, dweight, dbias


def conv1x1(x: Array, weight: Array, bias: Array) -> Array:
    """A 1x1 convolution: a matrix multiply over the channel axis."""
    out: Array = x @ weight + bias
    return out


def conv1x1_backward(dout: Array, x: Array, weight: Array) -> tuple[Array, Array, Array]:
    """Gradients of :func:`conv1x1` w.r.t. its input, weight and bias."""
    dflat = dout.reshape(-1, dout.shape[-1])
    dweight = x.reshape(-1, x.shape[-1]).T @ dflat
    return dout @ weight.T, dweight, dflat.sum(axis=0)


def relu(x: Array) -> Array:
    """max(x, 0); the backward pass masks by ``out > 0``."""
    out: Array = np.maximum(x, 0)
    return out


def upsample2(x: Array) -> Array:
    """Nearest-neighbour 2x upsampling of ``[N, H, W, C]``."""
    n, h, w, c = x.shape
    out: Array = np.broadcast_to(x[:, :, None, :, None, :], (n, h, 2, w, 2, c))
    return out.reshape(n, 2 * h, 2 * w, c)


def upsample2_backward(dout: Array) -> Array:
    """Gradient of :func:`upsample2`: each input pixel sums its four copies."""
    n, h2, w2, c = dout.shape
    out: Array = dout.reshape(n, h2 // 2, 2, w2 // 2, 2, c).sum(axis=(2, 4))
    return out
