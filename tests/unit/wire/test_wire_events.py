"""EVENT records: round trip, stock msgpack readability, and typed errors on malformed bodies."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest

from evc.errors import SchemaError
from evc.wire import (
    EventType,
    Kind,
    decode,
    encode_detections,
    encode_events,
    events_from,
    validate_record,
)
from evc.wire.codec import encode

KEY: dict[str, Any] = {"origin": "cam-1", "epoch": 5, "seq": 9, "ts_ms": 123}
EVENTS: dict[str, Any] = {
    "model_version": "m-1", "width": 640, "height": 480, "event_types": [1, 2, 3],
    "track_ids": [1, 70_000, 2**32 - 1], "class_ids": [0, 300, 2], "scores": [0.5, 1.0, 0.2],
    "boxes": [[0, 0, 10, 10], [100, 100, 200, 300], [600, 400, 640, 480]],
}


def test_events_round_trip() -> None:
    data = encode_events(**KEY, **EVENTS)
    envelope = validate_record(data)
    assert envelope.kind is Kind.EVENT
    assert (envelope.origin, envelope.epoch, envelope.seq, envelope.ts_ms) == ("cam-1", 5, 9, 123)
    events = events_from(envelope)
    assert len(events) == 3
    assert events.event_types.tolist() == [EventType.APPEARED, EventType.MOVED, EventType.LEFT]
    assert events.track_ids.tolist() == [1, 70_000, 2**32 - 1]
    assert events.class_ids.tolist() == [0, 300, 2]
    assert events.scores.tolist() == pytest.approx([0.5, 1.0, 0.2], abs=0.003)
    assert events.boxes.tolist() == pytest.approx(np.asarray(EVENTS["boxes"]), abs=0.01)
    assert (events.model_version, events.width, events.height) == ("m-1", 640, 480)


def test_a_stock_msgpack_decoder_reads_events() -> None:
    doc = msgpack.unpackb(encode_events(**KEY, **EVENTS), raw=False)
    assert doc[:6] == [1, 6, "cam-1", 5, 9, 123]
    body = doc[6]
    assert body[:3] == ["m-1", 640, 480]
    assert list(body[3]) == [1, 2, 3]
    assert np.frombuffer(body[4], dtype="<u4").tolist() == [1, 70_000, 2**32 - 1]


def test_no_events_round_trip() -> None:
    empty = {**EVENTS, "event_types": [], "track_ids": [], "class_ids": [], "scores": [],
             "boxes": []}
    assert len(events_from(decode(encode_events(**KEY, **empty)))) == 0


@pytest.mark.parametrize(
    "change",
    [
        {"event_types": [1, 2]},
        {"event_types": [1, 4, 3]},
        {"track_ids": [1, 2, 2**32]},
        {"track_ids": [-1, 2, 3]},
        {"class_ids": [0, 70_000, 1]},
        {"width": 0},
    ],
)
def test_encoding_bad_events_raises_schema_error(change: dict[str, Any]) -> None:
    with pytest.raises(SchemaError):
        encode_events(**KEY, **{**EVENTS, **change})


def _body(data: bytes) -> list[Any]:
    body: list[Any] = msgpack.unpackb(data, raw=False)[6]
    return body


@pytest.mark.parametrize(
    ("index", "value"),
    [
        (0, 1),  # model_version not a str
        (1, -1),  # width not positive
        (3, b"\x01\x02"),  # event types disagree with scores
        (3, b"\x01\x02\x09"),  # unknown event type
        (3, [1, 2, 3]),  # not a bin
        (4, b"\x00" * 11),  # track ids not 4n bytes
        (5, b"\x00"),  # class ids neither n nor 2n bytes
        (7, b"\x00" * 23),  # boxes not 8n bytes
    ],
)
def test_malformed_event_bodies_are_schema_errors(index: int, value: Any) -> None:
    body = _body(encode_events(**KEY, **EVENTS))
    body[index] = value
    with pytest.raises(SchemaError):
        validate_record(encode(Kind.EVENT, **KEY, body=body))


def test_wrong_shapes_and_kinds_are_schema_errors() -> None:
    with pytest.raises(SchemaError):
        validate_record(encode(Kind.EVENT, **KEY, body=_body(encode_events(**KEY, **EVENTS))[:7]))
    with pytest.raises(SchemaError):
        validate_record(encode(Kind.EVENT, **KEY, body={"a": 1}))
    detections = encode_detections(
        **KEY, model_version="m", width=10, height=10, class_ids=[], scores=[], boxes=[]
    )
    with pytest.raises(SchemaError):
        events_from(decode(detections))
