"""Unit tests of the wire codec: round trips, sizes, stock-msgpack readability and typed errors."""

from __future__ import annotations

import time
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard

from evc.errors import (
    MalformedPayloadError,
    PayloadTooLargeError,
    SchemaError,
    UnknownVersionError,
    WireError,
)
from evc.wire import (
    PROTOCOL_VERSION,
    Kind,
    batch_from,
    decode,
    detections_from,
    encode_batch,
    encode_detections,
    encode_map,
    map_from,
    validate_record,
)
from evc.wire.codec import DEFAULT_MAX_PAYLOAD_BYTES, MAX_DETECTIONS_PER_FRAME, BatchEncoding

WIDTH, HEIGHT = 1920, 1080
HEADER: dict[str, Any] = {"origin": "cam-0001", "epoch": 1_700_000_000, "seq": 42, "ts_ms": 7}


def _frame(count: int, **overrides: Any) -> bytes:
    """Encode ``count`` plausible detections on a 1920x1080 frame."""
    rng = np.random.default_rng(count)
    x1 = rng.uniform(0, WIDTH / 2, count)
    y1 = rng.uniform(0, HEIGHT / 2, count)
    boxes = np.stack([x1, y1, x1 + WIDTH / 4, y1 + HEIGHT / 4], axis=1)
    fields: dict[str, Any] = {
        **HEADER,
        "model_version": "yolov8n@3",
        "width": WIDTH,
        "height": HEIGHT,
        "class_ids": rng.integers(0, 80, count),
        "scores": rng.uniform(0, 1, count),
        "boxes": boxes,
    }
    fields.update(overrides)
    return encode_detections(**fields)


def _pack(doc: Any) -> bytes:
    packed: bytes = msgpack.packb(doc, use_bin_type=True)
    return packed


def _envelope(body: Any, *, kind: Any = Kind.DETECTIONS, **header: Any) -> bytes:
    """Pack an envelope by hand, so that any field can be given a wrong value."""
    fields = {"version": PROTOCOL_VERSION, "kind": kind, **HEADER, **header}
    order = ("version", "kind", "origin", "epoch", "seq", "ts_ms")
    return _pack([fields[name] for name in order] + [body])


def _det_body(count: int = 2, **overrides: Any) -> list[Any]:
    body = {
        "model_version": "m1",
        "width": 640,
        "height": 480,
        "classes": bytes(count),
        "scores": bytes(count),
        "boxes": bytes(8 * count),
    }
    body.update(overrides)
    return list(body.values())


# -- detections -------------------------------------------------------------------------------


def test_detection_frame_round_trips_within_quantisation_step() -> None:
    rng = np.random.default_rng(7)
    boxes = np.stack(
        [rng.uniform(0, WIDTH, 25), rng.uniform(0, HEIGHT, 25)] * 2, axis=1
    ).astype(np.float32)
    scores = rng.uniform(0, 1, 25).astype(np.float32)
    classes = rng.integers(0, 80, 25)

    data = _frame(25, class_ids=classes, scores=scores, boxes=boxes)
    envelope = decode(data)
    frame = detections_from(envelope)

    assert (envelope.kind, envelope.origin, envelope.epoch, envelope.seq, envelope.ts_ms) == (
        Kind.DETECTIONS, "cam-0001", 1_700_000_000, 42, 7,
    )
    assert (frame.model_version, frame.width, frame.height, len(frame)) == (
        "yolov8n@3", WIDTH, HEIGHT, 25,
    )
    np.testing.assert_array_equal(frame.class_ids, classes)
    assert np.all(np.abs(frame.scores - scores) <= 1 / 255)
    tolerance = np.array([WIDTH, HEIGHT, WIDTH, HEIGHT]) / 65535
    assert np.all(np.abs(frame.boxes - boxes) <= tolerance)


def test_detection_columns_have_documented_dtypes_and_shapes() -> None:
    frame = detections_from(decode(_frame(3)))

    assert frame.class_ids.dtype == np.uint16
    assert frame.scores.dtype == np.float32
    assert frame.boxes.dtype == np.float32
    assert frame.boxes.shape == (3, 4)


def test_class_ids_above_255_round_trip_as_uint16() -> None:
    classes = [0, 255, 256, 65535]
    frame = detections_from(decode(_frame(4, class_ids=classes)))

    np.testing.assert_array_equal(frame.class_ids, classes)


