"""``track``: IoU tracking per device, turning a stream of frames into object events.

Each device's detections are matched to its open tracks, greedily by best overlap, same class
only. A detection no track claims opens a track (``appeared``); a track whose centre has moved
more than ``move_threshold_px`` since its last event reports ``moved``; a track unmatched for
``max_missed_frames`` frames in a row closes (``left``). The events ride on the frame
(:attr:`Frame.events`) and the intake stores them as one EVENT record under the frame's key.

With ``forward_frames: on_event`` (the default) a frame that produced no events is dropped with
reason ``stationary``: a still scene costs nothing upstream.

Tracks live in memory. After a gateway restart they start over (every visible object "appears"
again), but events stay exactly-once per source frame: their key is the frame's, so a redelivered
frame yields a record the cloud already holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field

from evc.device.reduction import pairwise_iou
from evc.gateway.pipeline.base import Frame, Operator, OperatorConfig
from evc.wire import EventFrame, EventType

_TRACK_ID_MODULO = 2**32  # track ids are uint32 on the wire


class TrackConfig(OperatorConfig):
    """Track objects per device and emit appeared / moved / left events."""

    type: Literal["track"] = Field(description="Selects this operator.")
    iou_threshold: float = Field(
        0.3, gt=0, le=1, description="A detection continues a track of its class when their "
        "boxes overlap at least this much (intersection over union).",
    )
    max_missed_frames: int = Field(
        5, ge=1, le=10_000, description="A track unmatched for this many frames in a row has "
        "left.",
    )
    move_threshold_px: float = Field(
        20.0, ge=0, description="Centre displacement, in pixels, since the track's last event "
        "that counts as moved.",
    )
    forward_frames: Literal["all", "on_event", "none"] = Field(
        "on_event",
        description="Which frames go on upstream: all, only those that produced events "
        "(others are dropped as stationary), or none (events only).",
    )


@dataclass(slots=True)
class _Tracks:
    """The open tracks of one device, as parallel columns."""

    ids: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    classes: npt.NDArray[np.uint16] = field(default_factory=lambda: np.zeros(0, np.uint16))
    scores: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, np.float32))
    boxes: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    anchors: npt.NDArray[np.float32] = field(  # the centre at the track's last event
        default_factory=lambda: np.zeros((0, 2), np.float32)
    )
    missed: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    next_id: int = 1


def greedy_match(
    iou: npt.NDArray[np.float32], threshold: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """One-to-one matches of rows to columns, best overlap first, each at least ``threshold``.

    Returns:
        The matched row indices and, in the same order, their column indices.
    """
    iou = iou.copy()
    rows: list[int] = []
    cols: list[int] = []
    while iou.size:
        row, col = np.unravel_index(int(np.argmax(iou)), iou.shape)
        if iou[row, col] < threshold:
            break
        rows.append(int(row))
        cols.append(int(col))
        iou[row, :] = -1.0
        iou[:, col] = -1.0
    return np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)


class Track(Operator[TrackConfig]):
    """Keeps each device's open tracks and attaches the frame's events to it."""

    reason = "track"

    def __init__(self, config: TrackConfig) -> None:
        super().__init__(config)
        self._devices: dict[str, _Tracks] = {}

    def __call__(self, frame: Frame) -> Frame:
        tracks = self._devices.setdefault(frame.origin, _Tracks())
        events = self._step(tracks, frame)
        mode = self.config.forward_frames
        tracked = replace(frame, events=events) if len(events) else frame
        if mode == "none":
            return tracked.withhold("events_only" if len(events) else "stationary")
        if mode == "on_event" and not len(events):
            return tracked.withhold("stationary")
        return tracked

    def _step(self, tracks: _Tracks, frame: Frame) -> EventFrame:
        """Advance ``tracks`` by one frame; return the events it produced."""
        iou = pairwise_iou(frame.boxes, tracks.boxes)
        iou[frame.class_ids[:, None] != tracks.classes[None, :]] = 0.0
        det, trk = greedy_match(iou, self.config.iou_threshold)
        order = np.argsort(trk, kind="stable")  # events in track order, not match order
        det, trk = det[order], trk[order]
        centres = frame.centres()
        # Matched: follow the detection; "moved" once it strays far enough from its anchor.
        tracks.boxes[trk] = frame.boxes[det]
        tracks.scores[trk] = frame.scores[det]
        tracks.missed[trk] = 0
        shift = np.linalg.norm(centres[det] - tracks.anchors[trk], axis=1)
        moved = trk[shift > self.config.move_threshold_px]
        tracks.anchors[moved] = centres[det][shift > self.config.move_threshold_px]
        moved_rows = _rows(tracks, moved, EventType.MOVED)
        # Unmatched tracks miss a frame; those that missed too many have left.
        unmatched = np.setdiff1d(np.arange(len(tracks.ids)), trk)
        tracks.missed[unmatched] += 1
        gone = unmatched[tracks.missed[unmatched] >= self.config.max_missed_frames]
        left_rows = _rows(tracks, gone, EventType.LEFT)
        _remove(tracks, gone)
        # Unmatched detections open tracks.
        new = np.setdiff1d(np.arange(len(frame)), det)
        appeared = _open(tracks, frame, new, centres)
        appeared_rows = _rows(tracks, appeared, EventType.APPEARED)
        return _event_frame(frame, [appeared_rows, moved_rows, left_rows])


_Rows = tuple[
    npt.NDArray[np.uint8], npt.NDArray[np.int64], npt.NDArray[np.uint16],
    npt.NDArray[np.float32], npt.NDArray[np.float32],
]


def _rows(tracks: _Tracks, index: npt.NDArray[np.int64], event: EventType) -> _Rows:
    """Event rows for the tracks at ``index``, as they stand now."""
    return (
        np.full(len(index), int(event), dtype=np.uint8), tracks.ids[index],
        tracks.classes[index], tracks.scores[index], tracks.boxes[index],
    )


def _remove(tracks: _Tracks, index: npt.NDArray[np.int64]) -> None:
    keep = np.ones(len(tracks.ids), dtype=bool)
    keep[index] = False
    tracks.ids, tracks.classes, tracks.scores = (
        tracks.ids[keep], tracks.classes[keep], tracks.scores[keep]
    )
    tracks.boxes, tracks.anchors, tracks.missed = (
        tracks.boxes[keep], tracks.anchors[keep], tracks.missed[keep]
    )


def _open(
    tracks: _Tracks, frame: Frame, new: npt.NDArray[np.int64],
    centres: npt.NDArray[np.float32],
) -> npt.NDArray[np.int64]:
    """Open a track per detection at ``new``; return the new tracks' indices."""
    start = len(tracks.ids)
    ids = (tracks.next_id + np.arange(len(new), dtype=np.int64)) % _TRACK_ID_MODULO
    tracks.next_id = int(tracks.next_id + len(new)) % _TRACK_ID_MODULO
    tracks.ids = np.concatenate([tracks.ids, ids])
    tracks.classes = np.concatenate([tracks.classes, frame.class_ids[new]])
    tracks.scores = np.concatenate([tracks.scores, frame.scores[new]])
    tracks.boxes = np.concatenate([tracks.boxes, frame.boxes[new]])
    tracks.anchors = np.concatenate([tracks.anchors, centres[new]])
    tracks.missed = np.concatenate([tracks.missed, np.zeros(len(new), np.int64)])
    return np.arange(start, len(tracks.ids), dtype=np.int64)


def _event_frame(frame: Frame, parts: list[_Rows]) -> EventFrame:
    """Concatenate event rows (appeared, moved, left) into one columnar value."""
    columns = zip(*parts, strict=True)
    types, ids, classes, scores, boxes = (np.concatenate(column) for column in columns)
    return EventFrame(
        model_version=frame.model_version, width=frame.width, height=frame.height,
        event_types=types.astype(np.uint8), track_ids=ids.astype(np.uint32),
        class_ids=classes.astype(np.uint16), scores=scores.astype(np.float32),
        boxes=boxes.reshape(-1, 4).astype(np.float32),
    )
