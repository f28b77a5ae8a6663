"""What a fuzz target is, what counts as a crash, and the fixed setting targets and inputs share.

A **target** takes bytes and returns ``None`` (accepted) or the ``reason`` slug of the rejection.
It raises only on a **crash**: any exception that is not an :class:`~evc.errors.EvcError` with a
``reason`` the target documents (:data:`KNOWN_REASONS`), including ``ValueError``, ``KeyError``,
``RecursionError`` and ``MemoryError``, or an :class:`InvariantError`, raised when the code under
test went wrong without raising: a pipeline operator failed (the pipeline logs and skips it), or
an ingress emitted a record that the cloud would refuse.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from evc.errors import EvcError
from evc.models.signing import SigningKey

Target = Callable[[bytes], str | None]
SITE = "depot-1"
DEVICES = ("cam-1", "cam-2", "cam-3")
MAX_RECORD_BYTES = 256 * 1024  # the gateway's default ingest.max_payload_bytes
# The cloud allows 16 MiB; 1 MiB keeps each zip bomb to about a millisecond.
MAX_BATCH_BYTES = 1024 * 1024
_WIRE = frozenset({"oversized", "malformed", "schema", "unknown_version"})
_COMMAND = frozenset({"oversized", "not_json", "not_object", "invalid", "apply"})
KNOWN_REASONS: dict[str, frozenset[str]] = {
    "record": _WIRE,
    "batch": _WIRE,
    "chunk_request": _WIRE,
    "chunk": _WIRE,
    "manifest": frozenset({"manifest", "unknown_key", "signature"}),
    "gateway_command": _COMMAND,
    "device_command": _COMMAND | {"stale"},
    "admit": _WIRE | {"topic", "origin_mismatch"},
    "cloud_ingest": _WIRE | {"topic"},
}
TARGETS = tuple(KNOWN_REASONS)


class InvariantError(Exception):
    """The code under test went wrong without raising: always a crash, never a rejection."""


def reason_of(exc: EvcError) -> str:
    """The reason slug of a rejection; an EvcError without one is re-raised as a crash."""
    reason = getattr(exc, "reason", None)
    if not isinstance(reason, str):
        raise exc
    return reason


def pack_message(topic: str, payload: bytes, *, degrade: bool = False) -> bytes:
    """The bytes an ingress target takes: a flags byte, a 2-byte topic length, topic, payload."""
    raw = topic.encode("utf-8", "surrogatepass")[:65535]
    return bytes([int(degrade)]) + len(raw).to_bytes(2, "big") + raw + payload


def unpack_message(data: bytes) -> tuple[str, bytes, bool]:
    """Split :func:`pack_message` bytes (any bytes split somehow) into topic, payload, flags."""
    flags, size = data[:1], int.from_bytes(data[1:3], "big")
    topic = data[3 : 3 + size].decode("utf-8", "replace")
    return topic, data[3 + size :], bool(flags and flags[0] & 1)


def check(target: Target, name: str, data: bytes) -> str | None:
    """Run one input; raise on a crash, including a reason the target does not document."""
    reason = target(data)
    if reason is not None and reason not in KNOWN_REASONS[name]:
        raise InvariantError(f"undocumented rejection reason {reason!r}")
    return reason


def fuzz_signing_key() -> SigningKey:
    """A fixed key, so that runs are reproducible (and it signs nothing but fuzz inputs)."""
    seed = hashlib.sha256(b"evc fuzz signing key").digest()
    return SigningKey(private_key=Ed25519PrivateKey.from_private_bytes(seed))


# Every operator kind, as the ingress target runs it and as a valid gateway command carries it.
PIPELINE: list[dict[str, Any]] = [
    {"type": "threshold", "default": 0.2, "min_score": {"1": 0.5}, "deny": [7]},
    {"type": "zones", "mode": "tag", "devices": {
        "cam-1": [{"name": "door", "polygon": [[0, 0], [320, 0], [320, 480], [0, 480]]}],
        "cam-2": [[[100, 100], [500, 100], [300, 400]]],
    }},
    {"type": "track", "forward_frames": "all"},
    {"type": "alert", "rules": [
        {"name": "crowd", "kind": "count_above", "class": 0, "count": 3, "cooldown_s": 1},
        {"name": "loiter", "kind": "dwell", "class": 2, "seconds": 2,
         "zone": {"cam-1": [[[0, 0], [640, 0], [640, 480]]]}},
    ]},
    {"type": "aggregate", "window_s": 5, "forward_frames": True},
    {"type": "sample", "max_per_minute": 3, "max_per_hour": 30, "reasons": ["near_threshold"]},
]
