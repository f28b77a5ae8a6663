"""``zones``: keep, remove or tag detections by where their box centre lies, per device."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import (
    Field,
    TypeAdapter,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)

from evc.config import StrictModel
from evc.gateway.pipeline.base import Frame, Operator, OperatorConfig
from evc.wire.codec import MAX_ZONE_NAME_CHARS, MAX_ZONE_NAMES

Point = tuple[float, float]
Polygon = Annotated[list[Point], Field(min_length=3)]


class NamedZone(StrictModel):
    """A zone with the name its tag carries to the cloud."""

    name: str = Field(
        min_length=1, max_length=MAX_ZONE_NAME_CHARS,
        description="The zone's name in tags; unique among the device's zones.",
    )
    polygon: Polygon = Field(description="At least 3 [x, y] pixel points.")


_POLYGON: TypeAdapter[list[Point]] = TypeAdapter(Polygon)


def _zone(value: Any, handler: ValidatorFunctionWrapHandler) -> list[Point] | NamedZone:
    # Validated by the entry's form rather than as a pydantic union, so that an error keeps
    # the key path of the entry itself (`devices.cam-1.0`), not one path per union member.
    del handler
    if isinstance(value, dict | NamedZone):
        return NamedZone.model_validate(value)
    return _POLYGON.validate_python(value)


# A wrap (not plain) validator keeps the union's serializer and JSON schema.
Zone = Annotated[Polygon | NamedZone, WrapValidator(_zone)]


def zone_name(zone: list[Point] | NamedZone, index: int) -> str:
    """The name of the ``index``-th zone of a device: its own, else ``zone-{index}``."""
    return zone.name if isinstance(zone, NamedZone) else f"zone-{index}"


class ZonesConfig(OperatorConfig):
    """Zones per device, in pixels of the device's frames.

    Devices without zones pass untouched, in every mode.
    """

    type: Literal["zones"] = Field(description="Selects this operator.")
    mode: Literal["keep", "drop", "tag"] = Field(
        "drop",
        description="keep: only detections whose box centre is inside a zone; drop: remove "
        "those inside a zone; tag: keep every detection and tag those inside a zone with the "
        "zone's name (the first matching zone in config order), carried to the cloud.",
    )
    devices: dict[str, list[Zone]] = Field(
        default_factory=dict,
        description="Zones per device id, at most 255 each: a bare polygon (a list of at least "
        "3 [x, y] pixel points, named zone-0, zone-1, ... by position) or {name, polygon}.",
    )

    @model_validator(mode="after")
    def _names_are_unique(self) -> ZonesConfig:
        for device, zones in self.devices.items():
            if len(zones) > MAX_ZONE_NAMES:
                raise ValueError(f"device {device!r} has more than {MAX_ZONE_NAMES} zones")
            names = [zone_name(zone, index) for index, zone in enumerate(zones)]
            repeated = sorted({name for name in names if names.count(name) > 1})
            if repeated:
                raise ValueError(f"zone names of device {device!r} repeat: {repeated}")
        return self


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
    """Tests every box centre against the device's polygons at once.

    In ``tag`` mode a frame with no detection inside a zone passes untouched (and untagged);
    otherwise it is tagged (outcome ``changed``, reason ``tagged``) and carries, on the wire,
    only the names of the zones it hits.
    """

    reason = "zone"

    def __init__(self, config: ZonesConfig) -> None:
        super().__init__(config)
        self._mode = config.mode
        if config.mode == "tag":
            self.reason = "tagged"
        self._zones = {
            device: [
                (zone_name(zone, index), _polygon_array(zone))
                for index, zone in enumerate(zones)
            ]
            for device, zones in config.devices.items()
        }

    def __call__(self, frame: Frame) -> Frame:
        zones = self._zones.get(frame.origin)
        if not zones or len(frame) == 0:
            return frame
        centres = frame.centres()
        # 0 = in no zone, i + 1 = in zone i; reversed so that the first zone in config order
        # wins where zones overlap. One vectorised test per zone, not per detection.
        hits = np.zeros(len(frame), dtype=np.uint8)
        for index in reversed(range(len(zones))):
            hits[inside(centres, zones[index][1])] = index + 1
        if self._mode == "tag":
            return _tagged(frame, hits, [name for name, _ in zones])
        return frame.select(hits > 0 if self._mode == "keep" else hits == 0)


def _polygon_array(zone: list[Point] | NamedZone) -> npt.NDArray[np.float64]:
    points = zone.polygon if isinstance(zone, NamedZone) else zone
    return np.asarray(points, dtype=np.float64)


def _tagged(frame: Frame, hits: npt.NDArray[np.uint8], names: list[str]) -> Frame:
    """``frame`` tagged with the zones ``hits`` names (indices into ``names``, 1-based)."""
    used = np.unique(hits[hits > 0])
    if len(used) == 0:
        return frame
    # Renumber to the zones this frame hits, so a record names only those (in config order).
    renumber = np.zeros(len(names) + 1, dtype=np.uint8)
    renumber[used] = np.arange(1, len(used) + 1, dtype=np.uint8)
    return frame.tag([names[int(i) - 1] for i in used], renumber[hits])
