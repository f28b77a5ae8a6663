"""Pixels of the synthetic scene: backgrounds, shapes, lighting and sensor noise.

Everything works on float32 ``H x W x 3`` images in 0-255 and draws only inside each shape's
bounding box, so a 160x160 frame costs about a millisecond. Shapes are anti-aliased by their
pixel coverage, which makes sub-pixel motion smooth from one frame to the next.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Image = npt.NDArray[np.float32]
Field = npt.NDArray[np.floating]
Colour = tuple[float, float, float]

# Saturated colours the base scene paints its shapes with.
BASE_PALETTE: tuple[Colour, ...] = (
    (215.0, 45.0, 45.0),  # red
    (50.0, 170.0, 70.0),  # green
    (45.0, 85.0, 215.0),  # blue
    (235.0, 205.0, 50.0),  # yellow
    (200.0, 60.0, 200.0),  # magenta
)
# Colours the base scene never shows: the shifted domain paints with these only.
SHIFTED_PALETTE: tuple[Colour, ...] = (
    (128.0, 128.0, 128.0),  # grey
    (40.0, 200.0, 210.0),  # cyan
    (120.0, 60.0, 160.0),  # purple
    (140.0, 90.0, 40.0),  # brown
)


@dataclass(frozen=True, slots=True)
class Lighting:
    """A brightness factor and a linear gradient across the frame (fractions per frame width)."""

    brightness: float
    gradient_x: float
    gradient_y: float


@functools.cache
def _interpolation(grid: int, size: int) -> npt.NDArray[np.float32]:
    """The ``size x grid`` matrix that resamples ``grid`` control points bilinearly."""
    positions = (np.arange(size, dtype=np.float64) + 0.5) / size * (grid - 1)
    left = np.minimum(positions.astype(np.int64), grid - 2)
    frac = positions - left
    matrix = np.zeros((size, grid), dtype=np.float32)
    matrix[np.arange(size), left] = 1.0 - frac
    matrix[np.arange(size), left + 1] = frac
    matrix.setflags(write=False)
    return matrix


def smooth_noise(
    rng: np.random.Generator, height: int, width: int, *, grid: int, channels: int = 3
) -> Image:
    """Smooth noise in about -1..1: ``grid x grid`` random control points, upsampled."""
    points = rng.uniform(-1.0, 1.0, size=(grid, grid, channels)).astype(np.float32)
    rows, cols = _interpolation(grid, height), _interpolation(grid, width)
    out: Image = np.einsum("hi,ijc,wj->hwc", rows, points, cols, optimize=True)
    return out


def base_background(rng: np.random.Generator, height: int, width: int) -> Image:
    """A muted colour with slow colour blotches and a finer luminance texture."""
    colour = rng.uniform(70.0, 190.0) + rng.uniform(-25.0, 25.0, size=3)
    blotches = smooth_noise(rng, height, width, grid=int(rng.integers(3, 6))) * 40.0
    texture = smooth_noise(rng, height, width, grid=int(rng.integers(12, 24)), channels=1) * 15.0
    image: Image = (colour.astype(np.float32) + blotches + texture).astype(np.float32)
    return image


def shifted_background(rng: np.random.Generator, height: int, width: int) -> Image:
    """Stripes at a random angle or a checkerboard, in two random colours, lightly textured."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    period = float(rng.uniform(6.0, 20.0))
    if rng.random() < 0.5:
        angle = float(rng.uniform(0.0, math.pi))
        phase = (xs * math.cos(angle) + ys * math.sin(angle)) / period
        pattern = (phase % 1.0) < 0.5
    else:
        pattern = ((xs // period + ys // period) % 2.0) < 1.0
    first, second = rng.uniform(40.0, 220.0, size=(2, 3)).astype(np.float32)
    image: Image = np.where(pattern[..., None], first, second).astype(np.float32)
    image += smooth_noise(rng, height, width, grid=4) * 20.0
    return image


def _coverage(signed_distance: Field) -> Field:
    """Anti-aliased coverage of a pixel whose centre lies ``signed_distance`` inside an edge."""
    out: Field = np.clip(signed_distance + 0.5, 0.0, 1.0)
    return out


def _shape_distance(shape: str, xs: Field, ys: Field, box: tuple[float, ...]) -> Field:
    """Signed distance (positive inside) of pixel centres to a shape filling ``box``."""
    x1, y1, x2, y2 = box
    out: Field
    if shape == "circle":
        radius = (x2 - x1) / 2.0
        out = radius - np.sqrt((xs - (x1 + x2) / 2.0) ** 2 + (ys - (y1 + y2) / 2.0) ** 2)
    elif shape == "square":
        out = np.minimum(np.minimum(xs - x1, x2 - xs), np.minimum(ys - y1, y2 - ys))
    elif shape == "triangle":
        # Apex at the top centre, base along the bottom edge of the box.
        half, height = (x2 - x1) / 2.0, y2 - y1
        norm = math.hypot(half, height)
        left = (height * (xs - x1) + half * (ys - y2)) / norm
        right = (height * (x2 - xs) + half * (ys - y2)) / norm
        out = np.minimum(np.minimum(left, right), y2 - ys)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return out


def draw_shape(image: Image, shape: str, box: tuple[float, ...], colour: Colour) -> None:
    """Paint an anti-aliased ``shape`` filling ``box`` (x1, y1, x2, y2) onto ``image`` in place."""
    height, width = image.shape[:2]
    left, top = max(int(box[0]) - 1, 0), max(int(box[1]) - 1, 0)
    right, bottom = min(int(box[2]) + 2, width), min(int(box[3]) + 2, height)
    ys = np.arange(top, bottom, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(left, right, dtype=np.float32)[None, :] + 0.5
    alpha = _coverage(_shape_distance(shape, xs, ys, box))[..., None]
    region = image[top:bottom, left:right]
    region += alpha * (np.asarray(colour, dtype=np.float32) - region)


def light(image: Image, lighting: Lighting) -> None:
    """Multiply ``image`` in place by the brightness and gradient of ``lighting``."""
    height, width = image.shape[:2]
    xs = (np.arange(width, dtype=np.float32) + 0.5) / width - 0.5
    ys = (np.arange(height, dtype=np.float32) + 0.5) / height - 0.5
    field = lighting.brightness * (
        1.0 + lighting.gradient_x * xs[None, :] + lighting.gradient_y * ys[:, None]
    )
    image *= field[..., None].astype(np.float32)


def finish(image: Image, rng: np.random.Generator, noise_std: float) -> npt.NDArray[np.uint8]:
    """Add Gaussian sensor noise and quantise to uint8 RGB."""
    if noise_std > 0:
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(noise_std)
    np.clip(image, 0.0, 255.0, out=image)
    out: npt.NDArray[np.uint8] = (image + 0.5).astype(np.uint8)
    return out
