"""Letterbox pre-processing: fit a frame into the model's input without distorting it.

The frame is resized keeping its aspect ratio, centred on a canvas padded with grey (114, as
Ultralytics trains with), converted to a ``[1, 3, H, W]`` float32 tensor in ``0..1`` and RGB
order. :class:`Letterbox` records the scale and padding so that boxes predicted in input pixels
map back to frame pixels with :func:`unletterbox_boxes`.

OpenCV is not a dependency, so resizing is done with numpy index arithmetic. The sampling indices
depend only on the frame and input sizes, which rarely change in a camera loop, so they are
computed once and cached.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import numpy.typing as npt

from evc.errors import FrameError

Interpolation = Literal["nearest", "bilinear"]
"""How the frame is resampled: ``nearest`` is fast, ``bilinear`` smoother but slower."""

PAD_VALUE = 114
_RGB = np.array([0, 1, 2], dtype=np.intp)
_BGR = np.array([2, 1, 0], dtype=np.intp)


@dataclass(frozen=True, slots=True)
class Letterbox:
    """Where a frame went inside the model input.

    A frame pixel edge ``x`` lands at ``x * scale_x + pad_left`` in the input.
    """

    width: int
    """Width of the original frame, in pixels."""
    height: int
    """Height of the original frame, in pixels."""
    scale_x: float
    """Resized width divided by frame width."""
    scale_y: float
    """Resized height divided by frame height."""
    pad_left: int
    """Columns of padding left of the resized frame."""
    pad_top: int
    """Rows of padding above the resized frame."""


@dataclass(frozen=True, slots=True)
class _Plan:
    """Cached sampling indices and geometry for one (frame size, input size) pair."""

    box: Letterbox
    new_h: int
    new_w: int
    rows0: npt.NDArray[np.intp]
    rows1: npt.NDArray[np.intp]
    cols0: npt.NDArray[np.intp]
    cols1: npt.NDArray[np.intp]
    weight_y: npt.NDArray[np.float32]
    weight_x: npt.NDArray[np.float32]


def letterbox(
    frame: npt.NDArray[np.uint8],
    size: tuple[int, int],
    *,
    bgr: bool = False,
    interpolation: Interpolation = "nearest",
    dtype: type[np.floating] = np.float32,
    out: npt.NDArray[np.floating] | None = None,
) -> tuple[npt.NDArray[np.floating], Letterbox]:
    """Resize and pad a frame into a model input tensor.

    Args:
        frame: An ``H x W x 3`` uint8 image, RGB unless ``bgr`` is set.
        size: The model input ``(height, width)``.
        bgr: The frame's channels are in BGR order (as OpenCV delivers them).
        interpolation: ``nearest`` or ``bilinear`` resampling.
        dtype: The floating-point type of the tensor (float16 for half-precision models).
        out: A ``[1, 3, height, width]`` array to fill instead of allocating a new one.

    Returns:
        The ``[1, 3, height, width]`` tensor with values in ``0..1`` and RGB channel order, and
        the :class:`Letterbox` that maps boxes back to the frame.

    Raises:
        FrameError: ``frame`` is not a non-empty ``H x W x 3`` uint8 array.
    """
    check_frame(frame)
    bilinear = interpolation == "bilinear"
    plan = _plan(frame.shape[:2], tuple(size), bgr=bgr, bilinear=bilinear)
    resized = _resample(frame, plan, bilinear=bilinear)
    shape = (1, 3, size[0], size[1])
    if out is not None and out.shape != shape:
        raise ValueError(f"out must have shape {shape}, got {out.shape}")
    tensor = np.empty(shape, dtype=dtype) if out is None else out
    _pad(tensor, plan)
    inner = tensor[0, :, plan.box.pad_top : plan.box.pad_top + plan.new_h]
    inner = inner[:, :, plan.box.pad_left : plan.box.pad_left + plan.new_w]
    chw = resized.reshape(plan.new_h, plan.new_w, 3).transpose(2, 0, 1)
    np.multiply(chw, np.float32(1.0 / 255.0), out=inner, casting="unsafe")
    return tensor, plan.box


def unletterbox_boxes(
    boxes: npt.NDArray[np.floating], box: Letterbox, *, clip: bool = True
) -> npt.NDArray[np.float32]:
    """Map ``x1, y1, x2, y2`` boxes from model input pixels back to frame pixels.

    Args:
        boxes: An ``N x 4`` array in input pixels.
        box: The :class:`Letterbox` returned with the input tensor.
        clip: Clip the result to the frame, as padding can yield boxes that spill over it.

    Returns:
        A new ``N x 4`` float32 array in frame pixels.
    """
    out = np.array(boxes, dtype=np.float32, copy=True).reshape(-1, 4)
    out[:, 0::2] -= np.float32(box.pad_left)
    out[:, 1::2] -= np.float32(box.pad_top)
    out[:, 0::2] /= np.float32(box.scale_x)
    out[:, 1::2] /= np.float32(box.scale_y)
    if clip:
        np.clip(out[:, 0::2], 0.0, float(box.width), out=out[:, 0::2])
        np.clip(out[:, 1::2], 0.0, float(box.height), out=out[:, 1::2])
    return out


def check_frame(frame: object) -> None:
    """Reject anything that is not a non-empty ``H x W x 3`` uint8 numpy array.

    Raises:
        FrameError: naming what was expected and what was found.
    """
    if not isinstance(frame, np.ndarray):
        raise FrameError(f"expected a numpy array H x W x 3 uint8, got {type(frame).__name__}")
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3 or frame.size == 0:
        raise FrameError(
            f"expected a frame of shape H x W x 3 and dtype uint8, "
            f"got shape {frame.shape} and dtype {frame.dtype}"
        )


@lru_cache(maxsize=32)
def _plan(
    frame_size: tuple[int, int], input_size: tuple[int, int], *, bgr: bool, bilinear: bool
) -> _Plan:
    """Compute the geometry and sampling indices of one letterbox (cached)."""
    (height, width), (in_h, in_w) = frame_size, input_size
    ratio = min(in_h / height, in_w / width)
    new_w = max(1, min(in_w, round(width * ratio)))
    new_h = max(1, min(in_h, round(height * ratio)))
    box = Letterbox(
        width=width,
        height=height,
        scale_x=new_w / width,
        scale_y=new_h / height,
        pad_left=(in_w - new_w) // 2,
        pad_top=(in_h - new_h) // 2,
    )
    rows0, rows1, weight_y = _taps(height, new_h, bilinear)
    cols0, cols1, weight_x = _taps(width, new_w, bilinear)
    channels = _BGR if bgr else _RGB
    # Sampling a row flattened to W*3 values with one index per value is several times faster
    # than gathering 3-byte pixels along an axis; the channel order is folded into the index.
    flat0 = (cols0[:, None] * 3 + channels).ravel()
    flat1 = (cols1[:, None] * 3 + channels).ravel()
    return _Plan(
        box=box,
        new_h=new_h,
        new_w=new_w,
        rows0=rows0,
        rows1=rows1,
        cols0=flat0,
        cols1=flat1,
        weight_y=weight_y[:, None],
        weight_x=np.repeat(weight_x, 3)[None, :],
    )


def _taps(
    size: int, new_size: int, bilinear: bool
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.float32]]:
    """Source indices and weights along one axis, with pixel centres aligned (half-pixel)."""
    centres = (np.arange(new_size, dtype=np.float64) + 0.5) * (size / new_size)
    if not bilinear:
        nearest = np.minimum(centres.astype(np.intp), size - 1)
        return nearest, nearest, np.zeros(new_size, dtype=np.float32)
    source = np.clip(centres - 0.5, 0.0, size - 1)
    low = np.floor(source).astype(np.intp)
    high = np.minimum(low + 1, size - 1)
    return low, high, (source - low).astype(np.float32)


def _resample(
    frame: npt.NDArray[np.uint8], plan: _Plan, *, bilinear: bool
) -> npt.NDArray[np.uint8] | npt.NDArray[np.float32]:
    """Resize ``frame`` to ``new_h x new_w*3`` values, channels already in RGB order.

    The bilinear result lives in a per-thread scratch buffer: the caller copies it out before
    the next call on the same thread.
    """
    width = frame.shape[1]
    if not bilinear:
        # Taking whole rows first yields a contiguous copy, whatever the frame's strides.
        return frame[plan.rows0].reshape(plan.new_h, width * 3)[:, plan.cols0]
    buffers = _scratch(plan.new_h, plan.new_w, width)
    upper = _bilinear_row(frame, plan.rows0, plan, buffers, 0)
    lower = _bilinear_row(frame, plan.rows1, plan, buffers, 1)
    lower -= upper
    lower *= plan.weight_y
    upper += lower
    return upper


def _bilinear_row(
    frame: npt.NDArray[np.uint8],
    rows: npt.NDArray[np.intp],
    plan: _Plan,
    buffers: _Buffers,
    slot: int,
) -> npt.NDArray[np.float32]:
    """Sample source ``rows`` at the plan's columns, interpolating horizontally."""
    np.take(frame, rows, axis=0, out=buffers.rows)
    flat = buffers.rows.reshape(plan.new_h, -1)
    result, delta = buffers.floats[slot], buffers.floats[2]
    np.take(flat, plan.cols0, axis=1, out=buffers.picked)
    np.copyto(result, buffers.picked, casting="unsafe")
    np.take(flat, plan.cols1, axis=1, out=buffers.picked)
    np.copyto(delta, buffers.picked, casting="unsafe")
    delta -= result
    delta *= plan.weight_x
    result += delta
    return result