def test_empty_frame_round_trips() -> None:
    frame = detections_from(decode(_frame(0, class_ids=[], scores=[], boxes=[])))

    assert len(frame) == 0
    assert frame.boxes.shape == (0, 4)


def test_out_of_range_scores_and_boxes_are_clipped_to_the_frame() -> None:
    data = _frame(1, scores=[1.7], boxes=[[-50, -1, WIDTH + 10, HEIGHT * 2]])
    frame = detections_from(decode(data))

    assert frame.scores[0] == pytest.approx(1.0)
    np.testing.assert_allclose(frame.boxes[0], [0, 0, WIDTH, HEIGHT], rtol=1e-6)


def test_ten_detection_frame_fits_160_bytes_with_realistic_header() -> None:
    header = {
        "origin": "cam-0001",
        "epoch": int(time.time()),
        "seq": 10**6,
        "ts_ms": time.time_ns() // 1_000_000,
    }
    ten = _frame(10, **header)
    eleven = _frame(11, **header)

    assert len(ten) <= 160
    assert len(eleven) - len(ten) <= 16


# -- heartbeats, states and batches -----------------------------------------------------------


@pytest.mark.parametrize("kind", [Kind.HEARTBEAT, Kind.STATE])
def test_field_map_round_trips_every_scalar_type(kind: Kind) -> None:
    fields = {"uptime_s": 12345, "temp_c": 61.5, "model": "m@3", "ok": True, "err": None, "d": -3}
    envelope = decode(encode_map(kind, **HEADER, fields=fields))

    assert envelope.kind is kind
    assert map_from(envelope) == fields
    assert type(map_from(envelope)["ok"]) is bool


def test_encode_map_refuses_kinds_without_a_field_map() -> None:
    with pytest.raises(SchemaError):
        encode_map(Kind.DETECTIONS, **HEADER, fields={"a": 1})


def test_batch_round_trips_records_verbatim() -> None:
    records = [_frame(2), encode_map(Kind.HEARTBEAT, **HEADER, fields={"a": 1}), _frame(0)]
    batch = batch_from(decode(encode_batch(**HEADER, site="site-1", records=records)))

    assert batch.site == "site-1"
    assert batch.records == records
    assert [validate_record(r).kind for r in batch.records] == [
        Kind.DETECTIONS, Kind.HEARTBEAT, Kind.DETECTIONS,
    ]


def test_empty_batch_round_trips() -> None:
    batch = batch_from(decode(encode_batch(**HEADER, site="s", records=[])))

    assert batch.records == []


def test_envelope_key_is_origin_epoch_seq() -> None:
    key = decode(_frame(1)).key

    assert (key.origin, key.epoch, key.seq) == ("cam-0001", 1_700_000_000, 42)
    assert str(key) == "cam-0001:1700000000:42"


# -- stock msgpack -----------------------------------------------------------------------------


def _every_kind_of_message() -> list[bytes]:
    return [
        _frame(3),
        encode_map(Kind.HEARTBEAT, **HEADER, fields={"a": 1}),
        encode_map(Kind.STATE, **HEADER, fields={"b": "x"}),
        encode_batch(**HEADER, site="s", records=[_frame(1)]),
    ]


@pytest.mark.parametrize("data", _every_kind_of_message())
def test_stock_msgpack_reads_every_message_as_a_seven_field_array(data: bytes) -> None:
    doc = msgpack.unpackb(data)

    assert isinstance(doc, list)
    assert len(doc) == 7
    assert doc[:3] == [PROTOCOL_VERSION, int(decode(data).kind), "cam-0001"]


@pytest.mark.parametrize("data", _every_kind_of_message())
def test_version_is_the_byte_after_the_array_header(data: bytes) -> None:
    assert data[0] == 0x97  # fixarray of 7
    assert data[1] == PROTOCOL_VERSION


