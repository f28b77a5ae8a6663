"""Fuzz targets for every decoder and ingress of EVC, and a seeded long-run driver.

Run ``python -m evc.fuzz --inputs 1000000 [--seed N] [--json]``; ``docs/FUZZING.md`` says what
each target covers, how inputs are made and what the last long run measured.

A **target** takes bytes and returns ``None`` (accepted) or the ``reason`` slug of the rejection.
It raises only on a **crash**: any exception that is not an :class:`~evc.errors.EvcError` with a
``reason`` the target documents (:data:`KNOWN_REASONS`), including ``ValueError``, ``KeyError``,
``RecursionError`` and ``MemoryError``, or an :class:`InvariantError`, raised when the code under
test went wrong without raising: a pipeline operator failed (the pipeline logs and skips it), or
an ingress emitted a record that the cloud would refuse.

Inputs (:class:`Mutator`) are valid messages made by the encoders, then mutated: bit flips,
truncation, splicing, msgpack-aware edits (types, lengths, nesting, huge ints, bin/str swaps,
ext types), zstd-aware edits (bombs, lying frame headers, recompressed mutated records),
JSON-aware edits for manifests and commands, and plain random bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import math
import random
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import msgpack
import numpy as np
import paho.mqtt.client as mqtt
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from evc.cloud.ingest import CloudIngest
from evc.device.commands import DeviceCommands
from evc.errors import EvcError, WireError
from evc.gateway.commands import parse_command
from evc.gateway.intake import admit
from evc.gateway.pipeline import (
    Aggregate,
    Alerts,
    Pipeline,
    SampleSelect,
    Threshold,
    Track,
    Zones,
    build_pipeline,
    validate_operators,
)
from evc.models.manifest import Compatibility, Manifest
from evc.models.signing import SignedManifest, SigningKey, TrustedKeys
from evc.mqtt.client import BrokerAddress
from evc.mqtt.command import Problem
from evc.wire import (
    Alert,
    BatchEncoding,
    Channel,
    DeviceTopic,
    GatewayTopic,
    Kind,
    Sample,
    SummaryFrame,
    alerts_from,
    batch_from,
    crops,
    decode,
    detections_from,
    encode_alerts,
    encode_batch,
    encode_detections,
    encode_events,
    encode_map,
    encode_sample,
    encode_summary,
    events_from,
    map_from,
    sample_from,
    summaries_from,
    validate_record,
    whole_frame,
)
from evc.wire.delivery import (
    chunk_from,
    chunk_request_from,
    encode_chunk,
    encode_chunk_error,
    encode_chunk_request,
)

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


def _reason(exc: EvcError) -> str:
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


# -- targets -----------------------------------------------------------------------------------

_UNPACK: dict[Kind, Callable[[Any], object]] = {
    Kind.DETECTIONS: detections_from, Kind.EVENT: events_from, Kind.HEARTBEAT: map_from,
    Kind.STATE: map_from, Kind.SUMMARY: summaries_from, Kind.ALERT: alerts_from,
}


def record_target(data: bytes) -> str | None:
    """``validate_record``, then the full decoder of the record's kind (SAMPLE regions
    decompressed), as the gateway and the cloud apply them."""
    try:
        envelope = validate_record(data, max_bytes=MAX_RECORD_BYTES)
    except EvcError as exc:
        return _reason(exc)
    if envelope.kind is Kind.SAMPLE:
        try:
            sample_from(envelope)  # the one documented late check: regions that do not inflate
        except EvcError as exc:
            return _reason(exc)
        return None
    try:
        _UNPACK[envelope.kind](envelope)
    except EvcError as exc:
        raise InvariantError(f"validate_record accepted what {envelope.kind.name} refuses") from exc
    return None


def batch_target(data: bytes) -> str | None:
    """``decode`` and ``batch_from`` of an uplink batch, plain or zstd."""
    try:
        batch_from(decode(data, max_bytes=MAX_BATCH_BYTES), max_bytes=MAX_BATCH_BYTES)
    except EvcError as exc:
        return _reason(exc)
    return None


def chunk_request_target(data: bytes) -> str | None:
    """``chunk_request_from``."""
    try:
        chunk_request_from(data)
    except EvcError as exc:
        return _reason(exc)
    return None


def chunk_target(data: bytes) -> str | None:
    """``chunk_from`` (a chunk or a refusal)."""
    try:
        chunk_from(data)
    except EvcError as exc:
        return _reason(exc)
    return None


def fuzz_signing_key() -> SigningKey:
    """A fixed key, so that runs are reproducible (and it signs nothing but fuzz inputs)."""
    seed = hashlib.sha256(b"evc fuzz signing key").digest()
    return SigningKey(private_key=Ed25519PrivateKey.from_private_bytes(seed))


class ManifestTarget:
    """``SignedManifest.parse`` and ``TrustedKeys.verify`` against the fuzz key."""

    def __init__(self) -> None:
        self.keys = TrustedKeys(keys=[fuzz_signing_key().public_key])

    def __call__(self, data: bytes) -> str | None:
        try:
            self.keys.verify(SignedManifest.parse(data))
        except EvcError as exc:
            return _reason(exc)
        return None


def _command_reason(problems: Sequence[Problem]) -> str:
    message = problems[0].message if problems else ""
    if problems and problems[0].path == "":
        for prefix, reason in (("command is", "oversized"), ("not JSON", "not_json"),
                               ("the command must", "not_object")):
            if message.startswith(prefix):
                return reason
    return "invalid"


def gateway_command_target(data: bytes) -> str | None:
    """``parse_command``, then ``build_pipeline`` as the gateway's command handler does."""
    parsed = parse_command(data)
    if isinstance(parsed, list):
        return _command_reason(parsed)
    try:
        build_pipeline(parsed.desired.pipeline)
    except ValueError:  # PipelineCommands.handle answers these as "cannot apply"
        return "apply"
    return None


