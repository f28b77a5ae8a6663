"""SUMMARY records: round trip, validation and typed errors."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from evc.errors import SchemaError
from evc.wire import Kind, decode, validate_record
from evc.wire.codec import encode
from evc.wire.derived import SummaryFrame, encode_summary, summaries_from


def summary(**overrides: object) -> SummaryFrame:
    fields: dict[str, object] = {
        "model_version": "m-1", "window_start_ms": 10_000, "window_ms": 1000, "frames": 4,
        "class_ids": np.array([0, 300], np.uint16), "counts": np.array([5, 70_000], np.uint32),
        "min_scores": np.array([0.2, 0.5], np.float32),
        "max_scores": np.array([0.9, 1.0], np.float32),
        "mean_scores": np.array([0.5, 0.75], np.float32),
        "occupancy": np.array([0.25, 1.0], np.float32),
    }
    return SummaryFrame(**{**fields, **overrides})  # type: ignore[arg-type]


def test_round_trip_through_a_stock_msgpack_decoder() -> None:
    data = encode_summary(origin="cam-1", epoch=3, seq=9, ts_ms=11_000, summary=summary())
    envelope = validate_record(data)
    assert (envelope.kind, envelope.key.seq, envelope.ts_ms) == (Kind.SUMMARY, 9, 11_000)
    got = summaries_from(envelope)
    assert got.class_ids.tolist() == [0, 300]
    assert got.counts.tolist() == [5, 70_000]
    assert got.occupancy.tolist() == pytest.approx([0.25, 1.0], abs=1 / 255)
    assert len(got) == 2
    assert msgpack.unpackb(data)[1] == 7


def test_empty_summary_round_trips() -> None:
    empty = summary(class_ids=np.zeros(0, np.uint16), counts=np.zeros(0, np.uint32),
                    min_scores=np.zeros(0), max_scores=np.zeros(0), mean_scores=np.zeros(0),
                    occupancy=np.zeros(0))
    data = encode_summary(origin="c", epoch=0, seq=0, ts_ms=0, summary=empty)
    assert len(summaries_from(decode(data))) == 0


@pytest.mark.parametrize("bad", [
    {"counts": np.array([1], np.uint32)},
    {"counts": np.array([-1, 1])},
    {"class_ids": np.array([0, 70_000])},
    {"frames": -1},
])
def test_encode_refuses_bad_columns(bad: dict[str, object]) -> None:
    with pytest.raises(SchemaError):
        encode_summary(origin="c", epoch=0, seq=0, ts_ms=0, summary=summary(**bad))


@pytest.mark.parametrize("body", [
    "x",
    ["m", 0, 1000, 1, b"", b""],
    [1, 0, 1000, 1, b"", b"", b"", b"", b"", b""],
    ["m", -1, 1000, 1, b"", b"", b"", b"", b"", b""],
    ["m", 0, 1000, 1, b"\x00\x00", b"\x01\x00\x00\x00", b"\x01", b"\x01", b"\x01", "x"],
    ["m", 0, 1000, 1, b"\x00\x00", b"\x01\x00\x00", b"\x01", b"\x01", b"\x01", b"\x01"],
    ["m", 0, 1000, 1, b"\x00", b"", b"", b"", b"", b""],
])
def test_validation_refuses_malformed_bodies(body: object) -> None:
    data = encode(Kind.SUMMARY, origin="c", epoch=0, seq=0, ts_ms=0, body=body)
    with pytest.raises(SchemaError):
        validate_record(data)


def test_summaries_from_refuses_other_kinds() -> None:
    data = encode(Kind.EVENT, origin="c", epoch=0, seq=0, ts_ms=0, body=[])
    with pytest.raises(SchemaError):
        summaries_from(decode(data))
