"""``zones``: keep or remove detections by where their box centre lies, per device."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from evc.gateway.pipeline.base import Frame, Operator, OperatorConfig

Point = tuple[float, float]
Polygon = Annotated[list[Point], Field(min_length=3)]


class ZonesConfig(OperatorConfig):
    """Polygons per device, in pixels of the device's frames.

    Devices without zones pass untouched, in either mode.
    """

    type: Literal["zones"] = Field(description="Selects this operator.")
    mode: Literal["keep", "drop"] = Field(
        "drop",
        description="keep: only detections whose box centre is inside a zone; drop: remove "
        "those inside a zone.",
    )
    devices: dict[str, list[Polygon]] = Field(
        default_factory=dict,
        description="Zones per device id: each a list of at least 3 [x, y] pixel points.",
    )


def inside(
    points: npt.NDArray[np.float32], polygon: npt.NDArray[np.float64]
) -> npt.NDArray[np.bool_]:
    """Which ``(n, 2)`` points lie inside ``polygon`` (even-odd ray casting, vectorised).

    The ray goes right from each point; an edge counts when it straddles the point's height
    half-open (``y1 <= y < y2`` or the reverse), so a ray through a vertex crosses once.
    """
    x1, y1 = polygon[:, 0:1], polygon[:, 1:2]  # (edges, 1)
    nxt = np.roll(polygon, -1, axis=0)
    x2, y2 = nxt[:, 0:1], nxt[:, 1:2]
    px, py = points[:, 0][None, :], points[:, 1][None, :]  # (1, n)
    straddles = (y1 > py) != (y2 > py)
    dy = np.where(y2 == y1, 1.0, y2 - y1)  # horizontal edges never straddle; avoid 0/0
    crossing_x = x1 + (py - y1) * (x2 - x1) / dy
    crossings = straddles & (px < crossing_x)
    return np.asarray(crossings.sum(axis=0) % 2 == 1)


class Zones(Operator[ZonesConfig]):
    """Tests every box centre against the device's polygons at once."""

    reason = "zone"

    def __init__(self, config: ZonesConfig) -> None:
        super().__init__(config)
        self._keep = config.mode == "keep"
        self._zones = {
            device: [np.asarray(polygon, dtype=np.float64) for polygon in polygons]
            for device, polygons in config.devices.items()
        }

    def __call__(self, frame: Frame) -> Frame:
        polygons = self._zones.get(frame.origin)
        if polygons is None or len(frame) == 0:
            return frame
        centres = frame.centres()
        hit = np.zeros(len(frame), dtype=bool)
        for polygon in polygons:  # one vectorised test per zone, not per detection
            hit |= inside(centres, polygon)
        return frame.select(hit if self._keep else ~hit)
