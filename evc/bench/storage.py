"""Benchmarks without a network: frame sizes, the outbox, and plain SQLite beside it."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from evc.bench import frames
from evc.outbox import NewRecord, Outbox, Priority

# The gateway commits what one intake batch holds (ingest.max_batch, 200 by default) and its
# forwarder reads 500 rows per uplink message (forward.batch_max_records).
ENQUEUE_BATCH = 200
DRAIN_BATCH = 500
DEVICES = 8


def wire_sizes() -> dict[str, float]:
    """Bytes of the reference 10-detection frame, as EVC sends it and as readable JSON."""
    wire = len(frames.sample_frame())
    text = len(frames.sample_frame_json())
    per = frames.DETECTIONS_PER_FRAME
    return {
        "wire_frame_bytes": wire,
        "json_frame_bytes": text,
        "wire_bytes_per_detection": wire / per,
        "json_bytes_per_detection": text / per,
    }


def _records(count: int) -> list[NewRecord]:
    body = frames.detection_body()
    topics = [frames.device_topic(frames.SITE, n) for n in range(DEVICES)]
    return [
        NewRecord(topics[i % DEVICES], frames.frame(
            origin=frames.device_id(i % DEVICES), epoch=frames.EPOCH, seq=i // DEVICES + 1,
            ts_ms=frames.TS_MS + i, body=body,
        ), Priority.DETECTION)
        for i in range(count)
    ]


def _chunks(records: list[NewRecord], size: int) -> Iterator[list[NewRecord]]:
    for start in range(0, len(records), size):
        yield records[start : start + size]


def outbox_enqueue(path: Path, count: int) -> float:
    """Records/s of :meth:`Outbox.put` in batches of :data:`ENQUEUE_BATCH` frames."""
    batches = list(_chunks(_records(count), ENQUEUE_BATCH))
    with Outbox(path) as outbox:
        started = time.perf_counter()
        for batch in batches:
            outbox.put(batch)
        return count / (time.perf_counter() - started)


def outbox_drain(path: Path) -> float:
    """Records/s of peek (:data:`DRAIN_BATCH` rows) + ack until the outbox at ``path`` is empty."""
    with Outbox(path) as outbox:
        drained = 0
        started = time.perf_counter()
        while rows := outbox.peek(max_records=DRAIN_BATCH):
            outbox.ack(row.id for row in rows)
            drained += len(rows)
        return drained / (time.perf_counter() - started)


def _sqlite(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE IF NOT EXISTS q (id INTEGER PRIMARY KEY, topic TEXT, payload BLOB)")
    return db


def sqlite_insert(path: Path, count: int) -> float:
    """Baseline: rows/s of a bare executemany INSERT of the same rows, same batches, same WAL."""
    batches = [
        [(r.topic, r.payload) for r in batch]
        for batch in _chunks(_records(count), ENQUEUE_BATCH)
    ]
    db = _sqlite(path)
    try:
        started = time.perf_counter()
        for batch in batches:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO q (topic, payload) VALUES (?, ?)", batch)
            db.execute("COMMIT")
        return count / (time.perf_counter() - started)
    finally:
        db.close()


def sqlite_drain(path: Path) -> float:
    """Baseline: rows/s of SELECT the 500 oldest + DELETE by id range until the table is empty."""
    db = _sqlite(path)
    try:
        drained = 0
        started = time.perf_counter()
        while rows := db.execute(
            "SELECT id, topic, payload FROM q ORDER BY id LIMIT ?", (DRAIN_BATCH,)
        ).fetchall():
            db.execute("BEGIN IMMEDIATE")
            db.execute("DELETE FROM q WHERE id <= ?", (rows[-1][0],))
            db.execute("COMMIT")
            drained += len(rows)
        return drained / (time.perf_counter() - started)
    finally:
        db.close()