class DeviceCommandTarget:
    """``DeviceCommands.handle`` (validation, version check, apply, save, reply)."""

    def __init__(self, state_dir: Path) -> None:
        self.commands = DeviceCommands(
            site=SITE, device_id="cam-1", address=BrokerAddress(host="localhost", port=1),
            state_dir=state_dir, apply=lambda _settings: None,
        )

    def __call__(self, data: bytes) -> str | None:
        reply = self.commands.handle(data)
        if reply.result == "applied":
            return None
        if reply.result == "stale":
            return "stale"
        message = reply.errors[0].message if reply.errors else ""
        if message.startswith("over "):
            return "oversized"
        if message.startswith("cannot apply"):
            return "apply"
        if reply.errors and reply.errors[0].path == "":
            return "not_json" if "JSON" in message or "EOF" in message else "not_object"
        return "invalid"


class _Listener:
    """A pipeline listener that remembers operator failures (the pipeline only logs them)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.outcomes: Counter[str] = Counter()

    def record(self, operator: str, outcome: str, reason: str, removed: int) -> None:
        del removed  # how many detections an operator removed is not what the fuzzer checks
        self.outcomes[outcome] += 1
        if outcome == "error":
            self.errors.append(f"{operator}: {reason}")

    def record_events(self, operator: str, event_type: str, count: int) -> None:
        """Events are not what the fuzzer checks."""

    def record_alert(self, operator: str, rule: str) -> None:
        """Alerts are not what the fuzzer checks."""


_PIPELINE = [
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


class AdmitTarget:
    """The gateway's ingress ``admit()`` with a pipeline of every operator kind (and, on flag
    bit 0, a ``degrade`` aggregate); every record it returns must be one the cloud accepts."""

    RESET_EVERY = 4096  # bounds the per-device state of track, aggregate and alert

    def __init__(self) -> None:
        self.clock = 0.0
        self.listener = _Listener()
        self.calls = 0
        self._build()

    def _build(self) -> None:
        # Built by hand rather than with build_pipeline: the sample budgets get a clock that
        # ticks once per input, so that a run is the same on every machine.
        configs: list[Any] = validate_operators(_PIPELINE)
        threshold, zones, track, alert, aggregate, sample = configs
        operators: list[Any] = [
            Threshold(threshold), Zones(zones), Track(track), Alerts(alert),
            Aggregate(aggregate), SampleSelect(sample, clock=lambda: self.clock),
        ]
        self.pipeline = Pipeline(operators, listener=self.listener)
        degrade: Any = validate_operators([{"type": "aggregate"}])[0]
        self.degrade = Aggregate(degrade)

    def __call__(self, data: bytes) -> str | None:
        topic, payload, degrade = unpack_message(data)
        self.calls += 1
        self.clock += 1.0
        self.listener.errors.clear()
        try:
            records, _ = admit(
                topic, payload, site=SITE, max_bytes=MAX_RECORD_BYTES, pipeline=self.pipeline,
                degrade=self.degrade if degrade else None, listener=self.listener,
            )
        except EvcError as exc:
            return _reason(exc)
        self._check([r.payload for r in records])
        if self.calls % self.RESET_EVERY == 0:
            self.close()
        return None

    def _check(self, payloads: Sequence[bytes]) -> None:
        if self.listener.errors:
            raise InvariantError(f"pipeline operator failed: {self.listener.errors}")
        for payload in payloads:
            try:
                validate_record(payload, max_bytes=MAX_BATCH_BYTES)
            except WireError as exc:
                raise InvariantError(f"admit produced a record the cloud refuses: {exc}") from exc

    def close(self) -> None:
        """Close every open window (as a stopping gateway does), check them, start afresh."""
        self._check([*self.pipeline.flush(), *self.degrade.flush()])
        self._build()


class _Counting:
    """Stands in for the worker's metrics: remembers what ``_unpack`` counted."""

    def __init__(self) -> None:
        self.rejected: Counter[str] = Counter()
        self.batches = 0

    def labels(self, reason: str) -> SimpleNamespace:
        return SimpleNamespace(inc=lambda: self.rejected.update([reason]))

    def inc(self) -> None:
        self.batches += 1


class CloudIngestTarget:
    """The cloud's ingress, ``CloudIngest._unpack``, on random gateway topics and payloads.

    A refused message returns its reason; records refused inside an accepted batch are counted
    in ``record_rejects``. Every record it keeps must be one of the topic's site that
    ``validate_record`` accepts.
    """

    def __init__(self) -> None:
        self.record_rejects: Counter[str] = Counter()
        self.counts = _Counting()
        self.worker = cast(CloudIngest, SimpleNamespace(
            config=SimpleNamespace(ingest=SimpleNamespace(max_payload_bytes=MAX_BATCH_BYTES)),
            metrics=SimpleNamespace(rejected=self.counts, batches=self.counts),
        ))

    def __call__(self, data: bytes) -> str | None:
        topic, payload, _ = unpack_message(data)
        message = mqtt.MQTTMessage(topic=topic.encode("utf-8", "surrogatepass"))
        message.payload = payload
        self.counts.rejected.clear()
        self.counts.batches = 0
        records = CloudIngest._unpack(self.worker, message)
        if not self.counts.batches:
            if len(self.counts.rejected) != 1 or records:
                raise InvariantError(f"a refused message counted {dict(self.counts.rejected)}")
            return next(iter(self.counts.rejected))
        self.record_rejects.update(self.counts.rejected)
        site = GatewayTopic.parse(topic).site
        for record in records:
            if record.site != site:
                raise InvariantError(f"stored a record of site {record.site!r} from {topic!r}")
            try:
                validate_record(record.payload, max_bytes=MAX_BATCH_BYTES)
            except WireError as exc:
                raise InvariantError(f"stored a record it should refuse: {exc}") from exc
        return None


# -- seeds: valid messages made by the encoders -------------------------------------------------


def _detections(rng: np.random.Generator, *, origin: str, seq: int, ts_ms: int, n: int,
                classes: int = 4, tagged: bool = False) -> bytes:
    x1y1 = rng.uniform(0, 560, size=(n, 2))
    boxes = np.hstack([x1y1, x1y1 + rng.uniform(4, 80, size=(n, 2))])
    ids = rng.integers(0, 2) + 1 if tagged else None
    return encode_detections(
        origin=origin, epoch=1764201600, seq=seq, ts_ms=ts_ms, model_version="shapes@2",
        width=640, height=480, class_ids=rng.integers(0, classes, n), scores=rng.random(n),
        boxes=boxes, zone_names=("door", "bay") if tagged else (),
        zone_ids=None if ids is None else rng.integers(0, 3, n),
    )


