"""The pieces every pipeline operator is made of: the frame it sees, its config and ``Drop``.

An operator is a small callable object built from its config. It takes a :class:`Frame` and
either returns it (the same object when nothing changed, a smaller one made with
:meth:`Frame.select` when it removed detections) or raises :class:`Drop` to discard the whole
frame, like faust's ``Skip``. A dropped frame is never forwarded, but its message is still acked:
the drop is deliberate and counted, not a failure to retry.

An operator may also derive object events from a frame (``track`` does): it attaches them as
:attr:`Frame.events`. Events outlive a drop of their frame (an operator passes the frame with its
events to :class:`Drop`), and the intake stores them as one EVENT record under the frame's key.
Alerts (``alert``) ride the same way as :attr:`Frame.alerts`, stored as one ALERT record.
Zone tags (``zones`` in ``tag`` mode) are part of the detections record itself
(:meth:`Frame.tag`), so a tagged frame is re-encoded with them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Generic, Literal, Protocol, TypeVar

import numpy as np
import numpy.typing as npt
from pydantic import Field

from evc.config import StrictModel
from evc.errors import EvcError
from evc.wire import Alert, Envelope, EventFrame
from evc.wire.codec import detections_from, encode_detections, encode_events
from evc.wire.derived import encode_alerts

CLASS_IDS = 65536  # class ids are uint16 on the wire
ClassRef = int | str  # a class by id, or by one of an operator's class_names


def resolve_class(ref: ClassRef, class_names: Sequence[str]) -> int:
    """The class id ``ref`` names: an id (or its digits) or a name in ``class_names``.

    Raises:
        ValueError: a name not in ``class_names``, or an id out of 0..65535.
    """
    if isinstance(ref, str) and not ref.isdigit():
        if ref not in class_names:
            raise ValueError(f"class {ref!r} is not in class_names")
        return list(class_names).index(ref)
    if not 0 <= int(ref) < CLASS_IDS:
        raise ValueError(f"class id {ref} is not in 0..65535")
    return int(ref)


Outcome = Literal["passed", "changed", "dropped", "error"]


class Drop(EvcError):  # noqa: N818 -- a control-flow signal like faust's Skip, not a failure
    """Raised by an operator to discard the whole frame; ``reason`` labels the drop count.

    ``frame``, when given, is the frame as the operator left it: the events it carries are kept
    although the frame itself is not forwarded.
    """

    def __init__(self, reason: str, *, frame: Frame | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.frame = frame


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded detections record: the envelope header and its detections as numpy columns.

    ``origin`` is the device id (the gateway has checked it against the topic). Boxes are
    ``x1, y1, x2, y2`` in pixels of a ``width`` x ``height`` frame. ``events`` are the object
    events an operator derived from this frame, if any. ``zone_ids`` is None for an untagged
    frame, else per detection 0 (in no zone) or ``i + 1`` for the zone ``zone_names[i]``.
    """

    origin: str
    epoch: int
    seq: int
    ts_ms: int
    model_version: str
    width: int
    height: int
    class_ids: npt.NDArray[np.uint16]
    scores: npt.NDArray[np.float32]
    boxes: npt.NDArray[np.float32]
    events: EventFrame | None = None
    # Encoded SUMMARY records an operator (``aggregate``) closed while seeing this frame.
    summaries: tuple[bytes, ...] = ()
    alerts: tuple[Alert, ...] = ()
    # Why the frame itself will not be forwarded, if an operator withheld it. Unlike a Drop, a
    # withheld frame still goes through the later operators: `track` may withhold stationary
    # frames while `aggregate` after it must still count them.
    withheld: str | None = None
    zone_names: tuple[str, ...] = ()
    zone_ids: npt.NDArray[np.uint8] | None = None

    def __len__(self) -> int:
        return len(self.scores)

    def withhold(self, reason: str) -> Frame:
        """This frame, not to be forwarded (what operators derive from it still is)."""
        return self if self.withheld else replace(self, withheld=reason)

    @classmethod
    def from_envelope(cls, envelope: Envelope) -> Frame:
        """Unpack a validated detections envelope."""
        det = detections_from(envelope)
        return cls(
            origin=envelope.origin, epoch=envelope.epoch, seq=envelope.seq,
            ts_ms=envelope.ts_ms, model_version=det.model_version, width=det.width,
            height=det.height, class_ids=det.class_ids, scores=det.scores, boxes=det.boxes,
            zone_names=det.zone_names, zone_ids=det.zone_ids,
        )

    def select(self, keep: npt.NDArray[np.bool_]) -> Frame:
        """The frame with only the detections where ``keep`` is true (``self`` if all are)."""
        if bool(keep.all()):
            return self
        zone_ids = None if self.zone_ids is None else self.zone_ids[keep]
        if zone_ids is not None and not zone_ids.any():
            zone_ids = None  # no tagged detection left: back to the plain 6-field record
        return replace(
            self, class_ids=self.class_ids[keep], scores=self.scores[keep], boxes=self.boxes[keep],
            zone_names=self.zone_names if zone_ids is not None else (), zone_ids=zone_ids,
        )

    def tag(self, zone_names: Sequence[str], zone_ids: npt.NDArray[np.uint8]) -> Frame:
        """The frame with its detections tagged: ``zone_ids`` holds, per detection, 0 (in no
        zone) or ``i + 1`` for ``zone_names[i]``. Replaces any tags the frame carried."""
        if len(zone_ids) != len(self):
            raise ValueError(f"{len(zone_ids)} zone ids for {len(self)} detections")
        # A fresh box column: the pipeline and the intake recognise an untouched record (whose
        # device bytes are forwarded as they came) by the identity of its boxes, and a tagged
        # record must be encoded again to carry its tags.
        return replace(
            self, boxes=self.boxes.copy(), zone_names=tuple(zone_names),
            zone_ids=np.asarray(zone_ids, dtype=np.uint8),
        )

    def centres(self) -> npt.NDArray[np.float32]:
        """Box centres as an ``(n, 2)`` array of ``x, y`` pixels."""
        return ((self.boxes[:, :2] + self.boxes[:, 2:]) / 2).astype(np.float32, copy=False)

    def encode(self) -> bytes:
        """The record again, under the device's own idempotency key and timestamp."""
        return encode_detections(
            origin=self.origin, epoch=self.epoch, seq=self.seq, ts_ms=self.ts_ms,
            model_version=self.model_version, width=self.width, height=self.height,
            class_ids=self.class_ids, scores=self.scores, boxes=self.boxes,
            zone_names=self.zone_names, zone_ids=self.zone_ids,
        )

    def encode_alerts(self) -> bytes | None:
        """The frame's alerts as one ALERT record under the frame's key, or None without any."""
        if not self.alerts:
            return None
        return encode_alerts(
            origin=self.origin, epoch=self.epoch, seq=self.seq, ts_ms=self.ts_ms,
            model_version=self.model_version, width=self.width, height=self.height,
            alerts=self.alerts,
        )

    def encode_events(self) -> bytes | None:
        """The frame's events as an EVENT record under the frame's key, or None without any."""
        events = self.events
        if events is None or len(events) == 0:
            return None
        return encode_events(
            origin=self.origin, epoch=self.epoch, seq=self.seq, ts_ms=self.ts_ms,
            model_version=events.model_version, width=events.width, height=events.height,
            event_types=events.event_types, track_ids=events.track_ids,
            class_ids=events.class_ids, scores=events.scores, boxes=events.boxes,
        )


