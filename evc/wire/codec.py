"""The EVC wire codec: envelopes, detections, object events, heartbeats, states and batches.

Summaries and alerts, the records a gateway derives over many frames, are in
:mod:`evc.wire.derived`; their bodies are validated here through :func:`register_body_check`.

Every message is one msgpack array, so any stock msgpack decoder can read it::

    [version, kind, origin, epoch, seq, ts_ms, body]

``version`` is the first byte after the array header, ``kind`` a small integer (:class:`Kind`),
``(origin, epoch, seq)`` the idempotency key and ``ts_ms`` the producer's wall clock in
milliseconds. ``docs/PROTOCOL.md`` describes every byte.

Detection bodies are columnar to stay small: class ids, scores and boxes are packed little-endian
into msgpack ``bin`` fields (scores as uint8 /255, boxes as uint16 /65535 of the frame size). An
optional seventh field tags detections with the named zone their box centre lies in.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import msgpack
import numpy as np
import numpy.typing as npt
import zstandard

from evc.errors import (
    MalformedPayloadError,
    PayloadTooLargeError,
    SchemaError,
    UnknownVersionError,
)

PROTOCOL_VERSION = 1
DEFAULT_MAX_PAYLOAD_BYTES = 256 * 1024
# Decompressed size of a compressed batch, at most (the guard against zip bombs).
DEFAULT_MAX_BATCH_BYTES = 16 * 1024 * 1024
DEFAULT_ZSTD_LEVEL = 3
MAX_DETECTIONS_PER_FRAME = 4096
# Zone tags are uint8 indices into a per-record list of names, 0 meaning "in no zone".
MAX_ZONE_NAMES = 255
MAX_ZONE_NAME_CHARS = 64
BOX_SCALE = 65535.0  # boxes travel as uint16 fractions of the frame size
SCORE_SCALE = 255.0  # scores and other fractions travel as uint8
# Key fields and timestamps must fit a signed 64-bit integer: SQLite and PostgreSQL store them
# as such, and one value past it would make a whole batch unstorable.
MAX_INT64 = 2**63 - 1


class Kind(IntEnum):
    """What an envelope carries."""

    DETECTIONS = 1
    HEARTBEAT = 2
    STATE = 3
    SAMPLE = 4
    BATCH = 5
    EVENT = 6
    SUMMARY = 7
    ALERT = 8


class EventType(IntEnum):
    """What happened to a tracked object (the ``event_types`` column of an EVENT record)."""

    APPEARED = 1
    MOVED = 2
    LEFT = 3


class BatchEncoding(IntEnum):
    """How the records of an uplink batch are packed."""

    PLAIN = 0  # records: an array of bin, each a device envelope verbatim
    ZSTD = 1  # records: one bin, zstd(msgpack array of bin)


@dataclass(frozen=True, slots=True)
class IdempotencyKey:
    """Identifies a record across every retry, restart and redelivery."""

    origin: str
    epoch: int
    seq: int

    def __str__(self) -> str:
        return f"{self.origin}:{self.epoch}:{self.seq}"


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded message: the header fields and the kind-specific body (not yet validated)."""

    kind: Kind
    origin: str
    epoch: int
    seq: int
    ts_ms: int
    body: Any

    @property
    def key(self) -> IdempotencyKey:
        """The idempotency key of this record."""
        return IdempotencyKey(self.origin, self.epoch, self.seq)


@dataclass(frozen=True, slots=True)
class DetectionFrame:
    """The detections of one video frame, as numpy columns.

    Boxes are ``x1, y1, x2, y2`` in pixels of a ``width`` x ``height`` frame. ``zone_ids`` is
    None for an untagged record; otherwise, per detection, 0 (in no zone) or ``i + 1`` for the
    zone named ``zone_names[i]``.
    """

    model_version: str
    width: int
    height: int
    class_ids: npt.NDArray[np.uint16]
    scores: npt.NDArray[np.float32]
    boxes: npt.NDArray[np.float32]
    zone_names: tuple[str, ...] = ()
    zone_ids: npt.NDArray[np.uint8] | None = None

    def __len__(self) -> int:
        return len(self.scores)


