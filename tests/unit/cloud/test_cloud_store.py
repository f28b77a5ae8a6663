"""The SQLite record store: exactly once, and never stuck after a failed insert."""

from __future__ import annotations

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