# -- malformed bytes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "error", "reason"),
    [
        (b"", MalformedPayloadError, "malformed"),
        (b"\xc1", MalformedPayloadError, "malformed"),  # the one byte msgpack never uses
        (b"\x97\x01\x01", MalformedPayloadError, "malformed"),  # truncated array
        (b"\xd9\x02\xff\xfe", MalformedPayloadError, "malformed"),  # str that is not UTF-8
        (b"\x81\x01\x02", MalformedPayloadError, "malformed"),  # map with an int key
        (b"\x01\x02", MalformedPayloadError, "malformed"),  # two documents
        (b"\x01", SchemaError, "schema"),  # a lone integer is msgpack, not an envelope
        (b"\x90", SchemaError, "schema"),  # empty array
        (b"\xa5hello", SchemaError, "schema"),
        (b"\x80", SchemaError, "schema"),  # empty map
        (b"GET / HTTP/1.1\r\n", MalformedPayloadError, "malformed"),
        (b"\x00" * 8, MalformedPayloadError, "malformed"),
    ],
)
def test_random_bytes_raise_the_matching_typed_error(
    data: bytes, error: type[WireError], reason: str
) -> None:
    with pytest.raises(error) as caught:
        decode(data)

    assert type(caught.value) is error
    assert caught.value.reason == reason


@pytest.mark.parametrize("cut", [1, 5, 20, -1])
def test_truncated_frame_is_malformed(cut: int) -> None:
    data = _frame(4)

    with pytest.raises(MalformedPayloadError):
        decode(data[:cut])


def test_non_bytes_input_is_malformed() -> None:
    with pytest.raises(MalformedPayloadError):
        decode("not bytes")  # type: ignore[arg-type]


# -- header schema -----------------------------------------------------------------------------


@pytest.mark.parametrize("version", [2, 0, 255, -1])
def test_unknown_version_raises_unknown_version_error(version: int) -> None:
    with pytest.raises(UnknownVersionError) as caught:
        decode(_envelope(_det_body(), version=version))

    assert caught.value.reason == "unknown_version"


def test_unknown_version_is_reported_before_the_field_count() -> None:
    """A future version may change the envelope length; it must still read as a version."""
    with pytest.raises(UnknownVersionError):
        decode(_pack([2, "anything"]))


@pytest.mark.parametrize("version", ["1", 1.0, True, None, b"\x01"])
def test_version_of_wrong_type_is_a_schema_error(version: Any) -> None:
    with pytest.raises(SchemaError):
        decode(_envelope(_det_body(), version=version))


@pytest.mark.parametrize("length", [6, 8])
def test_envelope_with_wrong_field_count_is_a_schema_error(length: int) -> None:
    doc = [PROTOCOL_VERSION, 1, "cam", 1, 2, 3, [], None][:length]

    with pytest.raises(SchemaError):
        decode(_pack(doc))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kind", 99),
        ("kind", 0),
        ("kind", "det"),
        ("kind", None),
        ("kind", [1]),
        ("origin", ""),
        ("origin", 5),
        ("origin", b"cam-0001"),
        ("origin", None),
        ("epoch", -1),
        ("epoch", 1.5),
        ("epoch", "1"),
        ("epoch", True),
        ("seq", -1),
        ("seq", None),
        ("seq", 2.0),
        ("ts_ms", -5),
        ("ts_ms", [1]),
        ("ts_ms", False),
    ],
)
def test_header_field_of_wrong_type_or_range_is_a_schema_error(field: str, value: Any) -> None:
    with pytest.raises(SchemaError) as caught:
        decode(_envelope(_det_body(), **{field: value}))

    assert caught.value.reason == "schema"


@pytest.mark.parametrize("kind", [1.0, True])
def test_kind_must_be_an_integer_like_the_version(kind: Any) -> None:
    """The version rejects 1.0 and True; the kind must too (``Kind(1.0)`` is DETECTIONS)."""
    with pytest.raises(SchemaError):
        decode(_envelope(_det_body(), kind=kind))


def test_largest_signed_64_bit_header_values_are_accepted() -> None:
    top = 2**63 - 1
    envelope = decode(_envelope(_det_body(), epoch=top, seq=top, ts_ms=top))

    assert (envelope.epoch, envelope.seq, envelope.ts_ms) == (top, top, top)


@pytest.mark.parametrize("field", ["epoch", "seq", "ts_ms"])
def test_header_values_a_database_cannot_store_are_refused(field: str) -> None:
    # One such record would make a whole batch unstorable in the cloud (SQLite is int64).
    values = {"epoch": 1, "seq": 1, "ts_ms": 1, field: 2**63}
    with pytest.raises(SchemaError):
        decode(_envelope(_det_body(), **values))


# -- size limit --------------------------------------------------------------------------------


def test_payload_over_max_bytes_is_too_large() -> None:
    data = _frame(5)

    with pytest.raises(PayloadTooLargeError) as caught:
        decode(data, max_bytes=len(data) - 1)

    assert caught.value.reason == "oversized"