@dataclass(frozen=True, slots=True)
class EventFrame:
    """The object events derived from one video frame, as numpy columns.

    Each row is one event: its :class:`EventType`, the track it concerns, and that object's
    class, score and box (``x1, y1, x2, y2`` pixels of a ``width`` x ``height`` frame).
    """

    model_version: str
    width: int
    height: int
    event_types: npt.NDArray[np.uint8]
    track_ids: npt.NDArray[np.uint32]
    class_ids: npt.NDArray[np.uint16]
    scores: npt.NDArray[np.float32]
    boxes: npt.NDArray[np.float32]

    def __len__(self) -> int:
        return len(self.event_types)


@dataclass(frozen=True, slots=True)
class Batch:
    """Records forwarded by one gateway in one uplink message."""

    site: str
    records: list[bytes]


def encode(
    kind: Kind, *, origin: str, epoch: int, seq: int, ts_ms: int, body: Any
) -> bytes:
    """Pack an envelope. ``body`` must already be made of msgpack-native values."""
    packed: bytes = msgpack.packb(
        [PROTOCOL_VERSION, int(kind), origin, epoch, seq, ts_ms, body], use_bin_type=True
    )
    return packed


def decode(data: bytes, *, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> Envelope:
    """Unpack and validate an envelope header.

    Raises:
        PayloadTooLargeError: ``data`` is longer than ``max_bytes``.
        MalformedPayloadError: ``data`` is not one complete msgpack document.
        UnknownVersionError: the version is not one this build speaks.
        SchemaError: a header field is missing or of the wrong type.
    """
    if len(data) > max_bytes:
        raise PayloadTooLargeError(f"payload of {len(data)} bytes exceeds {max_bytes}")
    try:
        doc = msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True
        )
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise MalformedPayloadError(f"not a msgpack document: {exc}") from exc
    if not isinstance(doc, list) or not doc:
        raise SchemaError("envelope must be a msgpack array")
    version = doc[0]
    if type(version) is not int:
        raise SchemaError("envelope version must be an integer")
    if version != PROTOCOL_VERSION:
        raise UnknownVersionError(f"protocol version {version} is not supported")
    if len(doc) != 7:
        raise SchemaError(f"envelope has {len(doc)} fields, expected 7")
    _, kind, origin, epoch, seq, ts_ms, body = doc
    if type(kind) is not int:
        raise SchemaError("message kind must be an integer")
    try:
        kind = Kind(kind)
    except ValueError as exc:
        raise SchemaError(f"unknown message kind {kind!r}") from exc
    if not isinstance(origin, str) or not origin:
        raise SchemaError("origin must be a non-empty string")
    for name, value in (("epoch", epoch), ("seq", seq), ("ts_ms", ts_ms)):
        if type(value) is not int or not 0 <= value <= MAX_INT64:
            raise SchemaError(f"{name} must be an integer in 0..2**63-1")
    return Envelope(kind, origin, epoch, seq, ts_ms, body)


# -- detections --------------------------------------------------------------------------------


def encode_detections(
    *,
    origin: str,
    epoch: int,
    seq: int,
    ts_ms: int,
    model_version: str,
    width: int,
    height: int,
    class_ids: npt.ArrayLike,
    scores: npt.ArrayLike,
    boxes: npt.ArrayLike,
    zone_names: Sequence[str] = (),
    zone_ids: npt.ArrayLike | None = None,
) -> bytes:
    """Encode one frame of detections (boxes as ``x1, y1, x2, y2`` pixels).

    With ``zone_ids`` (per detection 0, or ``i + 1`` for ``zone_names[i]``) the body gets its
    optional zone field; without, it is the 6-field body, byte for byte.

    Raises:
        SchemaError: columns that disagree or are out of range, or zone tags that
            :func:`detections_from` would refuse.
    """
    columns: list[Any] = _object_columns(width, height, class_ids, scores, boxes)
    if zone_ids is not None:
        ids = np.asarray(zone_ids).reshape(-1)
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) > MAX_ZONE_NAMES):
            raise SchemaError(f"zone ids must be in 0..{MAX_ZONE_NAMES}")
        columns.append([list(zone_names), ids.astype("<u1").tobytes()])
        _check_zones(columns[-1], len(columns[1]))
    elif zone_names:
        raise SchemaError("zone_names given without zone_ids")
    body = [model_version, width, height, *columns]
    return encode(Kind.DETECTIONS, origin=origin, epoch=epoch, seq=seq, ts_ms=ts_ms, body=body)