def _sample(rng: np.random.Generator, *, origin: str, seq: int, reason: str, crop: bool) -> bytes:
    image = rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8)
    boxes = np.array([[1, 1, 5, 6], [8, 2, 15, 11]], np.float32)
    sample = Sample(
        model_version="shapes@2", reason=reason, width=16, height=12,
        regions=crops(image, boxes, margin=1) if crop else whole_frame(image),
        class_ids=np.array([0, 2], np.uint16), scores=np.array([0.4, 0.6], np.float32),
        boxes=boxes, truth_class_ids=None if crop else np.array([0, 2], np.uint16),
        truth_boxes=None if crop else boxes, meta={"truth": "synthetic-scene", "n": 2},
    )
    return encode_sample(origin=origin, epoch=7, seq=seq, ts_ms=1_000 * seq, sample=sample)


def record_seeds(origin: str = "cam-1") -> list[bytes]:
    """One or more valid records of every kind but BATCH."""
    rng = np.random.default_rng(7)
    key: dict[str, Any] = {"origin": origin, "epoch": 1764201600, "ts_ms": 1764201612345}
    boxes = np.array([[10, 20, 60, 90], [300, 100, 420, 330]], np.float32)
    summary = SummaryFrame(
        model_version="shapes@2", window_start_ms=1764201610000, window_ms=10000, frames=25,
        class_ids=np.array([0, 3], np.uint16), counts=np.array([40, 2], np.uint32),
        min_scores=np.array([0.3, 0.5]), max_scores=np.array([0.9, 0.6]),
        mean_scores=np.array([0.6, 0.55]), occupancy=np.array([1.0, 0.08]),
    )
    alerts = [Alert(rule="crowd", class_id=0, count=2, duration_ms=0, zone="", boxes=boxes),
              Alert(rule="loiter", class_id=2, count=1, duration_ms=4000, zone="door",
                    boxes=boxes[:1])]
    return [
        _detections(rng, origin=origin, seq=1, ts_ms=key["ts_ms"], n=0),
        _detections(rng, origin=origin, seq=2, ts_ms=key["ts_ms"], n=3),
        _detections(rng, origin=origin, seq=3, ts_ms=key["ts_ms"], n=40, classes=300),
        _detections(rng, origin=origin, seq=4, ts_ms=key["ts_ms"], n=5, tagged=True),
        encode_events(**key, seq=5, model_version="shapes@2", width=640, height=480,
                      event_types=[1, 2, 3], track_ids=[1, 2, 2**32 - 1], class_ids=[0, 1, 2],
                      scores=[0.5, 0.6, 0.7], boxes=np.vstack([boxes, boxes[:1]])),
        encode_map(Kind.HEARTBEAT, **key, seq=6, fields={
            "uptime_s": 12.5, "published": 3, "buffered": 0, "model": "shapes@2", "ok": True,
            "group": None}),
        encode_map(Kind.STATE, **key, seq=7, fields={"state": "online", "model": "shapes@2"}),
        _sample(rng, origin=origin, seq=8, reason="near_threshold", crop=False),
        _sample(rng, origin=origin, seq=9, reason="random", crop=True),
        encode_summary(**key, seq=10, summary=summary),
        encode_alerts(**key, seq=11, model_version="shapes@2", width=640, height=480,
                      alerts=alerts),
    ]


def batch_seeds() -> list[bytes]:
    """Plain and zstd batches of the record seeds."""
    records = record_seeds()
    return [
        encode_batch(origin="gw-1", epoch=5, seq=seq, ts_ms=99, site=SITE, records=chosen,
                     encoding=encoding)
        for seq, (chosen, encoding) in enumerate([
            (records, BatchEncoding.PLAIN), (records, BatchEncoding.ZSTD),
            (records[:2], BatchEncoding.ZSTD), ([], BatchEncoding.PLAIN),
            ([], BatchEncoding.ZSTD), (records[7:9], BatchEncoding.PLAIN),
        ], start=1)
    ]


_SHA = hashlib.sha256(b"artifact").hexdigest()


def chunk_request_seeds() -> list[bytes]:
    """Chunk requests of one, a few and the most indices."""
    return [encode_chunk_request(_SHA, chunks) for chunks in
            ([0], [1, 5, 2**32 - 1], list(range(256)))]


def chunk_seeds() -> list[bytes]:
    """Chunks (empty, small, large) and a refusal."""
    return [encode_chunk(_SHA, 0, b""), encode_chunk(_SHA, 3, bytes(range(256)) * 4),
            encode_chunk(_SHA, 2**32 - 1, b"\x00" * 70000),
            encode_chunk_error(_SHA, "not_available")]