def test_payload_of_exactly_max_bytes_is_accepted() -> None:
    data = _frame(5)

    assert decode(data, max_bytes=len(data)).kind is Kind.DETECTIONS


def test_size_is_checked_before_parsing_with_the_default_limit() -> None:
    with pytest.raises(PayloadTooLargeError):
        decode(b"\xc1" * (DEFAULT_MAX_PAYLOAD_BYTES + 1))


def test_validate_record_applies_max_bytes() -> None:
    data = _frame(5)

    with pytest.raises(PayloadTooLargeError):
        validate_record(data, max_bytes=10)


# -- detection body schema ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        None,
        {"model_version": "m"},
        _det_body()[:5],
        [*_det_body(), b""],
        _det_body(model_version=1),
        _det_body(model_version=None),
        _det_body(width=0),
        _det_body(height=-480),
        _det_body(width="640"),
        _det_body(width=640.0),
        _det_body(height=True),
        _det_body(classes=[0, 0]),
        _det_body(scores="\x00\x00"),
        _det_body(boxes=None),
    ],
)
def test_detection_body_of_wrong_shape_or_type_is_a_schema_error(body: Any) -> None:
    envelope = decode(_envelope(body))

    with pytest.raises(SchemaError):
        detections_from(envelope)
    with pytest.raises(SchemaError):
        validate_record(_envelope(body))


@pytest.mark.parametrize(
    ("classes", "scores", "boxes"),
    [
        (3, 2, 16),  # one class id too many
        (2, 3, 24),  # one score too many
        (2, 2, 15),  # boxes not a multiple of 8 bytes
        (2, 2, 24),  # one box too many
        (5, 2, 16),  # neither one nor two bytes per class id
        (0, 1, 8),
    ],
)
def test_columns_that_disagree_on_length_are_a_schema_error(
    classes: int, scores: int, boxes: int
) -> None:
    body = _det_body(classes=bytes(classes), scores=bytes(scores), boxes=bytes(boxes))

    with pytest.raises(SchemaError):
        detections_from(decode(_envelope(body)))


def test_two_byte_class_ids_are_read_as_uint16() -> None:
    body = _det_body(count=2, classes=(300).to_bytes(2, "little") + (7).to_bytes(2, "little"))

    frame = detections_from(decode(_envelope(body)))

    np.testing.assert_array_equal(frame.class_ids, [300, 7])


def test_more_detections_than_the_limit_is_a_schema_error() -> None:
    body = _det_body(count=MAX_DETECTIONS_PER_FRAME + 1)

    with pytest.raises(SchemaError):
        detections_from(decode(_envelope(body)))


def test_detections_at_the_limit_are_accepted() -> None:
    body = _det_body(count=MAX_DETECTIONS_PER_FRAME)

    assert len(detections_from(decode(_envelope(body)))) == MAX_DETECTIONS_PER_FRAME


def test_detections_from_refuses_other_kinds() -> None:
    envelope = decode(encode_map(Kind.HEARTBEAT, **HEADER, fields={}))

    with pytest.raises(SchemaError):
        detections_from(envelope)


@pytest.mark.parametrize(
    "overrides",
    [
        {"scores": [0.5, 0.6]},
        {"class_ids": [1]},
        {"boxes": [[0, 0, 1, 1]] * 2},
        {"width": 0},
        {"height": -1},
        {"class_ids": [0, 0, 70000]},
        {"class_ids": [0, -1, 5]},
    ],
)
def test_encode_detections_refuses_inconsistent_input(overrides: dict[str, Any]) -> None:
    with pytest.raises(SchemaError):
        _frame(3, **overrides)


# -- field map schema --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [[], None, "x", {"nested": {"a": 1}}, {"list": [1, 2]}, {"bin": b"\x00"}],
)
def test_field_map_must_be_a_flat_map_of_scalars(body: Any) -> None:
    data = _envelope(body, kind=Kind.HEARTBEAT)

    with pytest.raises(SchemaError):
        map_from(decode(data))
    with pytest.raises(SchemaError):
        validate_record(data)


def test_field_map_keys_must_be_strings() -> None:
    """``strict_map_key`` still lets bin keys through; ``map_from`` promises ``dict[str, ...]``."""
    data = _envelope({b"uptime_s": 5}, kind=Kind.STATE)

    with pytest.raises(SchemaError):
        map_from(decode(data))