def _object_columns(
    width: int, height: int, class_ids: npt.ArrayLike, scores: npt.ArrayLike,
    boxes: npt.ArrayLike,
) -> list[bytes]:
    """Pack the class, score and box columns shared by detections and events."""
    classes = np.asarray(class_ids)
    score_arr = np.asarray(scores, dtype=np.float32)
    box_arr = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    count = len(score_arr)
    if len(classes) != count or len(box_arr) != count:
        raise SchemaError("class_ids, scores and boxes must have the same length")
    if count > MAX_DETECTIONS_PER_FRAME:
        raise SchemaError(f"{count} detections exceed the limit of {MAX_DETECTIONS_PER_FRAME}")
    if width <= 0 or height <= 0:
        raise SchemaError("frame width and height must be positive")
    class_dtype = "<u1" if count == 0 or int(classes.max()) < 256 else "<u2"
    if count and (int(classes.min()) < 0 or int(classes.max()) > 65535):
        raise SchemaError("class ids must be in 0..65535")
    quant_scores = np.rint(np.clip(score_arr, 0.0, 1.0) * SCORE_SCALE).astype("<u1")
    scale = np.array([width, height, width, height], dtype=np.float32)
    quant_boxes = np.rint(np.clip(box_arr / scale, 0.0, 1.0) * BOX_SCALE).astype("<u2")
    return [classes.astype(class_dtype).tobytes(), quant_scores.tobytes(), quant_boxes.tobytes()]