@dataclass(frozen=True, slots=True)
class _Buffers:
    """Scratch arrays of one bilinear resize, reused so that no call pays for fresh pages."""

    rows: npt.NDArray[np.uint8]
    picked: npt.NDArray[np.uint8]
    floats: tuple[npt.NDArray[np.float32], ...]


_local = threading.local()


def _scratch(new_h: int, new_w: int, width: int) -> _Buffers:
    """This thread's scratch buffers for a resize, allocated again only when sizes change.

    Freshly allocated multi-megabyte temporaries are returned to the OS by the allocator and
    page-faulted back in on every call, which made bilinear resizing three times slower.
    """
    key = (new_h, new_w, width)
    cached: tuple[tuple[int, int, int], _Buffers] | None = getattr(_local, "buffers", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    values = new_w * 3
    buffers = _Buffers(
        rows=np.empty((new_h, width, 3), dtype=np.uint8),
        picked=np.empty((new_h, values), dtype=np.uint8),
        floats=tuple(np.empty((new_h, values), dtype=np.float32) for _ in range(3)),
    )
    _local.buffers = (key, buffers)
    return buffers


def _pad(tensor: npt.NDArray[np.floating], plan: _Plan) -> None:
    """Fill the four padding bands of ``tensor`` (and nothing else) with the pad value."""
    value = PAD_VALUE / 255.0
    top, left = plan.box.pad_top, plan.box.pad_left
    tensor[:, :, :top] = value
    tensor[:, :, top + plan.new_h :] = value
    tensor[:, :, top : top + plan.new_h, :left] = value
    tensor[:, :, top : top + plan.new_h, left + plan.new_w :] = value
