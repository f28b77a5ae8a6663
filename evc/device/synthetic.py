"""Random but seeded detections, for load generation where no camera or model is wanted."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FRAME_WIDTH = 640
FRAME_HEIGHT = 480


def synthetic_detections(
    rng: np.random.Generator, count: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Random class ids (0-2), scores and x1, y1, x2, y2 boxes inside a 640x480 frame."""
    xy = rng.uniform(0, [FRAME_WIDTH - 60, FRAME_HEIGHT - 60], size=(count, 2))
    wh = rng.uniform(12, 60, size=(count, 2))
    return rng.integers(0, 3, count), rng.uniform(0.25, 1.0, count), np.hstack([xy, xy + wh])
