"""Seeds: valid messages of every target, made by the encoders, for the mutators to start from."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from evc.fuzz.contract import PIPELINE, SITE, fuzz_signing_key
from evc.models.manifest import Compatibility, Manifest
from evc.wire import (
    Alert,
    BatchEncoding,
    Kind,
    Sample,
    SummaryFrame,
    crops,
    encode_alerts,
    encode_batch,
    encode_detections,
    encode_events,
    encode_map,
    encode_sample,
    encode_summary,
    whole_frame,
)
from evc.wire.delivery import encode_chunk, encode_chunk_error, encode_chunk_request


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


def sample_record(
    rng: np.random.Generator, *, origin: str, seq: int, reason: str, crop: bool
) -> bytes:
    """A SAMPLE record of a small random image: whole frame with truth, or crops without."""
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
        sample_record(rng, origin=origin, seq=8, reason="near_threshold", crop=False),
        sample_record(rng, origin=origin, seq=9, reason="random", crop=True),
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
        PIPELINE, [], [{"type": "min_detections", "count": 2}],
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
