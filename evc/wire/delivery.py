"""Messages of the chunked model transfer: chunk requests, chunks and refusals.

A receiver asks for chunks of an artifact on its own MODEL topic and gets them, or a refusal,
on its own CHUNK topic. Each message is one msgpack map, so a stock decoder reads it::

    request  {"v": 1, "sha256": hex64, "chunks": [index, ...]}     # 1..256 indices
    chunk    {"v": 1, "sha256": hex64, "index": int, "data": bin}
    refusal  {"v": 1, "sha256": hex64, "error": str}               # e.g. "not_available"

``sha256`` names the whole artifact (the manifest's digest); whether a chunk's bytes are right
is for the receiver to check against its manifest, not for this codec.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack

from evc.errors import (
    MalformedPayloadError,
    PayloadTooLargeError,
    SchemaError,
    UnknownVersionError,
)

DELIVERY_VERSION = 1
MAX_CHUNKS_PER_REQUEST = 256
# The largest chunk that fits the fog broker's 1 MiB packet limit with room for the topic,
# the MQTT headers and the rest of the map.
MAX_CHUNK_BYTES = 1024 * 1024 - 4096
MAX_CHUNK_INDEX = 2**32 - 1
# The largest delivery message accepted, before it is even unpacked.
MAX_DELIVERY_BYTES = MAX_CHUNK_BYTES + 1024
NOT_AVAILABLE = "not_available"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ERROR = re.compile(r"[a-z][a-z0-9_]{0,63}")
_REQUEST_KEYS = frozenset({"v", "sha256", "chunks"})
_CHUNK_KEYS = frozenset({"v", "sha256", "index", "data"})
_REFUSAL_KEYS = frozenset({"v", "sha256", "error"})


@dataclass(frozen=True, slots=True)
class ChunkRequest:
    """A receiver asks for some chunks of the artifact ``sha256``."""

    sha256: str
    chunks: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Chunk:
    """Chunk ``index`` of the artifact ``sha256``, as sent (not yet checked against a manifest)."""

    sha256: str
    index: int
    data: bytes


@dataclass(frozen=True, slots=True)
class ChunkRefusal:
    """The server cannot serve the artifact ``sha256``; ``error`` says why (a short slug)."""

    sha256: str
    error: str


def encode_chunk_request(sha256: str, chunks: Sequence[int]) -> bytes:
    """Pack a request for ``chunks`` of the artifact ``sha256``.

    Raises:
        SchemaError: a digest that is not 64 lowercase hex digits, no chunks or more than
            :data:`MAX_CHUNKS_PER_REQUEST`, or an index outside ``0..2**32-1``.
    """
    _check_request(sha256, list(chunks))
    return _pack({"v": DELIVERY_VERSION, "sha256": sha256, "chunks": [int(i) for i in chunks]})


def encode_chunk(sha256: str, index: int, data: bytes) -> bytes:
    """Pack chunk ``index`` of the artifact ``sha256``.

    Raises:
        SchemaError: a bad digest or index, or ``data`` longer than :data:`MAX_CHUNK_BYTES`.
    """
    _check_chunk(sha256, index, data)
    return _pack({"v": DELIVERY_VERSION, "sha256": sha256, "index": index, "data": bytes(data)})


def encode_chunk_error(sha256: str, error: str) -> bytes:
    """Pack a refusal to serve the artifact ``sha256`` (``error``: a slug like ``not_available``).

    Raises:
        SchemaError: a bad digest, or ``error`` not a 1-64 character ``[a-z0-9_]`` slug.
    """
    _check_refusal(sha256, error)
    return _pack({"v": DELIVERY_VERSION, "sha256": sha256, "error": error})


def chunk_request_from(data: bytes) -> ChunkRequest:
    """Unpack and validate a chunk request.

    Raises:
        PayloadTooLargeError: ``data`` is longer than any request can be.
        MalformedPayloadError: ``data`` is not one msgpack document.
        UnknownVersionError: ``v`` is not a version this build speaks.
        SchemaError: the fields are missing, extra or of the wrong type or size.
    """
    doc = _unpack(data, max_bytes=64 + 16 * MAX_CHUNKS_PER_REQUEST)
    _check_keys(doc, _REQUEST_KEYS, "chunk request")
    chunks = doc["chunks"]
    if not isinstance(chunks, list):
        raise SchemaError("chunk request chunks must be an array")
    _check_request(doc["sha256"], chunks)
    return ChunkRequest(doc["sha256"], tuple(chunks))


def chunk_from(data: bytes) -> Chunk | ChunkRefusal:
    """Unpack and validate a chunk or a refusal.

    Raises:
        PayloadTooLargeError: ``data`` is longer than :data:`MAX_DELIVERY_BYTES`.
        MalformedPayloadError: ``data`` is not one msgpack document.
        UnknownVersionError: ``v`` is not a version this build speaks.
        SchemaError: neither a chunk nor a refusal, or a field of the wrong type or size.
    """
    doc = _unpack(data, max_bytes=MAX_DELIVERY_BYTES)
    if isinstance(doc, dict) and "error" in doc:
        _check_keys(doc, _REFUSAL_KEYS, "chunk refusal")
        _check_refusal(doc["sha256"], doc["error"])
        return ChunkRefusal(doc["sha256"], doc["error"])
    _check_keys(doc, _CHUNK_KEYS, "chunk")
    _check_chunk(doc["sha256"], doc["index"], doc["data"])
    return Chunk(doc["sha256"], doc["index"], doc["data"])


def _pack(doc: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(doc, use_bin_type=True)
    return packed


def _unpack(data: bytes, *, max_bytes: int) -> Any:
    if len(data) > max_bytes:
        raise PayloadTooLargeError(f"delivery message of {len(data)} bytes exceeds {max_bytes}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
    except (ValueError, msgpack.UnpackException, TypeError) as exc:
        raise MalformedPayloadError(f"not a msgpack document: {exc}") from exc


def _check_keys(doc: Any, keys: frozenset[str], what: str) -> None:
    """Check the map's version first, so that a newer format is named as such."""
    if not isinstance(doc, dict):
        raise SchemaError(f"a {what} must be a msgpack map")
    version = doc.get("v")
    if type(version) is not int:
        raise SchemaError(f"a {what} needs an integer version 'v'")
    if version != DELIVERY_VERSION:
        raise UnknownVersionError(f"delivery version {version} is not supported")
    if set(doc) != keys:
        # repr: the keys may mix str and bin, which do not sort together.
        got = sorted(map(repr, doc))
        raise SchemaError(f"a {what} has exactly the fields {sorted(keys)}, got {got}")