@dataclass(frozen=True, slots=True)
class PipelineResult:
    """What the pipeline made of one frame: the frame to forward (None if dropped) and the
    frame's events and alerts (None if no operator derived any), kept even when the frame was
    dropped."""

    frame: Frame | None
    events: bytes | None = None
    alerts: bytes | None = None
    summaries: tuple[bytes, ...] = ()  # SUMMARY records, kept even when the frame was dropped


class OperatorConfig(StrictModel):
    """Base of every operator config; a subclass adds ``type: Literal["its-name"]``."""

    name: str | None = Field(
        None,
        description="Label of this operator in metrics; defaults to its type. Must be unique "
        "in the pipeline.",
    )

    @property
    def label(self) -> str:
        """The operator's name in metrics."""
        name = self.name or getattr(self, "type", None)
        return str(name or type(self).__name__)


ConfigT = TypeVar("ConfigT", bound=OperatorConfig)


class Operator(ABC, Generic[ConfigT]):
    """One pipeline stage, built from its config.

    ``reason`` labels the frames this operator changes (removes detections from, or tags); an
    operator whose change depends on its config may set it per instance.
    """

    reason: str = "filtered"

    def __init__(self, config: ConfigT) -> None:
        self.config = config

    @property
    def name(self) -> str:
        """The operator's label in metrics."""
        return self.config.label

    @abstractmethod
    def __call__(self, frame: Frame) -> Frame:
        """Return ``frame``, a smaller frame, or raise :class:`Drop`."""


class PipelineListener(Protocol):
    """Receives what each operator did to each frame (``evc.metrics.PipelineMetrics``)."""

    def record(self, operator: str, outcome: Outcome, reason: str, removed: int) -> None:
        """Count one frame through ``operator``; ``removed`` detections were taken out."""

    def record_events(self, operator: str, event_type: str, count: int) -> None:
        """Count ``count`` object events of ``event_type`` that ``operator`` emitted."""

    def record_alert(self, operator: str, rule: str) -> None:
        """Count one alert of ``rule`` that ``operator`` raised."""