def manifest_for(size: int, chunk_size: int, *, version: str = "2") -> Manifest:
    """A manifest of ``size`` bytes in chunks of ``chunk_size`` (digests of made-up chunks)."""
    count = -(-size // chunk_size)
    return Manifest(
        name="shapes", version=version, sha256=_SHA, size=size, chunk_size=chunk_size,
        chunk_sha256=tuple(hashlib.sha256(bytes([i % 256])).hexdigest() for i in range(count)),
        compatibility=Compatibility(task="detect", input_shape=(3, 160, 160),
                                    classes=("circle", "square", "triangle")),
        created_ms=1764201600000,
    )


def manifest_seeds() -> list[bytes]:
    """Signed manifests of one and of several chunks."""
    key = fuzz_signing_key()
    return [key.sign(manifest_for(size, chunk)).to_json()
            for size, chunk in ((805963, 65536), (10, 64), (1, 1))]


def gateway_command_seeds() -> list[bytes]:
    """Valid pipeline commands: every operator, an empty pipeline, a request id."""
    pipelines: list[list[Any]] = [
        _PIPELINE, [], [{"type": "min_detections", "count": 2}],
        [{"type": "threshold", "default": 0.8, "name": "t1"},
         {"type": "threshold", "allow": [1, 2], "name": "t2"}],
    ]
    return [json.dumps({"version": v, "pipeline": p, "request": f"r{v}"}).encode()
            for v, p in enumerate(pipelines, start=1)]


def device_command_seeds() -> list[bytes]:
    """Valid device settings commands."""
    settings: list[dict[str, Any]] = [
        {"publish": {"mode": "on_change"}, "heartbeat_interval_s": 5,
         "sampling": {"enabled": True, "max_per_minute": 2}},
        {}, {"heartbeat_interval_s": 0.5}, {"sampling": {"enabled": False}},
    ]
    return [json.dumps({"version": v, "settings": s, "request": "a1b2"}).encode()
            for v, s in enumerate(settings, start=1)]


# -- mutations ---------------------------------------------------------------------------------

_HUGE_INTS = (2**64 - 1, 2**63, 2**63 - 1, -(2**63), -1, 0, 1, 255, 256, 65535, 65536, 4096,
              4097, 2**32 - 1, 2**32)
_INTERESTING_BYTES = (0x00, 0x01, 0x7F, 0x80, 0x90, 0x9F, 0xC0, 0xC1, 0xC4, 0xC5, 0xC6, 0xCC,
                      0xCF, 0xD3, 0xD4, 0xD9, 0xDB, 0xDD, 0xDF, 0xE0, 0xFF)


def _zstd(data: bytes, *, size: bool = True) -> bytes:
    return zstandard.ZstdCompressor(level=1, write_content_size=size).compress(data)


@dataclass(frozen=True, slots=True)
class _Bombs:
    """zstd frames that inflate far beyond their size, made once per run."""

    declared: bytes = field(default_factory=lambda: _zstd(bytes(64 << 20)))
    undeclared: bytes = field(default_factory=lambda: _zstd(bytes(8 << 20), size=False))
    small: bytes = field(default_factory=lambda: _zstd(bytes(1 << 20), size=False))


class Mutator:
    """Makes fuzz inputs from seeds with a seeded :class:`random.Random`."""

    def __init__(self, rng: random.Random, bombs: _Bombs) -> None:
        self.rng = rng
        self.bombs = bombs

    # byte level

    def random_bytes(self) -> bytes:
        """Plain random bytes, mostly short."""
        size = self.rng.choice((0, 1, 2, 7, 16, 64, 256, 1024, self.rng.randrange(4096)))
        return self.rng.randbytes(size)

    def bytes_(self, data: bytes, others: Sequence[bytes] = ()) -> bytes:
        """1-4 byte-level edits: flips, interesting bytes, inserts, deletes, truncation,
        duplication, splicing with another seed."""
        out = bytearray(data)
        for _ in range(self.rng.randint(1, 4)):
            self._byte_edit(out, others)
        return bytes(out)

    def _byte_edit(self, out: bytearray, others: Sequence[bytes]) -> None:
        rng, at = self.rng, self.rng.randrange(len(out) + 1)
        op = rng.randrange(8)
        if op == 0 and out:
            out[at % len(out)] ^= 1 << rng.randrange(8)
        elif op == 1 and out:
            out[at % len(out)] = rng.choice(_INTERESTING_BYTES)
        elif op == 2:
            out[at:at] = rng.randbytes(rng.randint(1, 8))
        elif op == 3:
            del out[at : at + rng.randint(1, 16)]
        elif op == 4:
            del out[at:]  # truncation
        elif op == 5:
            out[at:at] = out[at : at + rng.randint(1, 64)]
        elif op == 6 and others:
            other = rng.choice(others)
            cut = rng.randrange(len(other) + 1)
            out[at:] = other[cut:]  # splice
        else:
            out.extend(rng.randbytes(rng.randint(1, 4)))  # trailing bytes

    # msgpack level

    def msgpack_(self, data: bytes) -> bytes:
        """Unpack, edit 1-3 nodes of the document tree, pack again (sometimes with str and bin
        packed alike, or a container header that lies about its length)."""
        rng = self.rng
        doc: Any = msgpack.unpackb(data, raw=False, strict_map_key=False)
        for _ in range(rng.randint(1, 3)):
            doc = self._edit_tree(doc)
        try:
            out: bytes = msgpack.packb(doc, use_bin_type=rng.random() < 0.9)
        except (ValueError, OverflowError, TypeError):  # deeper than msgpack packs, ints > u64
            return self.deep_msgpack()
        return self._lying_header(out) if rng.random() < 0.1 else out

    def _edit_tree(self, doc: Any) -> Any:
        paths = list(_paths(doc))
        path = self.rng.choice(paths)
        return _replace_at(doc, path, self._new_value(_get(doc, path)))

    def _new_value(self, old: Any) -> Any:  # noqa: PLR0911 -- one return per kind of edit
        rng = self.rng
        op = rng.randrange(10)
        if op == 0:
            return rng.choice(_HUGE_INTS)
        if op == 1:
            return self._scalar()
        if op == 2 and isinstance(old, bytes):
            return old.decode("latin-1")  # bin -> str
        if op == 2 and isinstance(old, str):
            return old.encode("utf-8", "surrogatepass")  # str -> bin
        if op == 3 and isinstance(old, bytes | str):
            return _resize(rng, old)
        if op == 4 and isinstance(old, list):
            return _resize(rng, old)
        if op == 5 and isinstance(old, dict):
            return self._edit_map(old)
        if op == 6:
            return self._nest(old, rng.choice((1, 2, 16, 200)))
        if op == 7:
            if rng.random() < 0.5:
                return msgpack.Timestamp(rng.randint(-(2**33), 2**34 - 1), rng.randrange(10**9))
            return msgpack.ExtType(rng.choice((0, 5, 127)), rng.randbytes(rng.choice((3, 4, 12))))
        if op == 8 and isinstance(old, int) and not isinstance(old, bool):
            return old + rng.choice((-1, 1, 2**32, -(2**32)))
        return rng.choice(([], {}, [old, old], {"k": old}, True, None, 0.5, math.nan, -0.0))

    def _scalar(self) -> Any:
        rng = self.rng
        return rng.choice((None, True, False, 0, -1, 1.5, math.inf, math.nan, "", "x" * 65,
                           "é\u2028", b"", rng.randbytes(rng.randint(1, 40)),
                           rng.randint(-(2**63), 2**64 - 1)))

    def _edit_map(self, old: dict[Any, Any]) -> dict[Any, Any]:
        rng = self.rng
        new = dict(old)
        op = rng.randrange(4)
        if op == 0 and new:
            del new[rng.choice(list(new))]
        elif op == 1:
            new[rng.choice(("extra", "truth", "v", "error", "", 1, b"bin"))] = self._scalar()
        elif op == 2 and new:
            key = rng.choice(list(new))
            new[key.encode("utf-8", "surrogatepass") if isinstance(key, str) else 7] = new.pop(key)
        else:
            new = {**new, **{f"k{i}": i for i in range(rng.choice((1, 40)))}}
        return new

    def _nest(self, value: Any, depth: int) -> Any:
        for _ in range(depth):
            value = [value] if self.rng.random() < 0.7 else {"n": value}
        return value

    def deep_msgpack(self) -> bytes:
        """A document nested far past any sane depth, made by hand (msgpack will not pack it)."""
        depth = self.rng.choice((100, 600, 1100, 5000, 100_000))
        head = self.rng.choice((b"\x91", b"\x81\xa1k", b"\x97\x01\x01\xa1a\x01\x01\x01\x91"))
        if self.rng.random() < 0.1:  # a timestamp ext of a length no timestamp has
            return head + b"\xc7\x05\xff" + self.rng.randbytes(5)
        return head + b"\x91" * depth + b"\xc0"

    def _lying_header(self, data: bytes) -> bytes:
        """Replace one fixarray/fixmap/fixstr header by a 32-bit one that claims 2**32-1."""
        spots = [i for i, b in enumerate(data) if 0x80 <= b <= 0xBF]
        if not spots:
            return data
        at = self.rng.choice(spots)
        kind = data[at] & 0xF0
        header = {0x80: b"\xdf", 0x90: b"\xdd"}.get(kind, b"\xdb") + b"\xff\xff\xff\xff"
        return data[:at] + header + data[at + 1 :]

    # zstd level

    def zstd_bomb(self) -> bytes:
        """A zstd frame that inflates a thousandfold or more, with or without its size."""
        bombs = self.bombs
        return self.rng.choice((bombs.declared, bombs.undeclared, bombs.small))

    def zstd_(self, raw: bytes) -> bytes:  # noqa: PLR0911 -- one return per kind of edit
        """A zstd frame of ``raw`` that lies or breaks: wrong declared size, truncated, two
        frames, a skippable frame, a bomb, or ``raw`` edited then compressed properly."""
        rng = self.rng
        frame = _zstd(raw, size=rng.random() < 0.5)
        op = rng.randrange(7)
        if op == 0:
            return _zstd(raw + rng.randbytes(rng.randint(1, 100)))
        if op == 1:
            return frame[: rng.randrange(len(frame))]
        if op == 2:
            return frame + frame
        if op == 3:
            return b"\x50\x2a\x4d\x18" + (4).to_bytes(4, "little") + b"skip" + frame
        if op == 4:
            return self.zstd_bomb()
        if op == 5:
            return _zstd(raw[: rng.randrange(len(raw) + 1)])
        return self.bytes_(frame)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(doc, list):
        for i, item in enumerate(doc):
            yield from _paths(item, (*prefix, i))
    elif isinstance(doc, dict):
        for key, item in doc.items():
            yield from _paths(item, (*prefix, key))


def _get(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def _replace_at(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = _get(doc, path[:-1])
    parent[path[-1]] = value
    return doc


def _resize(rng: random.Random, old: Any) -> Any:
    size = len(old)
    new = rng.choice((0, max(0, size - 1), size + 1, size * 2 + 1, rng.randrange(size + 9)))
    if new <= size:
        return old[:new]
    empty: Any = b"\x01" if isinstance(old, bytes) else "a" if isinstance(old, str) else [0]
    filler = old[:1] or empty
    return old + filler * (new - size)


def _json_text(doc: Any) -> str:
    def default(value: Any) -> Any:
        return value.decode("latin-1") if isinstance(value, bytes) else repr(value)

    return json.dumps(doc, default=default, skipkeys=True)


# -- input generators, one per target ----------------------------------------------------------


@dataclass(slots=True)
class _Device:
    """One simulated camera: its key counter, clock and moving objects."""

    seq: int = 0
    epoch: int = 1764201600
    ts_ms: int = 1764201600000
    objects: list[list[float]] = field(default_factory=list)


class Inputs:
    """Makes the inputs of every target from one seed: ``Inputs(seed).make(name)``."""

    def __init__(self, seed: int, *, bombs: _Bombs | None = None) -> None:
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.mutate = Mutator(self.rng, bombs or _Bombs())
        self.seeds = {
            "record": record_seeds(), "batch": batch_seeds(),
            "chunk_request": chunk_request_seeds(), "chunk": chunk_seeds(),
            "manifest": manifest_seeds(), "gateway_command": gateway_command_seeds(),
            "device_command": device_command_seeds(),
        }
        self.device_seeds = {d: record_seeds(d) for d in DEVICES}
        self.devices = {d: _Device() for d in DEVICES}
        self._make: dict[str, Callable[[], bytes]] = {
            "record": self.record, "batch": self.batch,
            "chunk_request": lambda: self.msgpack_input("chunk_request"),
            "chunk": lambda: self.msgpack_input("chunk"), "manifest": self.manifest,
            "gateway_command": lambda: self.json_input("gateway_command"),
            "device_command": lambda: self.json_input("device_command"),
            "admit": self.admit, "cloud_ingest": self.cloud_ingest,
        }

    def make(self, target: str) -> bytes:
        """The next input for ``target``."""
        return self._make[target]()

    def _pick(self, weights: Sequence[float]) -> int:
        return self.rng.choices(range(len(weights)), weights)[0]

    def msgpack_input(self, name: str) -> bytes:
        """Random bytes, or a seed with byte-level or msgpack-aware edits."""
        seeds = self.seeds[name]
        seed = self.rng.choice(seeds)
        choice = self._pick((1, 3, 5, 0.3))
        if choice == 0:
            return self.mutate.random_bytes()
        if choice == 1:
            return self.mutate.bytes_(seed, seeds)
        if choice == 2:
            return self.mutate.msgpack_(seed)
        return self.mutate.deep_msgpack()

    def record(self, seeds: Sequence[bytes] | None = None) -> bytes:
        """A record input: :meth:`msgpack_input`, or a SAMPLE whose regions' zstd is edited."""
        seeds = seeds or self.seeds["record"]
        if self.rng.random() < 0.12:
            return self.sample_regions(self.rng.choice(seeds[7:9]))
        if self.rng.random() < 0.08:
            return self.rng.choice(seeds)  # keep some valid records in every stream
        saved, self.seeds["record"] = self.seeds["record"], list(seeds)
        try:
            return self.msgpack_input("record")
        finally:
            self.seeds["record"] = saved

    def sample_regions(self, seed: bytes) -> bytes:
        """A SAMPLE with one region's data broken, bombed or resized."""
        doc = msgpack.unpackb(seed, raw=False)
        body = doc[6]
        region = self.rng.choice(body["regions"])
        raw = zstandard.ZstdDecompressor().decompress(region[6])
        if self.rng.random() < 0.2:  # a large frame and one region that is a (small) bomb
            side = self.rng.choice((591, 592, 1024))
            body["width"] = body["height"] = side
            region[:6] = [0, 0, side, side, side, side]
            region[6] = self.mutate.bombs.small
        else:
            region[6] = self.mutate.zstd_(raw)
        return bytes(msgpack.packb(doc, use_bin_type=True))

    def batch(self) -> bytes:
        """A batch input: edits of the envelope, or records edited inside a valid batch,
        plain or recompressed (with lies and bombs)."""
        choice = self._pick((4, 2, 3, 0.5))
        if choice == 0:
            return self.msgpack_input("batch")
        records = [self.record() if self.rng.random() < 0.3 else r
                   for r in self.rng.sample(self.seeds["record"], self.rng.randint(0, 6))]
        encoding = BatchEncoding.ZSTD if self.rng.random() < 0.6 else BatchEncoding.PLAIN
        data = encode_batch(origin="gw-1", epoch=5, seq=self.rng.randint(1, 9), ts_ms=1,
                            site=SITE, records=records, encoding=encoding)
        if choice == 1 or encoding is BatchEncoding.PLAIN:
            return data
        doc = msgpack.unpackb(data, raw=False)
        inner = msgpack.packb(records, use_bin_type=True)
        if choice == 3:
            doc[6][2] = self.mutate.zstd_bomb()
        else:
            doc[6][2] = self.mutate.zstd_(self.mutate.msgpack_(inner) if records else inner)
        return bytes(msgpack.packb(doc, use_bin_type=True))

    def json_input(self, name: str) -> bytes:
        """Random bytes, byte-level edits, JSON-aware edits, or deep nesting."""
        seeds = self.seeds[name]
        seed = self.rng.choice(seeds)
        choice = self._pick((1, 2.5, 5, 1))
        if choice == 0:
            return self.mutate.random_bytes()
        if choice == 1:
            return self.mutate.bytes_(seed, seeds)
        if choice == 2:
            return self.json_edit(json.loads(seed)).encode("utf-8", "surrogatepass")
        return self.deep_json(json.loads(seed))

    def json_edit(self, doc: Any) -> str:
        """Edit 1-3 nodes of a JSON document (types, huge numbers, strings, nesting)."""
        for _ in range(self.rng.randint(1, 3)):
            path = self.rng.choice(list(_paths(doc)))
            old = _get(doc, path)
            value = self.rng.choice((
                self.mutate._new_value(old),
                10**400, -(10**19), 1e308, math.inf, "\ud800", "\x00", "9" * 5000, "",
            ))
            doc = _replace_at(doc, path, value)
        return _json_text(doc)

    def deep_json(self, doc: Any) -> bytes:
        """A document, or one of its fields, nested thousands deep."""
        depth = self.rng.choice((100, 1000, 3000, 30_000))
        if self.rng.random() < 0.7:
            deep = "[" * depth + "]" * depth
        else:
            deep = '{"a":' * depth + "1" + "}" * depth
        if self.rng.random() < 0.3:
            return deep.encode()
        path = self.rng.choice(list(_paths(doc))[1:] or [()])
        text = _json_text(_replace_at(doc, path, "\x00DEEP\x00"))
        return text.replace('"\\u0000DEEP\\u0000"', deep).encode()

    def manifest(self) -> bytes:
        """A signed-manifest input; a fifth are edited manifests signed again, to get past the
        signature check."""
        if self.rng.random() >= 0.2:
            return self.json_input("manifest")
        doc = json.loads(self.rng.choice(self.seeds["manifest"]))
        edited = json.loads(self.json_edit(doc["manifest"]))
        try:
            manifest = Manifest.model_validate(edited)
        except ValueError:
            doc["manifest"] = edited
            return _json_text(doc).encode()
        signed = fuzz_signing_key().sign(manifest)
        return _json_text(signed.model_dump(mode="python")).encode("utf-8", "surrogatepass")

    # ingress

    def frame(self, device: str) -> bytes:
        """The next detections frame of a simulated camera, now and then with a key or clock
        that jumps, repeats or runs to the end of int64."""
        state, rng = self.devices[device], self.rng
        state.seq += 1
        state.ts_ms += rng.choice((40, 40, 100, 1000, 6000))
        jump = rng.random()
        if jump < 0.02:
            state.ts_ms = rng.choice((0, 2**63 - 1, 2**63 - 1 - 5000, state.ts_ms - 10**6))
        elif jump < 0.03:
            state.seq = rng.choice((1, state.seq - 2, 2**63 - 1))
        elif jump < 0.035:
            state.epoch += 1
        if not state.objects or rng.random() < 0.1:
            state.objects = [[rng.uniform(0, 600), rng.uniform(0, 440), rng.randrange(4)]
                             for _ in range(rng.randint(0, 8))]
        for obj in state.objects:
            obj[0] += rng.uniform(-30, 30)
            obj[1] += rng.uniform(-30, 30)
        boxes = [[x, y, x + 40, y + 40] for x, y, _ in state.objects]
        classes = [int(c) if rng.random() < 0.98 else rng.choice((7, 65535)) for *_, c in
                   state.objects]
        return encode_detections(
            origin=device, epoch=state.epoch, seq=max(0, state.seq), ts_ms=max(0, state.ts_ms),
            model_version="shapes@2", width=640, height=480, class_ids=classes,
            scores=[rng.random() for _ in classes], boxes=boxes,
        )

    def admit(self) -> bytes:
        """A device message for the gateway: mostly camera streams and records of every kind
        on their own topics, then mutated payloads, wrong topics and random bytes."""
        rng = self.rng
        device = rng.choice(DEVICES)
        choice = self._pick((45, 12, 13, 12, 8, 10))
        if choice == 0:
            payload = self.frame(device)
        elif choice == 1:
            payload = rng.choice(self.device_seeds[device])
        elif choice == 2:
            payload = self.record(self.device_seeds[device])
        elif choice == 3:
            payload = self.frame(device) if rng.random() < 0.5 else rng.choice(
                self.device_seeds[device])
            return pack_message(self.bad_device_topic(device), payload)
        elif choice == 4:
            return rng.randbytes(rng.randrange(300))
        else:
            payload = _sample(self.np_rng, origin=device, seq=self.devices[device].seq % 10**9 + 1,
                              reason=rng.choice(("near_threshold", "random")), crop=True)
        return pack_message(_topic_for(device, payload), payload, degrade=rng.random() < 0.1)

    def bad_device_topic(self, device: str) -> str:
        """A topic the gateway must refuse, or one of another device (origin mismatch)."""
        other = self.rng.choice([d for d in DEVICES if d != device])
        return self.rng.choice((
            f"evc/{SITE}/dev/{other}/det", f"evc/{SITE}/dev/{other}/hb",
            f"evc/other/dev/{device}/det",
            f"evc/{SITE}/dev/{device}/model", f"evc/{SITE}/dev/{device}/batch",
            f"evc/{SITE}/dev/{device}", f"evc/{SITE}/gw/{device}/det", f"evc/{SITE}/dev/+/det",
            f"evc/{SITE}/dev/{device}/det/x", f"evc//dev/{device}/det",
            f"EVC/{SITE}/dev/{device}/det",
            f"evc/{SITE}/dev/{'x' * 65}/det", f"evc/{SITE}/dev/\u00e9/det", "", "/", "#",
            f"evc/{SITE}/dev/.{device}/det", f"evc/{SITE}/dev/{device}\x00/det",
        ))

    def cloud_ingest(self) -> bytes:
        """An uplink message for the cloud: batches on their site's topic, else on topics of
        another site, channel or shape."""
        rng = self.rng
        payload = self.batch() if rng.random() < 0.85 else rng.choice(self.seeds["batch"])
        topic = rng.choice((f"evc/{SITE}/gw/gw-1/batch",) * 8 + (
            "evc/other/gw/gw-1/batch", f"evc/{SITE}/gw/gw-1/det", f"evc/{SITE}/dev/gw-1/batch",
            f"evc/{SITE}/gw/+/batch", "evc/x/gw/gw-1", f"evc/{SITE}/gw/{'g' * 70}/batch", "",
        ))
        return pack_message(topic, payload)


_CHANNEL_OF_KIND = {
    Kind.DETECTIONS: Channel.DETECTIONS, Kind.HEARTBEAT: Channel.HEARTBEAT,
    Kind.STATE: Channel.STATE, Kind.SAMPLE: Channel.SAMPLE,
}


def _topic_for(device: str, payload: bytes) -> str:
    """The device topic whose channel matches the payload's kind (``det`` if it has none)."""
    try:
        kind = decode(payload, max_bytes=len(payload)).kind
    except EvcError:
        kind = Kind.DETECTIONS
    return str(DeviceTopic(SITE, device, _CHANNEL_OF_KIND.get(kind, Channel.DETECTIONS)))


# -- the driver --------------------------------------------------------------------------------


@contextmanager
def fuzz_targets() -> Iterator[dict[str, Target]]:
    """Every target, fresh, with a temporary state folder for the device command handler."""
    with tempfile.TemporaryDirectory(prefix="evc-fuzz-") as state_dir:
        yield {
            "record": record_target, "batch": batch_target,
            "chunk_request": chunk_request_target, "chunk": chunk_target,
            "manifest": ManifestTarget(), "gateway_command": gateway_command_target,
            "device_command": DeviceCommandTarget(Path(state_dir)),
            "admit": AdmitTarget(), "cloud_ingest": CloudIngestTarget(),
        }


@dataclass(slots=True)
class TargetStats:
    """What one target made of its inputs."""

    inputs: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    crashes: int = 0
    seconds: float = 0.0
    slowest_s: float = 0.0


@dataclass(slots=True)
class Crash:
    """One distinct crash: where, its first input, and whether that input alone repeats it."""

    target: str
    error: str
    where: str
    index: int
    input_hex: str
    count: int = 1
    standalone: bool | None = None


@dataclass(slots=True)
class Report:
    """A fuzz run: counts per target and every distinct crash."""

    seed: int
    inputs: int = 0
    seconds: float = 0.0
    targets: dict[str, TargetStats] = field(default_factory=dict)
    crashes: dict[tuple[str, str, str], Crash] = field(default_factory=dict)
    record_rejects: Counter[str] = field(default_factory=Counter)
    stop_crashes: int = 0  # the gateway's pipeline crashed while stopping (no input of its own)

    @property
    def crash_count(self) -> int:
        """Inputs that crashed a target, over every target, and a crash at the gateway's stop."""
        return sum(stats.crashes for stats in self.targets.values()) + self.stop_crashes

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON values."""
        return {
            "seed": self.seed, "inputs": self.inputs, "seconds": round(self.seconds, 2),
            "crashes": self.crash_count,
            "targets": {name: {
                "inputs": s.inputs, "accepted": s.accepted,
                "rejected": dict(sorted(s.rejected.items())),
                "crashes": s.crashes, "seconds": round(s.seconds, 2),
                "slowest_ms": round(1000 * s.slowest_s, 1),
            } for name, s in self.targets.items()},
            "cloud_ingest_record_rejects": dict(sorted(self.record_rejects.items())),
            "distinct_crashes": [
                {"target": c.target, "error": c.error, "where": c.where, "count": c.count,
                 "index": c.index, "standalone": c.standalone, "input_hex": c.input_hex}
                for c in self.crashes.values()
            ],
        }

    def summary(self) -> str:
        """A table of the counts, for people."""
        rate = self.inputs / self.seconds if self.seconds else 0.0
        lines = [f"evc.fuzz: {self.inputs:,} inputs in {self.seconds:.1f} s ({rate:,.0f}/s), "
                 f"seed {self.seed}, {self.crash_count} crashes",
                 f"{'target':<16}{'inputs':>10}{'accepted':>10}{'rejected':>10}  rejects by reason"]
        for name, s in self.targets.items():
            reasons = ", ".join(f"{r}={n:,}" for r, n in sorted(s.rejected.items()))
            lines.append(f"{name:<16}{s.inputs:>10,}{s.accepted:>10,}"
                         f"{sum(s.rejected.values()):>10,}  {reasons}")
        if self.record_rejects:
            lines.append("records refused inside accepted uplink batches: " + ", ".join(
                f"{r}={n:,}" for r, n in sorted(self.record_rejects.items())))
        for crash in self.crashes.values():
            lines.append(f"CRASH x{crash.count} {crash.target}: {crash.error} at {crash.where} "
                         f"(input {crash.index}, alone: {crash.standalone}) "
                         f"{crash.input_hex[:160]}...")
        return "\n".join(lines)


@contextmanager
def _quiet_logs() -> Iterator[None]:
    """The code under test logs every rejection; a million warnings only slow the run."""
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def check(target: Target, name: str, data: bytes) -> str | None:
    """Run one input; raise on a crash, including a reason the target does not document."""
    reason = target(data)
    if reason is not None and reason not in KNOWN_REASONS[name]:
        raise InvariantError(f"undocumented rejection reason {reason!r}")
    return reason


def run(*, inputs: int, seed: int = 0, targets: Sequence[str] = TARGETS) -> Report:
    """Feed ``inputs`` generated inputs round-robin to ``targets``; count every outcome."""
    report = Report(seed=seed, targets={name: TargetStats() for name in targets})
    made = Inputs(seed)
    started = time.perf_counter()
    with _quiet_logs(), fuzz_targets() as live:
        for index in range(inputs):
            name = targets[index % len(targets)]
            data = made.make(name)
            _one(report, live, name, index, data)
        gateway = live.get("admit")
        if isinstance(gateway, AdmitTarget):
            _stop(report, gateway)
        cloud = live.get("cloud_ingest")
        if isinstance(cloud, CloudIngestTarget):
            report.record_rejects = cloud.record_rejects
    report.inputs = inputs
    report.seconds = time.perf_counter() - started
    return report


def _one(report: Report, live: dict[str, Target], name: str, index: int, data: bytes) -> None:
    stats = report.targets[name]
    stats.inputs += 1
    begin = time.perf_counter()
    try:
        reason = check(live[name], name, data)
    except Exception as exc:
        stats.crashes += 1
        _record_crash(report, name, index, data, exc)
    else:
        if reason is None:
            stats.accepted += 1
        else:
            stats.rejected[reason] += 1
    spent = time.perf_counter() - begin
    stats.seconds += spent
    stats.slowest_s = max(stats.slowest_s, spent)


def _stop(report: Report, gateway: AdmitTarget) -> None:
    """Stop the gateway's pipeline as a stopping daemon does: every window it still holds
    closes, and each summary must be valid too (a crash here is counted as input -1)."""
    try:
        gateway.close()
    except Exception as exc:
        report.stop_crashes += 1
        _record_crash(report, "admit", -1, b"", exc)


def _record_crash(report: Report, name: str, index: int, data: bytes, exc: Exception) -> None:
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    where = f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"
    key = (name, type(exc).__name__, where)
    if key in report.crashes:
        report.crashes[key].count += 1
        return
    crash = Crash(name, f"{type(exc).__name__}: {str(exc)[:200]}", where, index,
                  data[:4096].hex())
    if index < 0:
        report.crashes[key] = crash
        return
    with fuzz_targets() as fresh:
        try:
            check(fresh[name], name, data)
            crash.standalone = False
        except Exception:
            crash.standalone = True
    report.crashes[key] = crash


def write_corpus(directory: Path, *, seed: int = 0, per_target: int = 64) -> int:
    """Write generated inputs as files for libFuzzer (the first byte picks the target)."""
    directory.mkdir(parents=True, exist_ok=True)
    made = Inputs(seed)
    count = 0
    for number, name in enumerate(TARGETS):
        for i in range(per_target):
            data = bytes([number]) + made.make(name)
            (directory / f"{name}-{i:04d}").write_bytes(data)
            count += 1
    return count


def _atheris(libfuzzer_args: list[str]) -> int:
    """Coverage-guided fuzzing of every target with atheris (an optional dependency)."""
    try:
        atheris = importlib.import_module("atheris")
    except ImportError:
        print("atheris is not installed: pip install atheris", file=sys.stderr)
        return 2
    stack = fuzz_targets()
    live = stack.__enter__()

    def one(data: bytes) -> None:
        if data:
            name = TARGETS[data[0] % len(TARGETS)]
            check(live[name], name, data[1:])

    logging.disable(logging.CRITICAL)
    atheris.instrument_all()
    atheris.Setup([sys.argv[0], *libfuzzer_args], one)
    atheris.Fuzz()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m evc.fuzz``: exit 0 with no crash, 1 with one, 2 on a usage error."""
    parser = argparse.ArgumentParser(
        prog="python -m evc.fuzz", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs over all targets")
    parser.add_argument("--seed", type=int, default=0, help="seed of the input generator")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated targets")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--write-corpus", type=Path, metavar="DIR",
                        help="write generated seed inputs for --atheris to DIR and exit")
    parser.add_argument("--atheris", action="store_true",
                        help="coverage-guided run with atheris; later arguments go to libFuzzer")
    args, rest = parser.parse_known_args(argv)
    if args.atheris:
        return _atheris(rest)
    if rest:
        parser.error(f"unknown arguments: {rest}")
    if args.write_corpus:
        print(f"wrote {write_corpus(args.write_corpus, seed=args.seed)} inputs")
        return 0
    names = [n for n in args.targets.split(",") if n]
    unknown = sorted(set(names) - set(TARGETS))
    if unknown or args.inputs < 0:
        parser.error(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}")
    report = run(inputs=args.inputs, seed=args.seed, targets=names)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.summary())
    return 1 if report.crash_count else 0


if __name__ == "__main__":
    sys.exit(main())
