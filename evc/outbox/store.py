"""A crash-safe SQLite store-and-forward queue.

The outbox is the heart of EVC's "no accepted record is lost" guarantee. A record is committed
(WAL, one transaction per batch) before the caller acknowledges it upstream, and deleted only
when the next hop has acknowledged it (:meth:`Outbox.ack`). Records that must go are removed
by a configured policy and counted by reason in the ``drops`` table, which survives restarts.

One :class:`Outbox` may be shared by threads: every operation holds an internal lock, and each
is short (a single statement or transaction).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from evc.errors import OutboxError
from evc.outbox.policy import DropPolicy, DropReason, Priority
from evc.outbox.share import DeficitRoundRobin

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    priority INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    size INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS records_by_priority ON records (priority, id);
CREATE INDEX IF NOT EXISTS records_by_expiry ON records (expires_ms);
CREATE TABLE IF NOT EXISTS drops (
    reason TEXT NOT NULL,
    priority INTEGER NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (reason, priority)
);
CREATE TABLE IF NOT EXISTS state (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
"""
_NEVER_MS = 2**62
# Each row costs its payload, its topic and roughly this much of SQLite page and index space.
_ROW_OVERHEAD_BYTES = 32

DropListener = Callable[[DropReason, Priority, int], None]


def now_ms() -> int:
    """Wall-clock milliseconds: TTLs are wall-clock deadlines so they survive restarts."""
    return time.time_ns() // 1_000_000


@dataclass(frozen=True, slots=True)
class NewRecord:
    """A record to be stored: where it goes, what it is, and how it may be dropped."""

    topic: str
    payload: bytes
    priority: Priority = Priority.DETECTION
    ttl_s: float | None = None

    @property
    def size(self) -> int:
        return len(self.payload) + len(self.topic) + _ROW_OVERHEAD_BYTES


@dataclass(frozen=True, slots=True)
class StoredRecord:
    """A record read back from the outbox for forwarding."""

    id: int
    priority: Priority
    created_ms: int
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """A snapshot of the backlog."""

    records: int
    bytes: int
    oldest_created_ms: int | None
    drops: dict[str, int]


