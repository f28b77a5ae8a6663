"""Record stores of the cloud: exactly-once storage keyed by the idempotency key and kind.

:class:`RecordStore` is the interface every backend implements (a PostgreSQL one will follow);
:class:`SqliteRecordStore` is the first. Inserting the same key twice stores it once and counts
the second as a duplicate, in the same transaction, so a redelivered batch is harmless.

A record is keyed by ``(site, origin, epoch, seq, kind)``: the EVENT record a gateway derives
from a frame carries that frame's ``(origin, epoch, seq)``, so both are stored side by side.

Beside the records, the same transaction keeps two small views for ``evc status``: ``devices``
(each device's newest heartbeat and newest birth or death) and ``gateways`` (when each gateway's
records last arrived). Both only move forward, so a redelivered old record never moves them
back. A device's records are ordered by ``(epoch, seq)``, not by ``ts_ms``: the key grows with
every record of a device by construction, while a Last Will's ``ts_ms`` is stamped when its
connection opens, before that connection's birth, and would lose to it.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from evc.errors import EvcError, WireError
from evc.wire import Kind, decode, map_from

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
# Each device's newest heartbeat and newest STATE record (birth or death), their fields as JSON.
# ``online`` is the newest STATE record's verdict (1 online, 0 offline, NULL none seen yet).
_DEVICES_SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    site TEXT NOT NULL,
    device TEXT NOT NULL,
    gateway TEXT NOT NULL,
    last_seen_ms INTEGER NOT NULL,
    online INTEGER,
    state_ms INTEGER,
    state_epoch INTEGER,
    state_seq INTEGER,
    state TEXT,
    heartbeat_ms INTEGER,
    heartbeat_epoch INTEGER,
    heartbeat_seq INTEGER,
    heartbeat TEXT,
    PRIMARY KEY (site, device)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS gateways (
    site TEXT NOT NULL,
    gateway TEXT NOT NULL,
    last_stored_ms INTEGER NOT NULL,
    last_record_ms INTEGER NOT NULL,
    heartbeat_epoch INTEGER,
    heartbeat_seq INTEGER,
    heartbeat TEXT,
    PRIMARY KEY (site, gateway)
) WITHOUT ROWID;
"""
# One statement per kind; the WHERE clause makes an older (or the same) record a no-op.
# last_seen_ms (for staleness) is the newest device clock seen, whatever the order.
_UPSERT = """
INSERT INTO devices (site, device, gateway, last_seen_ms, {columns})
VALUES (:site, :device, :gateway, :ts_ms, {values})
ON CONFLICT (site, device) DO UPDATE SET
    gateway = CASE WHEN excluded.last_seen_ms >= last_seen_ms
                   THEN excluded.gateway ELSE gateway END,
    last_seen_ms = MAX(last_seen_ms, excluded.last_seen_ms),
    {updates}
WHERE {prefix}_seq IS NULL OR (:epoch, :seq) > ({prefix}_epoch, {prefix}_seq)
"""
_HEARTBEAT_COLUMNS = ("heartbeat_ms", "heartbeat_epoch", "heartbeat_seq", "heartbeat")
_STATE_COLUMNS = ("online", "state_ms", "state_epoch", "state_seq", "state")
_GATEWAY_UPSERT = """
INSERT INTO gateways (site, gateway, last_stored_ms, last_record_ms) VALUES (?, ?, ?, ?)
ON CONFLICT (site, gateway) DO UPDATE SET
    last_stored_ms = MAX(last_stored_ms, excluded.last_stored_ms),
    last_record_ms = MAX(last_record_ms, excluded.last_record_ms)
"""
# Rebuilds the views of a store created before them, from the newest record of each kind per
# device.
_BACKFILL_DEVICES = """
SELECT site, origin, epoch, seq, kind, ts_ms, stored_ms, gateway, detections, payload FROM (
    SELECT *, ROW_NUMBER() OVER (
        PARTITION BY site, origin, kind ORDER BY epoch DESC, seq DESC) AS newest
    FROM records WHERE kind IN (2, 3)
) WHERE newest = 1
"""
_BACKFILL_GATEWAYS = """
INSERT OR IGNORE INTO gateways (site, gateway, last_stored_ms, last_record_ms)
SELECT site, gateway, MAX(stored_ms), MAX(ts_ms) FROM records GROUP BY site, gateway
"""
# A gateway's own heartbeat (origin = the gateway): its outbox depth, backlog age and links.
_GATEWAY_HEARTBEAT = """
UPDATE gateways SET heartbeat_epoch = :epoch, heartbeat_seq = :seq, heartbeat = :heartbeat
WHERE site = :site AND gateway = :gateway
  AND (heartbeat_seq IS NULL OR (:epoch, :seq) > (heartbeat_epoch, heartbeat_seq))
"""