def test_map_from_refuses_other_kinds() -> None:
    with pytest.raises(SchemaError):
        map_from(decode(_frame(1)))


# -- batch schema ------------------------------------------------------------------------------


def test_nested_batch_is_refused_as_a_record() -> None:
    batch = encode_batch(**HEADER, site="s", records=[_frame(1)])

    with pytest.raises(SchemaError) as caught:
        validate_record(batch)

    assert caught.value.reason == "schema"


def test_batch_with_unknown_encoding_raises_unknown_version_error() -> None:
    data = _envelope(["s", 2, []], kind=Kind.BATCH)

    with pytest.raises(UnknownVersionError):
        batch_from(decode(data))


@pytest.mark.parametrize(
    "body",
    [
        None,
        ["s", 0],
        ["s", 0, [], None],
        [7, 0, []],
        ["s", 0, None],
        ["s", 0, [b"ok", "not bin"]],
        ["s", 0, {"a": b""}],
    ],
)
def test_batch_body_of_wrong_shape_or_type_is_a_schema_error(body: Any) -> None:
    with pytest.raises(SchemaError):
        batch_from(decode(_envelope(body, kind=Kind.BATCH)))


def test_batch_from_refuses_other_kinds() -> None:
    with pytest.raises(SchemaError):
        batch_from(decode(_frame(1)))


def test_sample_records_with_a_foreign_body_are_refused() -> None:
    with pytest.raises(SchemaError, match="sample body"):
        validate_record(_envelope({"anything": [1, 2]}, kind=Kind.SAMPLE))


def test_every_wire_error_reason_is_distinct() -> None:
    errors = [MalformedPayloadError, SchemaError, UnknownVersionError, PayloadTooLargeError]

    assert len({error.reason for error in errors}) == len(errors)
    assert all(issubclass(error, WireError) for error in errors)


# -- compressed batches ------------------------------------------------------------------------


def _zstd_batch(records: list[bytes]) -> bytes:
    return encode_batch(**HEADER, site="s", records=records, encoding=BatchEncoding.ZSTD)


def test_zstd_batch_round_trips_records_verbatim_and_is_smaller() -> None:
    records = [_frame(10) for _ in range(10)]
    plain = encode_batch(**HEADER, site="s", records=records)
    packed = _zstd_batch(records)

    assert batch_from(decode(packed)).records == records
    assert len(packed) < len(plain)


def test_stock_msgpack_reads_the_envelope_of_a_zstd_batch() -> None:
    doc = msgpack.unpackb(_zstd_batch([_frame(1)]))

    assert doc[6][:2] == ["s", int(BatchEncoding.ZSTD)]
    assert isinstance(doc[6][2], bytes)


def test_zstd_batch_that_unpacks_past_the_limit_is_too_large() -> None:
    bomb = zstandard.ZstdCompressor().compress(msgpack.packb([b"\0" * 100_000]))
    unsized = zstandard.ZstdCompressor(write_content_size=False).compress(
        msgpack.packb([b"\0" * 100_000])
    )

    for body in (bomb, unsized):
        with pytest.raises(PayloadTooLargeError):
            batch_from(decode(_envelope(["s", 1, body], kind=Kind.BATCH)), max_bytes=10_000)


@pytest.mark.parametrize(
    "body",
    [b"not zstd at all", zstandard.ZstdCompressor().compress(b"\xc1 not msgpack")],
)
def test_zstd_batch_of_bad_bytes_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedPayloadError):
        batch_from(decode(_envelope(["s", 1, body], kind=Kind.BATCH)))


@pytest.mark.parametrize(
    "inner", [[b"ok", "not bin"], {"a": b""}, "text"],
)
def test_zstd_batch_of_the_wrong_shape_is_a_schema_error(inner: Any) -> None:
    body = zstandard.ZstdCompressor().compress(msgpack.packb(inner, use_bin_type=True))

    with pytest.raises(SchemaError):
        batch_from(decode(_envelope(["s", 1, body], kind=Kind.BATCH)))


def test_zstd_batch_whose_records_are_not_one_bin_is_a_schema_error() -> None:
    with pytest.raises(SchemaError):
        batch_from(decode(_envelope(["s", 1, [b"x"]], kind=Kind.BATCH)))


# -- zone tags (the optional seventh detections field) ----------------------------------------