def _object_arrays(
    width: int, height: int, classes: bytes, scores: bytes, boxes: bytes
) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Unpack checked class, score and box columns into arrays."""
    class_dtype = "<u1" if len(classes) == len(scores) else "<u2"
    scale = np.array([width, height, width, height], dtype=np.float32) / BOX_SCALE
    return (
        np.frombuffer(classes, dtype=class_dtype).astype(np.uint16),
        np.frombuffer(scores, dtype="<u1").astype(np.float32) / SCORE_SCALE,
        np.frombuffer(boxes, dtype="<u2").reshape(-1, 4).astype(np.float32) * scale,
    )


def detections_from(envelope: Envelope) -> DetectionFrame:
    """Validate and unpack the body of a detections envelope (6 fields, or 7 with zone tags).

    Raises:
        SchemaError: not a DETECTIONS envelope, or its body is not of the documented shape.
    """
    model_version, width, height, classes, scores, boxes, zones = _checked_detections(envelope)
    class_ids, score_arr, box_arr = _object_arrays(width, height, classes, scores, boxes)
    names, ids = ((), None) if zones is None else (tuple(zones[0]), zones[1])
    return DetectionFrame(
        model_version=model_version, width=width, height=height,
        class_ids=class_ids, scores=score_arr, boxes=box_arr, zone_names=names,
        zone_ids=None if ids is None else np.frombuffer(ids, dtype="<u1").astype(np.uint8),
    )


def detection_count(envelope: Envelope) -> int:
    """How many detections a validated record carries (0 for other kinds), without unpacking."""
    if envelope.kind is not Kind.DETECTIONS:
        return 0
    return len(_checked_detections(envelope)[4])  # one score byte per detection


def _checked_detections(
    envelope: Envelope,
) -> tuple[str, int, int, bytes, bytes, bytes, list[Any] | None]:
    """The fields of a detections body after every type and length check (no arrays built);
    the last is the zone field ``[names, ids]``, or None when the body has none."""
    body = envelope.body
    if envelope.kind is not Kind.DETECTIONS:
        raise SchemaError(f"expected a detections message, got {envelope.kind.name}")
    if not isinstance(body, list) or len(body) not in (6, 7):
        raise SchemaError("detections body must be an array of 6 or 7 fields")
    model_version, width, height, classes, scores, boxes = body[:6]
    _check_object_columns(body[:6])
    zones = body[6] if len(body) == 7 else None
    if zones is not None:
        _check_zones(zones, len(scores))
    return model_version, width, height, classes, scores, boxes, zones


def _check_zones(field: Any, count: int) -> None:
    """Check the optional zone field ``[names, ids]`` of a body of ``count`` detections."""
    if not isinstance(field, list) or len(field) != 2:
        raise SchemaError("zone field must be an array of 2 fields: names and ids")
    names, ids = field
    if not isinstance(names, list) or len(names) > MAX_ZONE_NAMES:
        raise SchemaError(f"zone names must be an array of at most {MAX_ZONE_NAMES}")
    if not all(isinstance(n, str) and 0 < len(n) <= MAX_ZONE_NAME_CHARS for n in names):
        raise SchemaError(f"zone names must be strings of 1..{MAX_ZONE_NAME_CHARS} characters")
    if len(set(names)) != len(names):
        raise SchemaError("zone names must be unique")
    if type(ids) is not bytes or len(ids) != count:
        raise SchemaError("zone ids must be a bin field of one byte per detection")
    if count and max(ids) > len(names):
        raise SchemaError(f"zone id {max(ids)} does not name one of {len(names)} zones")


def _check_object_columns(fields: Sequence[Any]) -> None:
    """The checks shared by detections and events bodies, over the fields
    ``model_version, width, height, class_ids, scores, boxes``."""
    model_version, width, height, classes, scores, boxes = fields
    if not isinstance(model_version, str):
        raise SchemaError("model_version must be a string")
    if type(width) is not int or type(height) is not int or width <= 0 or height <= 0:
        raise SchemaError("frame width and height must be positive integers")
    if not (type(classes) is bytes and type(scores) is bytes and type(boxes) is bytes):
        raise SchemaError("class ids, scores and boxes must be bin fields")
    count = len(scores)
    if count > MAX_DETECTIONS_PER_FRAME:
        raise SchemaError(f"{count} detections exceed the limit of {MAX_DETECTIONS_PER_FRAME}")
    if len(classes) not in (count, 2 * count) or len(boxes) != 8 * count:
        raise SchemaError("class ids, scores and boxes disagree on the number of detections")


# -- object events -----------------------------------------------------------------------------


def encode_events(
    *,
    origin: str,
    epoch: int,
    seq: int,
    ts_ms: int,
    model_version: str,
    width: int,
    height: int,
    event_types: npt.ArrayLike,
    track_ids: npt.ArrayLike,
    class_ids: npt.ArrayLike,
    scores: npt.ArrayLike,
    boxes: npt.ArrayLike,
) -> bytes:
    """Encode the object events derived from one frame, under that frame's key.

    Raises:
        SchemaError: columns of different lengths, an unknown event type, a track id outside
            uint32, or any check of :func:`encode_detections`.
    """
    types = np.asarray(event_types, dtype=np.int64).reshape(-1)
    tracks = np.asarray(track_ids, dtype=np.int64).reshape(-1)
    columns = _object_columns(width, height, class_ids, scores, boxes)
    count = len(columns[1])
    if len(types) != count or len(tracks) != count:
        raise SchemaError("event_types, track_ids and the object columns must have one length")
    if count and not np.isin(types, [int(t) for t in EventType]).all():
        raise SchemaError("event types must be 1 (appeared), 2 (moved) or 3 (left)")
    if count and (int(tracks.min()) < 0 or int(tracks.max()) > 2**32 - 1):
        raise SchemaError("track ids must be in 0..2**32-1")
    body = [
        model_version, width, height,
        types.astype("<u1").tobytes(), tracks.astype("<u4").tobytes(), *columns,
    ]
    return encode(Kind.EVENT, origin=origin, epoch=epoch, seq=seq, ts_ms=ts_ms, body=body)


def events_from(envelope: Envelope) -> EventFrame:
    """Validate and unpack the body of an EVENT envelope.

    Raises:
        SchemaError: not an EVENT envelope, or its body is not of the documented shape.
    """
    model_version, width, height, types, tracks, classes, scores, boxes = _checked_events(
        envelope
    )
    class_ids, score_arr, box_arr = _object_arrays(width, height, classes, scores, boxes)
    return EventFrame(
        model_version=model_version, width=width, height=height,
        event_types=np.frombuffer(types, dtype="<u1").astype(np.uint8),
        track_ids=np.frombuffer(tracks, dtype="<u4").astype(np.uint32),
        class_ids=class_ids, scores=score_arr, boxes=box_arr,
    )


def _checked_events(
    envelope: Envelope,
) -> tuple[str, int, int, bytes, bytes, bytes, bytes, bytes]:
    """The fields of an events body after every type and length check (no arrays built)."""
    body = envelope.body
    if envelope.kind is not Kind.EVENT:
        raise SchemaError(f"expected an events message, got {envelope.kind.name}")
    if not isinstance(body, list) or len(body) != 8:
        raise SchemaError("events body must be an array of 8 fields")
    model_version, width, height, types, tracks, classes, scores, boxes = body
    _check_object_columns([model_version, width, height, classes, scores, boxes])
    if type(types) is not bytes or type(tracks) is not bytes:
        raise SchemaError("event types and track ids must be bin fields")
    if len(types) != len(scores) or len(tracks) != 4 * len(scores):
        raise SchemaError("event types, track ids and scores disagree on the number of events")
    if not set(types) <= {int(t) for t in EventType}:
        raise SchemaError("event types must be 1 (appeared), 2 (moved) or 3 (left)")
    return model_version, width, height, types, tracks, classes, scores, boxes


# -- heartbeats and states ---------------------------------------------------------------------

_Scalar = int | float | str | bool | None


def encode_map(
    kind: Kind, *, origin: str, epoch: int, seq: int, ts_ms: int, fields: Mapping[str, _Scalar]
) -> bytes:
    """Encode a heartbeat or state message: a flat map of named scalar fields."""
    if kind not in (Kind.HEARTBEAT, Kind.STATE):
        raise SchemaError(f"{kind.name} does not carry a field map")
    return encode(kind, origin=origin, epoch=epoch, seq=seq, ts_ms=ts_ms, body=dict(fields))


def map_from(envelope: Envelope) -> dict[str, _Scalar]:
    """Validate and return the field map of a heartbeat or state envelope."""
    body = envelope.body
    if envelope.kind not in (Kind.HEARTBEAT, Kind.STATE):
        raise SchemaError(f"{envelope.kind.name} does not carry a field map")
    if not isinstance(body, dict):
        raise SchemaError(f"{envelope.kind.name} body must be a map")
    for name, value in body.items():
        if not isinstance(name, str):
            raise SchemaError(f"field name {name!r} must be a string")
        if not isinstance(value, int | float | str | bool | None):
            raise SchemaError(f"field {name!r} must be a scalar")
    return body


# -- uplink batches ----------------------------------------------------------------------------


def encode_batch(
    *,
    origin: str,
    epoch: int,
    seq: int,
    ts_ms: int,
    site: str,
    records: Sequence[bytes],
    encoding: BatchEncoding = BatchEncoding.PLAIN,
    level: int = DEFAULT_ZSTD_LEVEL,
) -> bytes:
    """Encode the records a gateway forwards in one upstream message (each record verbatim).

    With :attr:`BatchEncoding.ZSTD` the array of records is packed and compressed at ``level``
    into one bin field; the envelope around it stays plain msgpack.
    """
    packed: Any = list(records)
    if encoding is BatchEncoding.ZSTD:
        inner = msgpack.packb(packed, use_bin_type=True)
        packed = zstandard.ZstdCompressor(level=level).compress(inner)
    body = [site, int(encoding), packed]
    return encode(Kind.BATCH, origin=origin, epoch=epoch, seq=seq, ts_ms=ts_ms, body=body)


def batch_from(envelope: Envelope, *, max_bytes: int = DEFAULT_MAX_BATCH_BYTES) -> Batch:
    """Validate and unpack the body of a batch envelope, decompressing it if needed.

    Raises:
        SchemaError: the body or the records are not of the documented shape.
        UnknownVersionError: the encoding is not one this build speaks.
        PayloadTooLargeError: a compressed batch unpacks to more than ``max_bytes``.
        MalformedPayloadError: a compressed batch is not valid zstd or msgpack.
    """
    body = envelope.body
    if envelope.kind is not Kind.BATCH:
        raise SchemaError(f"expected a batch, got {envelope.kind.name}")
    if not isinstance(body, list) or len(body) != 3:
        raise SchemaError("batch body must be an array of 3 fields")
    site, encoding, records = body
    if not isinstance(site, str):
        raise SchemaError("batch site must be a string")
    if type(encoding) is not int:
        raise SchemaError("batch encoding must be an integer")
    if encoding == BatchEncoding.ZSTD:
        if type(records) is not bytes:
            raise SchemaError("zstd batch records must be one bin field")
        records = _unpack_records(_decompress(records, max_bytes))
    elif encoding != BatchEncoding.PLAIN:
        raise UnknownVersionError(f"batch encoding {encoding!r} is not supported")
    if not isinstance(records, list) or not all(isinstance(r, bytes) for r in records):
        raise SchemaError("batch records must be an array of bin fields")
    return Batch(site, records)


def _decompress(data: bytes, max_bytes: int) -> bytes:
    """Decompress one zstd frame, refusing to produce more than ``max_bytes``."""
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise MalformedPayloadError(f"not a zstd frame: {exc}") from exc
    if declared > max_bytes:  # -1 when the frame does not declare its size
        raise PayloadTooLargeError(f"batch declares {declared} bytes, more than {max_bytes}")
    # Stream instead of trusting the header: a forged size must not decide how much we inflate.
    out = bytearray()
    try:
        with zstandard.ZstdDecompressor().stream_reader(data) as reader:
            while chunk := reader.read(min(1 << 20, max_bytes + 1 - len(out))):
                out += chunk
                if len(out) > max_bytes:
                    raise PayloadTooLargeError(f"batch unpacks to more than {max_bytes} bytes")
    except zstandard.ZstdError as exc:
        raise MalformedPayloadError(f"bad zstd batch: {exc}") from exc
    return bytes(out)


def _unpack_records(data: bytes) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise MalformedPayloadError(f"compressed batch is not msgpack: {exc}") from exc


def validate_record(data: bytes, *, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> Envelope:
    """Decode a device record and validate its body; the check both gateway and cloud apply."""
    envelope = decode(data, max_bytes=max_bytes)
    if envelope.kind is Kind.BATCH:
        raise SchemaError("a batch cannot be nested inside a record")
    check = _BODY_CHECKS.get(envelope.kind)
    if check is not None:
        check(envelope)
    return envelope


BodyCheck = Callable[[Envelope], object]
_BODY_CHECKS: dict[Kind, BodyCheck] = {
    Kind.DETECTIONS: _checked_detections,
    Kind.HEARTBEAT: map_from,
    Kind.STATE: map_from,
    Kind.EVENT: _checked_events,
}


def register_body_check(kind: Kind, check: BodyCheck) -> None:
    """Let :func:`validate_record` validate the body of ``kind`` (for kinds defined elsewhere)."""
    _BODY_CHECKS[kind] = check