def _upsert_sql(prefix: str, columns: tuple[str, ...]) -> str:
    return _UPSERT.format(
        columns=", ".join(columns), values=", ".join(f":{c}" for c in columns),
        updates=", ".join(f"{c} = excluded.{c}" for c in columns), prefix=prefix,
    )


_UPSERT_HEARTBEAT = _upsert_sql("heartbeat", _HEARTBEAT_COLUMNS)
_UPSERT_STATE = _upsert_sql("state", _STATE_COLUMNS)
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
class DeviceRow:
    """One device as the ``devices`` table holds it.

    Attributes:
        last_seen_ms: ``ts_ms`` (device clock) of its newest heartbeat or state record.
        online: what its newest state record said (birth True, death False), None if none seen.
        state_ms: ``ts_ms`` of that state record.
        heartbeat_ms: ``ts_ms`` of its newest heartbeat, None if none seen.
        heartbeat: that heartbeat's fields (``model``, ``model_state``, ``inference_ms_p50``, ...).
        state: the newest state record's fields (``state``, ``model``).
    """

    site: str
    device: str
    gateway: str
    last_seen_ms: int
    online: bool | None
    state_ms: int | None
    heartbeat_ms: int | None
    heartbeat: dict[str, Any]
    state: dict[str, Any]


