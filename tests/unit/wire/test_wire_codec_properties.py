"""Property tests of the wire codec: valid frames round-trip, hostile bytes raise only WireError."""

from __future__ import annotations

import contextlib
from typing import Any

import msgpack
import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from evc.errors import WireError
from evc.wire import (
    PROTOCOL_VERSION,
    Channel,
    DeviceTopic,
    Kind,
    decode,
    detections_from,
    encode_detections,
    encode_map,
    map_from,
    validate_record,
)

# Header integers are stored as signed 64-bit values, so the codec accepts 0..2**63-1.
U64 = st.integers(min_value=0, max_value=2**63 - 1)
NAME = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
SCALAR = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
)
MSGPACK_VALUE = st.recursive(
    SCALAR | st.binary(max_size=40),
    lambda inner: st.lists(inner, max_size=6)
    | st.dictionaries(st.text(max_size=8), inner, max_size=6),
    max_leaves=30,
)


@st.composite
def frames(draw: st.DrawFn) -> dict[str, Any]:
    """Keyword arguments of ``encode_detections`` for a valid frame."""
    width = draw(st.integers(min_value=1, max_value=8192))
    height = draw(st.integers(min_value=1, max_value=8192))
    count = draw(st.integers(min_value=0, max_value=40))
    unit = st.floats(min_value=0, max_value=1, width=32)
    return {
        "origin": draw(st.text(min_size=1, max_size=40)),
        "epoch": draw(U64),
        "seq": draw(U64),
        "ts_ms": draw(U64),
        "model_version": draw(st.text(max_size=30)),
        "width": width,
        "height": height,
        "class_ids": draw(st.lists(st.integers(0, 65535), min_size=count, max_size=count)),
        "scores": draw(st.lists(unit, min_size=count, max_size=count)),
        "boxes": [
            [draw(unit) * width, draw(unit) * height, draw(unit) * width, draw(unit) * height]
            for _ in range(count)
        ],
    }


@given(frames())
def test_any_valid_frame_round_trips_within_quantisation(fields: dict[str, Any]) -> None:
    envelope = validate_record(encode_detections(**fields))
    frame = detections_from(envelope)

    assert (envelope.origin, envelope.epoch, envelope.seq, envelope.ts_ms) == (
        fields["origin"], fields["epoch"], fields["seq"], fields["ts_ms"],
    )
    assert (frame.model_version, frame.width, frame.height) == (
        fields["model_version"], fields["width"], fields["height"],
    )
    np.testing.assert_array_equal(frame.class_ids, fields["class_ids"])
    scores = np.asarray(fields["scores"], dtype=np.float64)
    assert np.all(np.abs(frame.scores - scores) <= 1 / 255)
    boxes = np.asarray(fields["boxes"], dtype=np.float64).reshape(-1, 4)
    step = np.array([fields["width"], fields["height"]] * 2) / 65535
    assert np.all(np.abs(frame.boxes - boxes) <= step)


@given(frames())
def test_any_valid_frame_is_ten_bytes_per_detection_plus_header(fields: dict[str, Any]) -> None:
    without = encode_detections(**{**fields, "class_ids": [], "scores": [], "boxes": []})
    data = encode_detections(**fields)
    count = len(fields["scores"])
    class_bytes = 2 if count and max(fields["class_ids"]) > 255 else 1

    # bin8 length prefixes grow to bin16 past 255 bytes, hence the small allowance.
    assert len(data) - len(without) <= count * (8 + 1 + class_bytes) + 3


@given(st.sampled_from([Kind.HEARTBEAT, Kind.STATE]), st.dictionaries(st.text(), SCALAR))
def test_any_field_map_round_trips(kind: Kind, fields: dict[str, Any]) -> None:
    data = encode_map(kind, origin="cam-0001", epoch=1, seq=2, ts_ms=3, fields=fields)

    assert map_from(validate_record(data)) == fields


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_wire_errors(data: bytes) -> None:
    with contextlib.suppress(WireError):
        validate_record(data)


@given(MSGPACK_VALUE)
def test_arbitrary_msgpack_documents_raise_only_wire_errors(doc: Any) -> None:
    data = msgpack.packb(doc, use_bin_type=True)

    with contextlib.suppress(WireError):
        validate_record(data)


@given(st.tuples(st.sampled_from(list(Kind)), st.text(max_size=10), U64, U64, U64), MSGPACK_VALUE)
def test_valid_header_with_arbitrary_body_raises_only_wire_errors(
    header: tuple[Kind, str, int, int, int], body: Any
) -> None:
    data = msgpack.packb([PROTOCOL_VERSION, *header, body], use_bin_type=True)

    with contextlib.suppress(WireError):
        validate_record(data)


SIDE = st.integers(-5, 2**32) | st.just(2**64 - 1)


@given(
    st.tuples(st.text(max_size=8), SIDE, SIDE),
    st.tuples(st.binary(max_size=24), st.binary(max_size=24), st.binary(max_size=64)),
)
def test_detection_body_with_arbitrary_columns_raises_only_wire_errors(
    frame: tuple[str, int, int], columns: tuple[bytes, bytes, bytes]
) -> None:
    body = [*frame, *columns]
    data = msgpack.packb([PROTOCOL_VERSION, 1, "cam", 1, 1, 1, body], use_bin_type=True)

    try:
        frame = detections_from(decode(data))
    except WireError:
        return
    assert len(frame.class_ids) == len(frame.scores) == len(frame.boxes)


@given(frames())
def test_every_byte_flip_of_a_frame_raises_only_wire_errors(fields: dict[str, Any]) -> None:
    data = bytearray(encode_detections(**fields))
    for index in range(0, len(data), max(1, len(data) // 16)):
        corrupted = bytes(data[:index]) + bytes([data[index] ^ 0xFF]) + bytes(data[index + 1 :])
        with contextlib.suppress(WireError):
            validate_record(corrupted)


@given(NAME, NAME, st.sampled_from(list(Channel)))
def test_any_valid_names_make_a_parseable_topic(site: str, device: str, channel: Channel) -> None:
    topic = DeviceTopic(site, device, channel)

    assert DeviceTopic.parse(str(topic)) == topic