def _check_sha256(sha256: Any) -> None:
    if not isinstance(sha256, str) or not _HEX64.fullmatch(sha256):
        raise SchemaError("sha256 must be 64 lowercase hex digits")


def _check_index(index: Any) -> None:
    # bool is an int subclass; a True index is a bug on the sender's side, not chunk 1.
    if type(index) is not int or not 0 <= index <= MAX_CHUNK_INDEX:
        raise SchemaError(f"a chunk index must be an integer in 0..{MAX_CHUNK_INDEX}")


def _check_request(sha256: Any, chunks: list[Any]) -> None:
    _check_sha256(sha256)
    if not 1 <= len(chunks) <= MAX_CHUNKS_PER_REQUEST:
        raise SchemaError(f"a request asks for 1..{MAX_CHUNKS_PER_REQUEST} chunks")
    for index in chunks:
        _check_index(index)


def _check_chunk(sha256: Any, index: Any, data: Any) -> None:
    _check_sha256(sha256)
    _check_index(index)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SchemaError("chunk data must be a bin field")
    if len(data) > MAX_CHUNK_BYTES:
        raise SchemaError(f"a chunk carries at most {MAX_CHUNK_BYTES} bytes")


def _check_refusal(sha256: Any, error: Any) -> None:
    _check_sha256(sha256)
    if not isinstance(error, str) or not _ERROR.fullmatch(error):
        raise SchemaError("a refusal's error must be a 1-64 character [a-z0-9_] slug")