def _tagged(names: list[str], ids: list[int]) -> bytes:
    return _frame(len(ids), zone_names=names, zone_ids=ids)


def test_zone_tags_round_trip() -> None:
    frame = detections_from(decode(_tagged(["door", "till"], [0, 2, 1, 2])))

    assert frame.zone_names == ("door", "till")
    assert frame.zone_ids is not None
    assert frame.zone_ids.dtype == np.uint8
    assert frame.zone_ids.tolist() == [0, 2, 1, 2]
    assert len(frame) == 4


def test_untagged_body_is_six_fields_and_unchanged_by_the_zone_arguments() -> None:
    plain = _frame(3)
    body = msgpack.unpackb(plain)[6]

    assert len(body) == 6
    assert _frame(3, zone_names=(), zone_ids=None) == plain
    frame = detections_from(decode(plain))
    assert (frame.zone_names, frame.zone_ids) == ((), None)


def test_tagged_body_is_the_plain_body_plus_names_and_one_byte_per_detection() -> None:
    plain = msgpack.unpackb(_frame(3))[6]
    tagged = msgpack.unpackb(_tagged(["a"], [1, 0, 1]))[6]

    assert tagged[:6] == plain
    assert tagged[6] == [["a"], b"\x01\x00\x01"]


def test_an_empty_frame_can_carry_an_empty_zone_field() -> None:
    frame = detections_from(decode(_tagged([], [])))

    assert frame.zone_ids is not None
    assert (frame.zone_names, frame.zone_ids.tolist()) == ((), [])


@pytest.mark.parametrize(
    "zones",
    [
        pytest.param(b"", id="not-an-array"),
        pytest.param([["a"]], id="one-field"),
        pytest.param([["a"], b"\x01\x01", 0], id="three-fields"),
        pytest.param(["a", b"\x01\x01"], id="names-not-an-array"),
        pytest.param([[1], b"\x01\x01"], id="name-not-a-string"),
        pytest.param([[b"a"], b"\x01\x01"], id="name-is-bin"),
        pytest.param([[""], b"\x01\x01"], id="empty-name"),
        pytest.param([["x" * 65], b"\x01\x01"], id="name-too-long"),
        pytest.param([["a", "a"], b"\x01\x02"], id="repeated-name"),
        pytest.param([[f"z{i}" for i in range(256)], b"\x01\x01"], id="256-names"),
        pytest.param([["a"], [1, 1]], id="ids-not-bin"),
        pytest.param([["a"], "\x01\x01"], id="ids-a-string"),
        pytest.param([["a"], b"\x01"], id="ids-too-short"),
        pytest.param([["a"], b"\x01\x01\x01"], id="ids-too-long"),
        pytest.param([["a"], b"\x01\x02"], id="id-past-the-names"),
        pytest.param([[], b"\x00\x01"], id="id-without-names"),
    ],
)
def test_a_bad_zone_field_is_a_schema_error(zones: Any) -> None:
    data = _envelope([*_det_body(2), zones])

    with pytest.raises(SchemaError):
        detections_from(decode(data))
    with pytest.raises(SchemaError):
        validate_record(data)


def test_255_names_of_64_characters_are_accepted() -> None:
    names = [f"{i:03d}".ljust(64, "x") for i in range(255)]
    data = _envelope([*_det_body(2), [names, bytes([255, 0])]])

    frame = detections_from(decode(data))

    assert len(frame.zone_names) == 255
    assert frame.zone_ids is not None
    assert frame.zone_ids.tolist() == [255, 0]


@pytest.mark.parametrize(
    ("names", "ids"),
    [
        pytest.param(["a"], [0, 2], id="id-past-the-names"),
        pytest.param(["a"], [0, 256], id="id-past-uint8"),
        pytest.param(["a"], [-1, 0], id="negative-id"),
        pytest.param(["a"], [1], id="fewer-ids-than-detections"),
        pytest.param(["a", "a"], [1, 2], id="repeated-name"),
        pytest.param([""], [1, 1], id="empty-name"),
    ],
)
def test_encode_detections_refuses_bad_zone_tags(names: list[str], ids: list[int]) -> None:
    with pytest.raises(SchemaError):
        _frame(2, zone_names=names, zone_ids=ids)


def test_encode_detections_refuses_names_without_ids() -> None:
    with pytest.raises(SchemaError, match="without zone_ids"):
        _frame(2, zone_names=["a"])
