"""Unit tests of the model delivery messages: round trips, stock msgpack, typed refusals."""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evc.errors import (
    MalformedPayloadError,
    PayloadTooLargeError,
    SchemaError,
    UnknownVersionError,
    WireError,
)
from evc.wire.delivery import (
    MAX_CHUNK_BYTES,
    MAX_CHUNKS_PER_REQUEST,
    MAX_DELIVERY_BYTES,
    Chunk,
    ChunkRefusal,
    ChunkRequest,
    chunk_from,
    chunk_request_from,
    encode_chunk,
    encode_chunk_error,
    encode_chunk_request,
)

SHA = hashlib.sha256(b"artifact").hexdigest()
OTHER = hashlib.sha256(b"other").hexdigest()


def _pack(doc: Any) -> bytes:
    packed: bytes = msgpack.packb(doc, use_bin_type=True)
    return packed


def test_request_round_trip_and_stock_msgpack() -> None:
    data = encode_chunk_request(SHA, [3, 0, 7])
    assert chunk_request_from(data) == ChunkRequest(SHA, (3, 0, 7))
    assert msgpack.unpackb(data) == {"v": 1, "sha256": SHA, "chunks": [3, 0, 7]}


def test_chunk_and_refusal_round_trip() -> None:
    assert chunk_from(encode_chunk(SHA, 5, b"\x00\xffdata")) == Chunk(SHA, 5, b"\x00\xffdata")
    assert chunk_from(encode_chunk(SHA, 0, b"")) == Chunk(SHA, 0, b"")
    assert chunk_from(encode_chunk_error(SHA, "not_available")) == ChunkRefusal(
        SHA, "not_available"
    )
    assert msgpack.unpackb(encode_chunk(OTHER, 1, b"x")) == {
        "v": 1, "sha256": OTHER, "index": 1, "data": b"x",
    }


def test_a_full_request_fits_and_one_more_is_refused() -> None:
    most = list(range(MAX_CHUNKS_PER_REQUEST))
    assert chunk_request_from(encode_chunk_request(SHA, most)).chunks == tuple(most)
    with pytest.raises(SchemaError):
        encode_chunk_request(SHA, [*most, 1])
    with pytest.raises(SchemaError):
        chunk_request_from(_pack({"v": 1, "sha256": SHA, "chunks": [*most, 1]}))


def test_the_largest_chunk_round_trips() -> None:
    data = bytes(MAX_CHUNK_BYTES)
    encoded = encode_chunk(SHA, 2**32 - 1, data)
    assert len(encoded) <= MAX_DELIVERY_BYTES
    assert chunk_from(encoded) == Chunk(SHA, 2**32 - 1, data)


@pytest.mark.parametrize(
    ("sha256", "chunks"),
    [
        (SHA.upper(), [0]),
        (SHA[:-1], [0]),
        ("", [0]),
        (SHA, []),
        (SHA, [-1]),
        (SHA, [2**32]),
    ],
)
def test_encoding_a_bad_request_is_refused(sha256: str, chunks: list[int]) -> None:
    with pytest.raises(SchemaError):
        encode_chunk_request(sha256, chunks)


def test_encoding_a_bad_chunk_or_refusal_is_refused() -> None:
    with pytest.raises(SchemaError):
        encode_chunk(SHA, -1, b"x")
    with pytest.raises(SchemaError):
        encode_chunk(SHA, 0, bytes(MAX_CHUNK_BYTES + 1))
    with pytest.raises(SchemaError):
        encode_chunk_error(SHA, "Not Available")
    with pytest.raises(SchemaError):
        encode_chunk_error(SHA, "")


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ([1, SHA, [0]], SchemaError),
        ({"sha256": SHA, "chunks": [0]}, SchemaError),
        ({"v": "1", "sha256": SHA, "chunks": [0]}, SchemaError),
        ({"v": 2, "sha256": SHA, "chunks": [0]}, UnknownVersionError),
        ({"v": 1, "sha256": SHA, "chunks": [0], "extra": 1}, SchemaError),
        ({"v": 1, "sha256": SHA.encode(), "chunks": [0]}, SchemaError),
        ({"v": 1, "sha256": SHA, "chunks": 0}, SchemaError),
        ({"v": 1, "sha256": SHA, "chunks": [True]}, SchemaError),
        ({"v": 1, "sha256": SHA, "chunks": [1.0]}, SchemaError),
        ({"v": 1, "sha256": SHA, "chunks": ["1"]}, SchemaError),
        ({"v": 1, "sha256": SHA, "chunks": [-5]}, SchemaError),
    ],
)
def test_bad_requests_raise_typed_errors(doc: Any, error: type[WireError]) -> None:
    with pytest.raises(error):
        chunk_request_from(_pack(doc))


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ("chunk", SchemaError),
        ({"v": 1, "sha256": SHA, "index": 0}, SchemaError),
        ({"v": 3, "sha256": SHA, "index": 0, "data": b""}, UnknownVersionError),
        ({"v": 1, "sha256": SHA, "index": 0, "data": "text"}, SchemaError),
        ({"v": 1, "sha256": SHA, "index": -1, "data": b""}, SchemaError),
        ({"v": 1, "sha256": SHA, "index": None, "data": b""}, SchemaError),
        ({"v": 1, "sha256": "ab", "index": 0, "data": b""}, SchemaError),
        ({"v": 1, "sha256": SHA, "index": 0, "data": b"", "error": "x"}, SchemaError),
        ({"v": 1, "sha256": SHA, "error": 5}, SchemaError),
        ({"v": 1, "sha256": SHA, "error": "x" * 65}, SchemaError),
        ({"v": 1, "error": "not_available"}, SchemaError),
    ],
)
def test_bad_chunks_raise_typed_errors(doc: Any, error: type[WireError]) -> None:
    with pytest.raises(error):
        chunk_from(_pack(doc))


def test_garbage_truncated_and_oversized_bytes_are_refused() -> None:
    encoded = encode_chunk(SHA, 1, b"payload")
    with pytest.raises(MalformedPayloadError):
        chunk_from(encoded[:-3])
    with pytest.raises(MalformedPayloadError):
        chunk_from(b"\xc1")  # a byte msgpack never uses
    with pytest.raises(MalformedPayloadError):
        chunk_from(encoded + b"\x00")  # trailing bytes: not one document
    with pytest.raises(PayloadTooLargeError):
        chunk_from(bytes(MAX_DELIVERY_BYTES + 1))
    with pytest.raises(PayloadTooLargeError):
        chunk_request_from(encode_chunk_request(SHA, [0]) + bytes(8192))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_wire_errors(data: bytes) -> None:
    for decode in (chunk_from, chunk_request_from):
        with contextlib.suppress(WireError):
            decode(data)
