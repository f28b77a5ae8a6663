"""The SQLite record store: exactly once, and never stuck after a failed insert."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from evc.cloud import IncomingRecord, SqliteRecordStore, StoreError


def record(seq: int, *, epoch: int = 1) -> IncomingRecord:
    return IncomingRecord(
        site="s", origin="cam-1", epoch=epoch, seq=seq, kind=1, ts_ms=1, stored_ms=2,
        gateway="gw", detections=3, payload=b"x",
    )


def test_redelivered_records_are_stored_once_and_counted(tmp_path: Path) -> None:
    store = SqliteRecordStore(tmp_path / "r.db")
    assert store.insert([record(1), record(2)]).stored == 2
    result = store.insert([record(2), record(3), record(3)])
    assert (result.stored, result.duplicates) == (1, 2)
    stats = store.stats()
    assert (stats.records, stats.detections, stats.duplicates) == (3, 9, 2)
    assert stats.by_device == {"s/cam-1": 3}


def test_a_failed_insert_rolls_back_and_the_store_keeps_working(tmp_path: Path) -> None:
    store = SqliteRecordStore(tmp_path / "r.db")
    with pytest.raises(StoreError):
        store.insert([record(1), record(2, epoch=2**63)])  # past SQLite's int64
    assert store.stats().records == 0  # nothing of the failed batch
    assert store.insert([record(1)]).stored == 1


def test_stats_of_a_closed_store_raise_a_typed_error(tmp_path: Path) -> None:
    store = SqliteRecordStore(tmp_path / "r.db")
    store.close()
    with pytest.raises(StoreError):
        store.stats()


def test_a_frame_and_its_events_share_a_key_and_are_two_records(tmp_path: Path) -> None:
    store = SqliteRecordStore(tmp_path / "r.db")
    event = IncomingRecord(
        site="s", origin="cam-1", epoch=1, seq=1, kind=6, ts_ms=1, stored_ms=2, gateway="gw",
        detections=0, payload=b"e",
    )
    assert store.insert([record(1), event]).stored == 2
    assert store.insert([record(1), event]).duplicates == 2  # redelivery: both deduplicated
    stats = store.stats()
    assert (stats.records, stats.by_kind) == (2, {1: 1, 6: 1})
    assert stats.by_device == {"s/cam-1": 2}


def test_a_store_keyed_without_kind_is_refused_with_advice(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path)) as db:
        db.execute(
            "CREATE TABLE records (site TEXT, origin TEXT, epoch INTEGER, seq INTEGER,"
            " kind INTEGER, ts_ms INTEGER, stored_ms INTEGER, gateway TEXT,"
            " detections INTEGER, payload BLOB, PRIMARY KEY (site, origin, epoch, seq))"
        )
    with pytest.raises(StoreError, match="Move it aside"):
        SqliteRecordStore(path)
