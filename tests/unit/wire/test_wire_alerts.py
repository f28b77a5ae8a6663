"""ALERT records: round trip, stock msgpack readability, and typed errors on malformed bodies."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np
import pytest

from evc.errors import SchemaError
from evc.wire import (
    Alert,
    Kind,
    alerts_from,
    decode,
    encode_alerts,
    encode_detections,
    validate_record,
)
from evc.wire.codec import encode
from evc.wire.derived import MAX_ALERTS_PER_RECORD

KEY: dict[str, Any] = {"origin": "cam-1", "epoch": 5, "seq": 9, "ts_ms": 123}
FRAME: dict[str, Any] = {"model_version": "m-1", "width": 640, "height": 480}
CROWD = Alert(rule="crowd", class_id=0, count=2, duration_ms=0, zone="",
              boxes=np.asarray([[0, 0, 64, 48], [320, 240, 640, 480]], dtype=np.float32))
LOITER = Alert(rule="loiter", class_id=300, count=1, duration_ms=6_500, zone="door",
               boxes=np.asarray([[100, 100, 200, 300]], dtype=np.float32))
GOOD_ROW: list[Any] = ["crowd", 0, 1, 0, "", b"\x00" * 8]


def _alert(**change: Any) -> Alert:
    fields = {"rule": "r", "class_id": 1, "count": 1, "duration_ms": 0, "zone": "",
              "boxes": np.zeros((1, 4), np.float32), **change}
    return Alert(**fields)


def test_alerts_round_trip_under_the_frames_key() -> None:
    envelope = decode(encode_alerts(**KEY, **FRAME, alerts=[CROWD, LOITER]))
    assert (envelope.kind, envelope.key.origin, envelope.epoch, envelope.seq, envelope.ts_ms) == (
        Kind.ALERT, "cam-1", 5, 9, 123,
    )
    got = alerts_from(envelope)
    assert (got.model_version, got.width, got.height, len(got)) == ("m-1", 640, 480, 2)
    for want, have in zip([CROWD, LOITER], got.alerts, strict=True):
        assert (have.rule, have.class_id, have.count, have.duration_ms, have.zone) == (
            want.rule, want.class_id, want.count, want.duration_ms, want.zone,
        )
        np.testing.assert_allclose(have.boxes, want.boxes, atol=0.01)


def test_a_stock_msgpack_decoder_reads_an_alert() -> None:
    doc = msgpack.unpackb(encode_alerts(**KEY, **FRAME, alerts=[LOITER]))
    assert doc[:2] == [1, 8]
    assert doc[6][:3] == ["m-1", 640, 480]
    assert doc[6][3][0][:5] == ["loiter", 300, 1, 6_500, "door"]


def test_validate_record_accepts_an_alert() -> None:
    assert validate_record(encode_alerts(**KEY, **FRAME, alerts=[CROWD])).kind is Kind.ALERT


@pytest.mark.parametrize(
    "alerts",
    [
        [],
        [_alert(rule="")],
        [_alert(class_id=70_000)],
        [_alert(count=-1)],
        [_alert(duration_ms=-5)],
        [_alert()] * (MAX_ALERTS_PER_RECORD + 1),
    ],
)
def test_encoding_bad_alerts_raises_schema_error(alerts: list[Alert]) -> None:
    with pytest.raises(SchemaError):
        encode_alerts(**KEY, **FRAME, alerts=alerts)


@pytest.mark.parametrize(
    "body",
    [
        None,
        ["m-1", 640, 480],
        [1, 640, 480, [GOOD_ROW]],
        ["m-1", 0, 480, [GOOD_ROW]],
        ["m-1", 640, 480, []],
        ["m-1", 640, 480, "rows"],
        ["m-1", 640, 480, [GOOD_ROW[:5]]],
        ["m-1", 640, 480, [["", *GOOD_ROW[1:]]]],
        ["m-1", 640, 480, [[*GOOD_ROW[:1], "0", *GOOD_ROW[2:]]]],
        ["m-1", 640, 480, [[*GOOD_ROW[:2], True, *GOOD_ROW[3:]]]],
        ["m-1", 640, 480, [[*GOOD_ROW[:3], 2**63, *GOOD_ROW[4:]]]],
        ["m-1", 640, 480, [[*GOOD_ROW[:4], None, GOOD_ROW[5]]]],
        ["m-1", 640, 480, [[*GOOD_ROW[:5], b"\x00" * 7]]],
        ["m-1", 640, 480, [[*GOOD_ROW[:5], "boxes"]]],
    ],
)
def test_malformed_alert_bodies_raise_schema_error(body: Any) -> None:
    data = encode(Kind.ALERT, **KEY, body=body)
    with pytest.raises(SchemaError):
        validate_record(data)
    with pytest.raises(SchemaError):
        alerts_from(decode(data))


def test_alerts_from_refuses_other_kinds() -> None:
    data = encode_detections(**KEY, **FRAME, class_ids=[], scores=[], boxes=[])
    with pytest.raises(SchemaError):
        alerts_from(decode(data))