@dataclass(frozen=True, slots=True)
class GatewayRow:
    """One gateway, known by the records it forwarded (its own birth and death stay on the
    cloud broker).

    Attributes:
        last_stored_ms: cloud clock when a batch of its records was last stored.
        last_record_ms: the newest ``ts_ms`` among its records (device clocks).
    """

    site: str
    gateway: str
    last_stored_ms: int
    last_record_ms: int
    heartbeat: dict[str, Any] = field(default_factory=dict)


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
            if key == _PRIMARY_KEY:
                self._create_views()
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

    def _create_views(self) -> None:
        """Create the devices and gateways tables, filling them from the records if new."""
        tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master")}
        if {"devices", "gateways"} <= tables:
            return
        # One transaction: a crash half way leaves no view that the next open would not fill.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for statement in _DEVICES_SCHEMA.split(";"):
                if statement.strip():
                    self._db.execute(statement)
            if "devices" not in tables:
                rows = self._db.execute(_BACKFILL_DEVICES).fetchall()
                _update_devices(self._db, [IncomingRecord(*row) for row in rows])
            if "gateways" not in tables:
                self._db.execute(_BACKFILL_GATEWAYS)
            self._db.execute("COMMIT")
        except sqlite3.Error:
            self._db.execute("ROLLBACK")
            raise

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
                # Redelivered records are applied again: harmless, the views only move forward.
                _update_devices(self._db, records)
                _update_gateways(self._db, records)
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

    def devices(self, *, site: str | None = None) -> list[DeviceRow]:
        """Every device the store has heard from (or only ``site``'s), by site and id.

        Raises:
            StoreError: the store cannot be read.
        """
        query = (
            "SELECT site, device, gateway, last_seen_ms, online, state_ms, heartbeat_ms,"
            " heartbeat, state FROM devices WHERE (:site IS NULL OR site = :site)"
            " ORDER BY site, device"
        )
        rows = self._read(query, {"site": site}, what="devices")
        return [
            DeviceRow(
                site, device, gateway, last_seen_ms, None if online is None else bool(online),
                state_ms, heartbeat_ms, _fields(heartbeat), _fields(state),
            )
            for site, device, gateway, last_seen_ms, online, state_ms, heartbeat_ms, heartbeat,
            state in rows
        ]

    def gateways(self, *, site: str | None = None) -> list[GatewayRow]:
        """Every gateway whose records reached the store (or only ``site``'s).

        Raises:
            StoreError: the store cannot be read.
        """
        query = (
            "SELECT site, gateway, last_stored_ms, last_record_ms, heartbeat FROM gateways"
            " WHERE (:site IS NULL OR site = :site) ORDER BY site, gateway"
        )
        rows = self._read(query, {"site": site}, what="gateways")
        return [
            GatewayRow(
                site=row[0], gateway=row[1], last_stored_ms=row[2], last_record_ms=row[3],
                heartbeat=_fields(row[4]),
            )
            for row in rows
        ]

    def _read(self, query: str, args: dict[str, Any], *, what: str) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self._db.execute(query, args).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"cannot read {what}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _update_devices(db: sqlite3.Connection, records: Sequence[IncomingRecord]) -> None:
    """Apply the HEARTBEAT and STATE records among ``records`` to the devices table."""
    for record in records:
        if record.kind not in (Kind.HEARTBEAT, Kind.STATE) or record.origin == record.gateway:
            continue  # a gateway's own heartbeat describes the gateway: `_update_gateways`
        fields = _map_of(record)
        if fields is None:
            continue
        if record.kind == Kind.HEARTBEAT:
            db.execute(_UPSERT_HEARTBEAT, _key_args(record) | {"heartbeat": json.dumps(fields)})
        else:
            state = fields.get("state")
            online = {"online": 1, "offline": 0}.get(state) if isinstance(state, str) else None
            args = _key_args(record) | {"state": json.dumps(fields), "online": online}
            db.execute(_UPSERT_STATE, args)


def _key_args(record: IncomingRecord) -> dict[str, Any]:
    ts, epoch, seq = record.ts_ms, record.epoch, record.seq
    prefix = "heartbeat" if record.kind == Kind.HEARTBEAT else "state"
    return {
        "site": record.site, "device": record.origin, "gateway": record.gateway, "ts_ms": ts,
        "epoch": epoch, "seq": seq, f"{prefix}_ms": ts, f"{prefix}_epoch": epoch,
        f"{prefix}_seq": seq,
    }


def _map_of(record: IncomingRecord) -> dict[str, Any] | None:
    """The record's field map, or None if its payload is not a field map.

    The ingest validated the record already; a store fed by other code must still not fail a
    whole batch over one record the views cannot read.
    """
    try:
        return dict(map_from(decode(record.payload, max_bytes=len(record.payload))))
    except WireError:
        return None


def _update_gateways(db: sqlite3.Connection, records: Sequence[IncomingRecord]) -> None:
    """Move each gateway's newest arrival forward (one row per gateway of the batch)."""
    newest: dict[tuple[str, str], tuple[int, int]] = {}
    for r in records:
        stored, ts = newest.get((r.site, r.gateway), (r.stored_ms, r.ts_ms))
        newest[(r.site, r.gateway)] = (max(stored, r.stored_ms), max(ts, r.ts_ms))
    db.executemany(
        _GATEWAY_UPSERT,
        [(site, gateway, stored, ts) for (site, gateway), (stored, ts) in newest.items()],
    )
    for r in records:
        if r.kind == Kind.HEARTBEAT and r.origin == r.gateway:
            fields = _map_of(r)
            if fields is not None:
                db.execute(_GATEWAY_HEARTBEAT, {
                    "site": r.site, "gateway": r.gateway, "epoch": r.epoch, "seq": r.seq,
                    "heartbeat": json.dumps(fields),
                })


def _fields(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    value = json.loads(text)
    return value if isinstance(value, dict) else {}