class Outbox:
    """A SQLite-backed FIFO per priority class with a byte cap, TTLs and counted drops.

    Args:
        path: database file; created if missing. A file that SQLite cannot read is moved aside
            (``<name>.corrupt-<unix time>``) and reported, never deleted.
        max_bytes: cap on the stored records, counted as payload + topic + row overhead.
        policy: what to drop when a new record would pass the cap.
        default_ttl_s: time-to-live of records that do not set one (``None``: no limit).
        ttl_s_by_priority: per class, the time-to-live of records that do not set one;
            classes left out use ``default_ttl_s`` (a ``None`` value: no limit).
        weights: per class, its share of each forwarded batch (see :mod:`evc.outbox.share`);
            classes left out keep their default weight.
        synchronous: SQLite ``synchronous`` level. ``NORMAL`` survives a killed process;
            ``FULL`` also survives power loss, at the price of an fsync per commit.
        on_drop: called with (reason, priority, count) for every drop, for metrics.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 1 << 30,
        policy: DropPolicy = DropPolicy.EVICT_LOWEST_OLDEST,
        default_ttl_s: float | None = None,
        ttl_s_by_priority: Mapping[Priority, float | None] | None = None,
        weights: Mapping[Priority, int] | None = None,
        synchronous: str = "NORMAL",
        on_drop: DropListener | None = None,
    ) -> None:
        if max_bytes <= 0:
            raise OutboxError("max_bytes must be positive")
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise OutboxError(f"synchronous must be NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.policy = policy
        self.default_ttl_s = default_ttl_s
        self.ttl_s_by_priority = dict(ttl_s_by_priority or {})
        self._share = DeficitRoundRobin(weights)
        self.moved_aside: Path | None = None
        self._on_drop = on_drop
        self._lock = threading.Lock()
        self._db = self._open(synchronous.upper())
        self._bytes = self._scalar("SELECT COALESCE(SUM(size), 0) FROM records")

    # -- opening -------------------------------------------------------------------------------

    def _open(self, synchronous: str) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            return self._connect(synchronous)
        except sqlite3.DatabaseError as exc:
            if not _is_corruption(exc):
                raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc
            self.moved_aside = _move_aside(self.path)
            log.error(
                "outbox %s is unreadable (%s); moved it aside to %s and started empty",
                self.path, exc, self.moved_aside,
            )
        try:
            return self._connect(synchronous)
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot open outbox {self.path}: {exc}") from exc

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.execute("PRAGMA busy_timeout=10000")
            (check,) = db.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise _CorruptDatabaseError(f"quick_check: {check}")
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def close(self) -> None:
        """Close the database. Everything committed stays on disk."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- writing -------------------------------------------------------------------------------

    def put(
        self, records: Sequence[NewRecord], *, state: Mapping[str, bytes] | None = None
    ) -> int:
        """Store records durably in one transaction; return how many were inserted.

        Records refused on arrival (too large, or ``reject_new`` with the outbox full) and rows
        evicted to make room are counted as drops. Afterwards the caller may acknowledge every
        record upstream: each one is either durable or deliberately dropped and counted.

        ``state`` (key -> bytes, e.g. operator snapshots) is saved in the same transaction, so
        what a caller remembers is durable exactly when the records derived from it are; read
        it back with :meth:`load_state`.
        """
        if not records and not state:
            return 0
        with self._lock, self._transaction():
            if state:
                self._db.executemany(
                    "INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)", state.items()
                )
            rows, refused = self._admit(records)
            self._db.executemany(
                "INSERT INTO records (priority, created_ms, expires_ms, size, topic, payload)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            self._bytes += sum(row[3] for row in rows)
            evicted = self._evict_over_cap()
            for reason, priority in refused:
                self._count_drop(reason, priority, 1)
        self._notify([(r, p, 1) for r, p in refused] + evicted)
        return len(rows)

    def _admit(
        self, records: Sequence[NewRecord]
    ) -> tuple[list[tuple[int, int, int, int, str, bytes]], list[tuple[DropReason, Priority]]]:
        """Rows to insert and records refused on arrival (under the lock: reads ``_bytes``)."""
        now = now_ms()
        rows: list[tuple[int, int, int, int, str, bytes]] = []
        refused: list[tuple[DropReason, Priority]] = []
        incoming = 0
        for record in records:
            size = record.size
            if size > self.max_bytes:
                refused.append((DropReason.TOO_LARGE, record.priority))
                continue
            if (
                self.policy is DropPolicy.REJECT_NEW
                and self._bytes + incoming + size > self.max_bytes
            ):
                refused.append((DropReason.REJECTED, record.priority))
                continue
            ttl = record.ttl_s if record.ttl_s is not None else self.ttl_for(record.priority)
            expires = now + int(ttl * 1000) if ttl is not None else _NEVER_MS
            rows.append((record.priority, now, expires, size, record.topic, record.payload))
            incoming += size
        return rows, refused

    def load_state(self, key: str) -> bytes | None:
        """The value last saved under ``key`` by :meth:`put`, or None."""
        with self._lock, _reading("state"):
            row = self._db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def ttl_for(self, priority: Priority) -> float | None:
        """Time-to-live given to records of ``priority`` that do not set their own."""
        return self.ttl_s_by_priority.get(priority, self.default_ttl_s)

    def _evict_over_cap(self) -> list[tuple[DropReason, Priority, int]]:
        """Delete lowest-priority, oldest rows until under the cap (inside a transaction)."""
        evicted: list[tuple[DropReason, Priority, int]] = []
        while self._bytes > self.max_bytes:
            priority = self._scalar("SELECT MIN(priority) FROM records")
            rows = self._db.execute(
                "SELECT id, size FROM records WHERE priority = ? ORDER BY id LIMIT 1000",
                (priority,),
            ).fetchall()
            freed, last_id, count = 0, 0, 0
            for row_id, size in rows:
                freed, last_id, count = freed + size, row_id, count + 1
                if self._bytes - freed <= self.max_bytes:
                    break
            self._db.execute(
                "DELETE FROM records WHERE priority = ? AND id <= ?", (priority, last_id)
            )
            self._bytes -= freed
            self._count_drop(DropReason.EVICTED, Priority(priority), count)
            evicted.append((DropReason.EVICTED, Priority(priority), count))
        return evicted

    def ack(self, ids: Iterable[int]) -> None:
        """Delete records the next hop has acknowledged. Unknown ids are ignored."""
        id_list = list(ids)
        if not id_list:
            return
        with self._lock, self._transaction():
            for start in range(0, len(id_list), 500):
                chunk = id_list[start : start + 500]
                marks = ",".join("?" * len(chunk))
                # Only "?" placeholders are formatted into the SQL; the ids are bound parameters.
                freed = self._scalar(
                    f"SELECT COALESCE(SUM(size), 0) FROM records WHERE id IN ({marks})",  # noqa: S608
                    chunk,
                )
                self._db.execute(f"DELETE FROM records WHERE id IN ({marks})", chunk)  # noqa: S608
                self._bytes -= freed

    def expire(self, now: int | None = None) -> int:
        """Drop records past their time-to-live; return how many went."""
        deadline = now_ms() if now is None else now
        with self._lock, self._transaction():
            groups = self._db.execute(
                "SELECT priority, COUNT(*), SUM(size) FROM records WHERE expires_ms <= ?"
                " GROUP BY priority",
                (deadline,),
            ).fetchall()
            if not groups:
                return 0
            self._db.execute("DELETE FROM records WHERE expires_ms <= ?", (deadline,))
            drops = []
            for priority, count, size in groups:
                self._bytes -= size
                self._count_drop(DropReason.EXPIRED, Priority(priority), count)
                drops.append((DropReason.EXPIRED, Priority(priority), count))
        self._notify(drops)
        return sum(count for _, _, count in drops)

    # -- reading -------------------------------------------------------------------------------

    def peek(
        self,
        *,
        after: dict[Priority, int] | None = None,
        max_records: int = 500,
        max_bytes: int = 256 * 1024,
    ) -> list[StoredRecord]:
        """Return the next records to forward, shared between the classes by weight.

        Each class with pending records gets about its weight's share of the payload bytes
        over successive peeks (deficit round robin), so higher classes drain first and no
        class starves. Within a class records come oldest first; the result is ordered by
        class, highest first, then by age.

        Args:
            after: per priority, the highest id already handed out and not yet acknowledged;
                rows up to it are skipped so in-flight records are not sent twice.
            max_records: at most this many records.
            max_bytes: at most about this many payload bytes (at least one record is returned).
        """
        cursors = after or {}
        out: list[StoredRecord] = []
        with self._lock, _reading("peek"):
            sizes = {
                priority: self._pending_sizes(priority, cursors.get(priority, 0), max_records + 1)
                for priority in Priority
            }
            counts = self._share.select(sizes, max_records=max_records, max_bytes=max_bytes)
            for priority in sorted(counts, reverse=True):
                rows = self._db.execute(
                    "SELECT id, created_ms, topic, payload FROM records"
                    " WHERE priority = ? AND id > ? ORDER BY id LIMIT ?",
                    (priority, cursors.get(priority, 0), counts[priority]),
                )
                out.extend(
                    StoredRecord(row_id, priority, created, topic, payload)
                    for row_id, created, topic, payload in rows
                )
        return out

    def _pending_sizes(self, priority: Priority, after: int, limit: int) -> list[int]:
        """Payload sizes of the oldest ``limit`` rows of a class after ``after``."""
        # One indexed range scan per class; length() of a blob does not read its content.
        rows = self._db.execute(
            "SELECT length(payload) FROM records WHERE priority = ? AND id > ? ORDER BY id LIMIT ?",
            (int(priority), after, limit),
        )
        return [size for (size,) in rows]

    def stats(self) -> OutboxStats:
        """Backlog size, age and drop counts."""
        with self._lock, _reading("stats"):
            count, oldest = self._db.execute(
                "SELECT COUNT(*), MIN(created_ms) FROM records"
            ).fetchone()
            drops = dict(
                self._db.execute("SELECT reason, SUM(count) FROM drops GROUP BY reason").fetchall()
            )
            return OutboxStats(count, self._bytes, oldest, drops)

    def drop_counts(self) -> dict[tuple[str, int], int]:
        """Every drop since the outbox was created, by (reason, priority)."""
        with self._lock, _reading("drop_counts"):
            rows = self._db.execute("SELECT reason, priority, count FROM drops").fetchall()
        return {(reason, priority): count for reason, priority, count in rows}

    def __len__(self) -> int:
        with self._lock, _reading("count"):
            return self._scalar("SELECT COUNT(*) FROM records")

    @property
    def bytes(self) -> int:
        """Bytes currently stored, as counted against ``max_bytes``."""
        return self._bytes

    # -- internals -----------------------------------------------------------------------------

    def _scalar(self, sql: str, params: Sequence[object] = ()) -> int:
        (value,) = self._db.execute(sql, params).fetchone()
        return int(value) if value is not None else 0

    def _count_drop(self, reason: DropReason, priority: Priority, count: int) -> None:
        if count:
            self._db.execute(
                "INSERT INTO drops (reason, priority, count) VALUES (?, ?, ?)"
                " ON CONFLICT (reason, priority) DO UPDATE SET count = count + excluded.count",
                (reason.value, int(priority), count),
            )

    def _notify(self, drops: list[tuple[DropReason, Priority, int]]) -> None:
        if self._on_drop:
            for reason, priority, count in drops:
                if count:
                    self._on_drop(reason, priority, count)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db, on_rollback=self._recount_bytes)

    def _recount_bytes(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._bytes = self._scalar("SELECT COALESCE(SUM(size), 0) FROM records")


@contextmanager
def _reading(what: str) -> Iterator[None]:
    """Turn sqlite3 errors of a read (a closed or vanished database) into OutboxError."""
    try:
        yield
    except sqlite3.Error as exc:
        raise OutboxError(f"outbox {what} failed: {exc}") from exc


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error and wrapped in :class:`OutboxError`.

    After a rollback ``on_rollback`` runs, so that in-memory accounting made inside the
    transaction (the byte total) is read back from what the database really holds.
    """

    def __init__(self, db: sqlite3.Connection, on_rollback: Callable[[], None]) -> None:
        self._db = db
        self._on_rollback = on_rollback

    def __enter__(self) -> None:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise OutboxError(f"cannot start a transaction: {exc}") from exc

    def __exit__(self, exc_type: object, exc: object, _tb: object) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.Error as commit_exc:
                self._rollback()
                raise OutboxError(f"commit failed: {commit_exc}") from commit_exc
        self._rollback()
        if isinstance(exc, sqlite3.Error):
            raise OutboxError(f"outbox operation failed: {exc}") from exc

    def _rollback(self) -> None:
        # SQLite may already have rolled back by itself (a full disk does that).
        with contextlib.suppress(sqlite3.Error):
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        self._on_rollback()


class _CorruptDatabaseError(sqlite3.DatabaseError):
    """The database opened but failed its integrity check."""


# SQLITE_CORRUPT and SQLITE_NOTADB; a locked or unreadable file is not corrupt and is never moved.
_CORRUPTION_CODES = (11, 26)


def _is_corruption(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, _CorruptDatabaseError) or code in _CORRUPTION_CODES


def _move_aside(path: Path) -> Path:
    """Rename an unreadable database (and its WAL files) so nothing is deleted."""
    target = path.with_name(f"{path.name}.corrupt-{time.time_ns()}")
    for suffix in ("", "-wal", "-shm"):
        source = Path(f"{path}{suffix}")
        if source.exists():
            source.rename(Path(f"{target}{suffix}"))
    return target
