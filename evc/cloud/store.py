"""Record stores of the cloud: exactly-once storage keyed by the idempotency key and kind.

:class:`RecordStore` is the interface every backend implements (a PostgreSQL one will follow);
:class:`SqliteRecordStore` is the first. Inserting the same key twice stores it once and counts
the second as a duplicate, in the same transaction, so a redelivered batch is harmless.

A record is keyed by ``(site, origin, epoch, seq, kind)``: the EVENT record a gateway derives
from a frame carries that frame's ``(origin, epoch, seq)``, so both are stored side by side.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from evc.errors import EvcError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    site TEXT NOT NULL,
    origin TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    kind INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    stored_ms INTEGER NOT NULL,
    gateway TEXT NOT NULL,
    detections INTEGER NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (site, origin, epoch, seq, kind)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""
_PRIMARY_KEY = ("site", "origin", "epoch", "seq", "kind")


class StoreError(EvcError):
    """The record store could not complete an operation."""


@dataclass(frozen=True, slots=True)
class IncomingRecord:
    """A validated record on its way into the store."""

    site: str
    origin: str
    epoch: int
    seq: int
    kind: int
    ts_ms: int
    stored_ms: int
    gateway: str
    detections: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A stored record as :meth:`SqliteRecordStore.iter_records` reads it back."""

    site: str
    origin: str
    epoch: int
    seq: int
    ts_ms: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class InsertResult:
    """What one insert did."""

    stored: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class StoreStats:
    """Counts for `evc cloud stats`."""

    records: int
    detections: int
    duplicates: int
    by_device: dict[str, int] = field(default_factory=dict)
    by_kind: dict[int, int] = field(default_factory=dict)


class RecordStore(Protocol):
    """What the cloud ingest needs from a store."""

    def insert(self, records: Sequence[IncomingRecord]) -> InsertResult:
        """Store records not yet stored, in one transaction; count the others as duplicates."""
        ...

    def stats(self) -> StoreStats:
        """Counts of what is stored."""
        ...

    def close(self) -> None:
        """Release the store."""
        ...


class SqliteRecordStore:
    """A :class:`RecordStore` in one SQLite file (WAL)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=10000")
            self._db.executescript(_SCHEMA)
            key = self._primary_key()
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open record store {self.path}: {exc}") from exc
        if key != _PRIMARY_KEY:
            self._db.close()
            raise StoreError(
                f"record store {self.path} keys records by {', '.join(key)}, not by "
                f"{', '.join(_PRIMARY_KEY)}: it predates EVENT records. Move it aside (a new "
                "file gets the new schema) and, to keep its records, copy every row of its "
                "records table into the new file's"
            )

    def _primary_key(self) -> tuple[str, ...]:
        """The records table's primary key columns, in key order."""
        rows = self._db.execute("PRAGMA table_info(records)").fetchall()
        # Row: (cid, name, type, notnull, default, pk); pk is the 1-based position in the key.
        return tuple(str(row[1]) for row in sorted(rows, key=lambda row: row[5]) if row[5])

    def insert(self, records: Sequence[IncomingRecord]) -> InsertResult:
        if not records:
            return InsertResult(0, 0)
        rows = [
            (r.site, r.origin, r.epoch, r.seq, r.kind, r.ts_ms, r.stored_ms, r.gateway,
             r.detections, r.payload)
            for r in records
        ]
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                before = self._db.total_changes
                self._db.executemany(
                    "INSERT OR IGNORE INTO records VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows
                )
                stored = self._db.total_changes - before
                duplicates = len(rows) - stored
                if duplicates:
                    self._db.execute(
                        "INSERT INTO counters VALUES ('duplicates', ?) ON CONFLICT (name)"
                        " DO UPDATE SET value = value + excluded.value",
                        (duplicates,),
                    )
                self._db.execute("COMMIT")
            except (sqlite3.Error, OverflowError) as exc:
                # Whatever failed, never leave the transaction open: the next insert would
                # fail with "cannot start a transaction within a transaction" forever.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise StoreError(f"insert of {len(rows)} records failed: {exc}") from exc
        return InsertResult(stored, duplicates)

    def stats(self) -> StoreStats:
        with self._lock:
            try:
                return self._stats()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read store statistics: {exc}") from exc

    def _stats(self) -> StoreStats:
        records, detections = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(detections), 0) FROM records"
        ).fetchone()
        row = self._db.execute(
            "SELECT value FROM counters WHERE name = 'duplicates'"
        ).fetchone()
        by_device = {
            f"{site}/{origin}": count
            for site, origin, count in self._db.execute(
                "SELECT site, origin, COUNT(*) FROM records GROUP BY site, origin"
            )
        }
        by_kind = dict(self._db.execute("SELECT kind, COUNT(*) FROM records GROUP BY kind"))
        return StoreStats(records, detections, row[0] if row else 0, by_device, by_kind)

    def iter_records(
        self, *, kind: int, site: str | None = None, since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> Iterator[StoredRecord]:
        """Stored records of one ``kind``, oldest first (by ``ts_ms``, then key).

        Args:
            kind: the record kind (``Kind`` value), e.g. 4 for SAMPLE.
            site: only this site's records, or every site's.
            since_ms: only records with ``ts_ms >= since_ms``.
            until_ms: only records with ``ts_ms < until_ms``.

        Raises:
            StoreError: the store cannot be read.
        """
        # NULL parameters switch a filter off, so the query text never varies.
        query = (
            "SELECT site, origin, epoch, seq, ts_ms, payload FROM records WHERE kind = :kind"
            " AND (:site IS NULL OR site = :site)"
            " AND (:since IS NULL OR ts_ms >= :since) AND (:until IS NULL OR ts_ms < :until)"
            " ORDER BY ts_ms, site, origin, epoch, seq"
        )
        args = {"kind": kind, "site": site, "since": since_ms, "until": until_ms}
        with self._lock:
            try:
                rows = self._db.execute(query, args).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read records of kind {kind}: {exc}") from exc
        # Rows are fetched under the lock, then yielded, so a slow consumer never holds it.
        for row in rows:
            yield StoredRecord(*row)

    def close(self) -> None:
        with self._lock:
            self._db.close()
