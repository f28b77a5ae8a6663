"""Unit tests of the SQLite outbox: order, cursors, caps, drop policies, TTLs and durability."""

from __future__ import annotations

import functools
import sqlite3
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from evc.errors import OutboxError
from evc.outbox import DropPolicy, DropReason, NewRecord, Outbox, Priority, StoredRecord
from evc.outbox import store as store_module

TOPIC = "evc/s/dev/d/det"  # 15 characters: with 32 bytes of overhead a row costs payload + 47
ROW = 100  # the size of a row made by rec() unless told otherwise
Drop = tuple[DropReason, Priority, int]


def rec(
    name: str, priority: Priority = Priority.DETECTION, *, size: int = ROW,
    ttl_s: float | None = None,
) -> NewRecord:
    """A record whose payload starts with ``name`` and whose counted size is ``size``."""
    payload = name.encode().ljust(size - len(TOPIC) - 32, b".")
    record = NewRecord(TOPIC, payload, priority, ttl_s)
    assert record.size == size
    return record


def names(records: list[StoredRecord]) -> list[str]:
    return [r.payload.rstrip(b".").decode() for r in records]


def everything(outbox: Outbox) -> list[StoredRecord]:
    return outbox.peek(max_records=10**6, max_bytes=1 << 40)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


@pytest.fixture
def drops() -> list[Drop]:
    return []


@pytest.fixture
def outbox(db_path: Path, drops: list[Drop]) -> Iterator[Outbox]:
    with Outbox(db_path, on_drop=lambda *drop: drops.append(drop)) as ob:
        yield ob


def capped(
    db_path: Path, drops: list[Drop], max_bytes: int,
    policy: DropPolicy = DropPolicy.EVICT_LOWEST_OLDEST,
) -> Outbox:
    """An outbox of ``max_bytes`` that records every drop it reports in ``drops``."""
    return Outbox(
        db_path, max_bytes=max_bytes, policy=policy, on_drop=lambda *drop: drops.append(drop)
    )


# -- order and cursors -------------------------------------------------------------------------


def test_peek_returns_highest_priority_first_and_fifo_within_a_priority(outbox: Outbox) -> None:
    outbox.put([rec("d1"), rec("a1", Priority.ALERT), rec("s1", Priority.SAMPLE)])
    outbox.put([rec("d2"), rec("a2", Priority.ALERT), rec("e1", Priority.EVENT)])
    outbox.put([rec("m1", Priority.SUMMARY), rec("s2", Priority.SAMPLE)])

    assert names(everything(outbox)) == ["a1", "a2", "e1", "m1", "d1", "d2", "s1", "s2"]


def test_peek_does_not_remove_records(outbox: Outbox) -> None:
    outbox.put([rec("d1"), rec("d2")])

    assert names(outbox.peek()) == names(outbox.peek()) == ["d1", "d2"]
    assert len(outbox) == 2


def test_stored_record_carries_priority_topic_and_creation_time(outbox: Outbox) -> None:
    before = store_module.now_ms()
    outbox.put([rec("a1", Priority.ALERT)])
    (record,) = outbox.peek()

    assert record.priority is Priority.ALERT
    assert record.topic == TOPIC
    assert before <= record.created_ms <= store_module.now_ms()


def test_ack_removes_exactly_the_given_ids(outbox: Outbox) -> None:
    outbox.put([rec("d1"), rec("d2"), rec("d3")])
    first, _, third = outbox.peek()

    outbox.ack([first.id, third.id])

    assert names(everything(outbox)) == ["d2"]
    assert outbox.bytes == ROW


def test_ack_ignores_unknown_ids_and_empty_lists(outbox: Outbox) -> None:
    outbox.put([rec("d1")])

    outbox.ack([])
    outbox.ack([987654, -1])

    assert len(outbox) == 1
    assert outbox.bytes == ROW


def test_ack_of_more_ids_than_one_statement_takes(outbox: Outbox) -> None:
    outbox.put([rec(f"r{i}", size=60) for i in range(1234)])

    outbox.ack([r.id for r in everything(outbox)])

    assert len(outbox) == 0
    assert outbox.bytes == 0


def test_after_cursor_skips_in_flight_rows_per_priority(outbox: Outbox) -> None:
    outbox.put([rec("a1", Priority.ALERT), rec("a2", Priority.ALERT), rec("d1"), rec("d2")])
    in_flight = outbox.peek(max_records=3)
    cursors = {Priority.ALERT: in_flight[1].id, Priority.DETECTION: in_flight[2].id}

    assert names(in_flight) == ["a1", "a2", "d1"]
    assert names(outbox.peek(after=cursors)) == ["d2"]


def test_after_cursor_sees_rows_put_after_the_cursor(outbox: Outbox) -> None:
    outbox.put([rec("d1")])
    cursors = {Priority.DETECTION: outbox.peek()[0].id}
    outbox.put([rec("d2"), rec("a1", Priority.ALERT)])

    assert names(outbox.peek(after=cursors)) == ["a1", "d2"]


def test_cursor_of_one_priority_does_not_hide_another(outbox: Outbox) -> None:
    outbox.put([rec("d1"), rec("s1", Priority.SAMPLE)])
    high = max(r.id for r in everything(outbox))

    assert names(outbox.peek(after={Priority.DETECTION: high})) == ["s1"]


def test_peek_stops_at_max_records_and_the_next_peek_continues_the_round(
    outbox: Outbox,
) -> None:
    outbox.put([rec("a1", Priority.ALERT), rec("d1"), rec("d2"), rec("s1", Priority.SAMPLE)])

    assert names(outbox.peek(max_records=3)) == ["a1", "d1", "d2"]
    # The sample class had its turn next: weighted sharing, not strict priority.
    assert names(outbox.peek(max_records=1)) == ["s1"]


def test_peek_stops_before_max_bytes_of_payload(outbox: Outbox) -> None:
    outbox.put([rec(f"d{i}") for i in range(5)])  # payloads of 53 bytes
    payload = ROW - len(TOPIC) - 32

    assert names(outbox.peek(max_bytes=3 * payload)) == ["d0", "d1", "d2"]
    assert names(outbox.peek(max_bytes=3 * payload - 1)) == ["d0", "d1"]


def test_peek_returns_one_record_even_if_it_exceeds_max_bytes(outbox: Outbox) -> None:
    outbox.put([rec("big", size=5000), rec("d1")])

    assert names(outbox.peek(max_bytes=10)) == ["big"]


def test_peek_of_an_empty_outbox_is_empty(outbox: Outbox) -> None:
    assert outbox.peek() == []


def test_ids_keep_increasing_after_everything_is_acked_and_reopened(db_path: Path) -> None:
    with Outbox(db_path) as outbox:
        outbox.put([rec("d1"), rec("d2")])
        old = [r.id for r in outbox.peek()]
        outbox.ack(old)
    with Outbox(db_path) as outbox:
        outbox.put([rec("d3")])
        (new,) = outbox.peek()

    # A cursor held across a restart must never hide a new record.
    assert new.id > max(old)


# -- byte cap: evict_lowest_oldest -------------------------------------------------------------


def test_outbox_at_exactly_its_cap_drops_nothing(db_path: Path, drops: list[Drop]) -> None:
    with capped(db_path, drops, 3 * ROW) as outbox:
        outbox.put([rec("d1"), rec("d2"), rec("d3")])

        assert outbox.bytes == 3 * ROW
        assert outbox.drop_counts() == {}
    assert drops == []


def test_eviction_removes_lowest_priority_oldest_rows_first(
    db_path: Path, drops: list[Drop]
) -> None:
    with capped(db_path, drops, 5 * ROW) as outbox:
        outbox.put([rec("d1"), rec("s1", Priority.SAMPLE), rec("a1", Priority.ALERT)])
        outbox.put([rec("s2", Priority.SAMPLE), rec("d2")])
        outbox.put([rec("d3")])  # 100 over: the oldest sample goes
        assert names(everything(outbox)) == ["a1", "d1", "d2", "d3", "s2"]

        outbox.put([rec("e1", Priority.EVENT, size=250)])  # 250 over: s2, then d1 and d2

        assert names(everything(outbox)) == ["a1", "e1", "d3"]
        assert outbox.bytes == 2 * ROW + 250
        assert outbox.drop_counts() == {("evicted", 0): 2, ("evicted", 1): 2}
        assert outbox.stats().drops == {"evicted": 4}
    assert drops == [
        (DropReason.EVICTED, Priority.SAMPLE, 1),
        (DropReason.EVICTED, Priority.SAMPLE, 1),
        (DropReason.EVICTED, Priority.DETECTION, 2),
    ]


def test_eviction_frees_only_as_much_as_needed(db_path: Path, drops: list[Drop]) -> None:
    with capped(db_path, drops, 10 * ROW) as outbox:
        outbox.put([rec(f"d{i}") for i in range(10)])

        outbox.put([rec("a1", Priority.ALERT, size=ROW + 1)])  # 101 over: two rows go

        assert names(everything(outbox)) == ["a1"] + [f"d{i}" for i in range(2, 10)]
        assert outbox.drop_counts() == {("evicted", 1): 2}


def test_new_low_priority_record_can_evict_itself(db_path: Path, drops: list[Drop]) -> None:
    with capped(db_path, drops, 2 * ROW) as outbox:
        outbox.put([rec("a1", Priority.ALERT), rec("a2", Priority.ALERT)])

        outbox.put([rec("s1", Priority.SAMPLE)])

        assert names(everything(outbox)) == ["a1", "a2"]
        assert outbox.drop_counts() == {("evicted", 0): 1}
    assert drops == [(DropReason.EVICTED, Priority.SAMPLE, 1)]


def test_eviction_within_one_batch_keeps_the_newest_of_a_priority(
    db_path: Path, drops: list[Drop]
) -> None:
    with capped(db_path, drops, 3 * ROW) as outbox:
        outbox.put([rec(f"d{i}") for i in range(5)])

        assert names(everything(outbox)) == ["d2", "d3", "d4"]
        assert outbox.drop_counts() == {("evicted", 1): 2}
    assert drops == [(DropReason.EVICTED, Priority.DETECTION, 2)]


def test_eviction_spanning_more_than_a_thousand_rows(db_path: Path, drops: list[Drop]) -> None:
    with capped(db_path, drops, 1500 * 60) as outbox:
        outbox.put([rec(f"s{i}", Priority.SAMPLE, size=60) for i in range(1500)])

        outbox.put([rec("a1", Priority.ALERT, size=1200 * 60)])

        assert len(outbox) == 301
        assert outbox.bytes == 300 * 60 + 1200 * 60
        assert outbox.drop_counts() == {("evicted", 0): 1200}
    assert sum(count for _, _, count in drops) == 1200


# -- byte cap: reject_new and too_large --------------------------------------------------------


def test_reject_new_keeps_stored_records_and_refuses_the_newcomer(
    db_path: Path, drops: list[Drop]
) -> None:
    with capped(db_path, drops, 3 * ROW, policy=DropPolicy.REJECT_NEW) as outbox:
        assert outbox.put([rec("s1", Priority.SAMPLE), rec("s2", Priority.SAMPLE)]) == 2

        inserted = outbox.put([rec("a1", Priority.ALERT), rec("a2", Priority.ALERT)])

        assert inserted == 1
        assert names(everything(outbox)) == ["a1", "s1", "s2"]
        assert outbox.bytes == 3 * ROW
        assert outbox.drop_counts() == {("rejected", 4): 1}
    assert drops == [(DropReason.REJECTED, Priority.ALERT, 1)]


def test_reject_new_still_accepts_a_smaller_record_that_fits(
    db_path: Path, drops: list[Drop]
) -> None:
    with capped(db_path, drops, 3 * ROW, policy=DropPolicy.REJECT_NEW) as outbox:
        outbox.put([rec("d1", size=2 * ROW)])

        assert outbox.put([rec("d2", size=2 * ROW), rec("d3")]) == 1

        assert names(everything(outbox)) == ["d1", "d3"]
        assert outbox.drop_counts() == {("rejected", 1): 1}


@pytest.mark.parametrize("policy", list(DropPolicy))
def test_record_larger_than_the_cap_is_dropped_as_too_large(
    db_path: Path, drops: list[Drop], policy: DropPolicy
) -> None:
    with capped(db_path, drops, 3 * ROW, policy=policy) as outbox:
        outbox.put([rec("d1")])

        inserted = outbox.put([rec("huge", Priority.EVENT, size=3 * ROW + 1), rec("d2")])

        assert inserted == 1
        assert names(everything(outbox)) == ["d1", "d2"]
        assert outbox.drop_counts() == {("too_large", 3): 1}
    assert drops == [(DropReason.TOO_LARGE, Priority.EVENT, 1)]


def test_reject_new_under_concurrent_puts_never_evicts(db_path: Path) -> None:
    """Two puts that both check the cap before either writes must not push out stored rows.

    The cap check in ``put`` reads the byte count before taking the lock; this test holds both
    threads at the lock until each has done its check, which makes the race deterministic.
    """
    with Outbox(db_path, max_bytes=ROW + ROW // 2, policy=DropPolicy.REJECT_NEW) as outbox:
        real_lock = outbox._lock
        outbox._lock = _GateFirstEntries(real_lock, parties=2)  # type: ignore[assignment]
        threads = [
            threading.Thread(target=outbox.put, args=([rec(f"d{i}")],)) for i in range(2)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=10)
        outbox._lock = real_lock

        assert outbox.drop_counts() == {("rejected", 1): 1}
        assert len(outbox) == 1


class _GateFirstEntries:
    """A lock that holds its first ``parties`` entrants until all of them have arrived."""

    def __init__(self, inner: threading.Lock, parties: int) -> None:
        self._inner = inner
        self._barrier = threading.Barrier(parties, timeout=5)
        self._left = parties
        self._count = threading.Lock()

    def __enter__(self) -> None:
        with self._count:
            gated, self._left = self._left > 0, self._left - 1
        if gated:
            self._barrier.wait()
        self._inner.acquire()

    def __exit__(self, *_exc: object) -> None:
        self._inner.release()


# -- time-to-live ------------------------------------------------------------------------------


def test_expire_drops_records_at_their_deadline_and_counts_by_priority(
    outbox: Outbox, drops: list[Drop]
) -> None:
    outbox.put([
        rec("d1", ttl_s=1.0), rec("d2", ttl_s=1.0), rec("a1", Priority.ALERT, ttl_s=1.0),
        rec("a2", Priority.ALERT, ttl_s=5.0), rec("d3"),
    ])
    created = outbox.peek()[0].created_ms

    assert outbox.expire(now=created + 999) == 0
    assert outbox.expire(now=created + 1000) == 3

    assert names(everything(outbox)) == ["a2", "d3"]
    assert outbox.bytes == 2 * ROW
    assert outbox.drop_counts() == {("expired", 1): 2, ("expired", 4): 1}
    assert sorted(drops) == [
        (DropReason.EXPIRED, Priority.DETECTION, 2), (DropReason.EXPIRED, Priority.ALERT, 1),
    ]


def test_records_without_ttl_never_expire(outbox: Outbox) -> None:
    outbox.put([rec("d1")])

    assert outbox.expire(now=2**62 - 1) == 0
    assert len(outbox) == 1


def test_default_ttl_applies_to_records_without_one(db_path: Path) -> None:
    with Outbox(db_path, default_ttl_s=2.0) as outbox:
        outbox.put([rec("d1"), rec("d2", ttl_s=10.0)])
        created = outbox.peek()[0].created_ms

        assert outbox.expire(now=created + 1999) == 0
        assert outbox.expire(now=created + 2000) == 1
        assert names(everything(outbox)) == ["d2"]


def test_expire_without_now_uses_the_wall_clock(outbox: Outbox, drops: list[Drop]) -> None:
    outbox.put([rec("d1", ttl_s=0.0), rec("d2", ttl_s=3600.0)])

    assert outbox.expire() == 1
    assert outbox.expire() == 0
    assert drops == [(DropReason.EXPIRED, Priority.DETECTION, 1)]


def test_expire_with_nothing_to_do_does_not_notify(outbox: Outbox, drops: list[Drop]) -> None:
    assert outbox.expire(now=0) == 0
    assert drops == []


# -- stats and accounting ----------------------------------------------------------------------


def test_stats_report_backlog_bytes_age_and_drops_by_reason(db_path: Path) -> None:
    with Outbox(db_path, max_bytes=2 * ROW) as outbox:
        outbox.put([rec("d1"), rec("d2"), rec("d3"), rec("big", size=3 * ROW)])
        oldest = outbox.peek()[0].created_ms

        stats = outbox.stats()

        assert (stats.records, stats.bytes) == (2, 2 * ROW)
        assert stats.oldest_created_ms == oldest
        assert stats.drops == {"too_large": 1, "evicted": 1}


def test_stats_of_an_empty_outbox(outbox: Outbox) -> None:
    stats = outbox.stats()

    assert (stats.records, stats.bytes, stats.oldest_created_ms, stats.drops) == (0, 0, None, {})


def test_record_size_counts_payload_topic_and_row_overhead() -> None:
    assert NewRecord("abc", b"12345").size == 5 + 3 + 32


def test_put_of_nothing_returns_zero(outbox: Outbox) -> None:
    assert outbox.put([]) == 0
    assert len(outbox) == 0


@pytest.mark.parametrize("kwargs", [{"max_bytes": 0}, {"max_bytes": -5}, {"synchronous": "OFF"}])
def test_invalid_settings_raise_outbox_error(db_path: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(OutboxError):
        Outbox(db_path, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("level", ["normal", "FULL", "Extra"])
def test_synchronous_level_is_case_insensitive(db_path: Path, level: str) -> None:
    with Outbox(db_path, synchronous=level) as outbox:
        assert outbox.put([rec("d1")]) == 1


# -- durability --------------------------------------------------------------------------------


def test_rows_bytes_and_drop_counts_survive_close_and_reopen(db_path: Path) -> None:
    with Outbox(db_path, max_bytes=3 * ROW) as outbox:
        outbox.put([rec("s1", Priority.SAMPLE), rec("d1"), rec("a1", Priority.ALERT)])
        outbox.put([rec("d2"), rec("huge", size=10 * ROW)])
        outbox.put([rec("e1", Priority.EVENT, ttl_s=0.0)])
        outbox.expire(now=store_module.now_ms() + 1)
        before = everything(outbox)

    with Outbox(db_path, max_bytes=3 * ROW) as reopened:
        assert everything(reopened) == before
        assert names(before) == ["a1", "d2"]
        assert reopened.bytes == 2 * ROW
        assert reopened.drop_counts() == {
            ("evicted", 0): 1, ("evicted", 1): 1, ("too_large", 1): 1, ("expired", 3): 1,
        }


def test_reopen_with_a_smaller_cap_keeps_rows_until_the_next_put(db_path: Path) -> None:
    with Outbox(db_path) as outbox:
        outbox.put([rec(f"d{i}") for i in range(4)])

    with Outbox(db_path, max_bytes=2 * ROW) as smaller:
        assert len(smaller) == 4
        smaller.put([rec("a1", Priority.ALERT)])

        assert names(everything(smaller)) == ["a1", "d3"]


def test_healthy_database_is_not_moved_aside(db_path: Path) -> None:
    with Outbox(db_path) as outbox:
        outbox.put([rec("d1")])
    with Outbox(db_path) as reopened:
        assert reopened.moved_aside is None
        assert len(reopened) == 1


def test_corrupt_file_is_moved_aside_unchanged_and_outbox_starts_empty(
    db_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    garbage = b"this is not an sqlite database\x00\xff" * 128
    db_path.write_bytes(garbage)

    with Outbox(db_path) as outbox:
        assert outbox.moved_aside is not None
        assert outbox.moved_aside.name.startswith("outbox.db.corrupt-")
        assert outbox.moved_aside.read_bytes() == garbage
        assert len(outbox) == 0
        assert outbox.bytes == 0
        assert outbox.put([rec("d1")]) == 1
    assert "moved it aside" in caplog.text


def test_corrupt_files_moved_aside_in_the_same_second_are_both_kept(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """"Moved aside, never deleted": a second corrupt file must not overwrite the first."""
    frozen = types.SimpleNamespace(time=lambda: 1_700_000_000.0, time_ns=time.time_ns)
    monkeypatch.setattr(store_module, "time", frozen)
    for garbage in (b"first corrupt file " * 50, b"second corrupt file " * 50):
        db_path.write_bytes(garbage)
        Outbox(db_path).close()

    kept = {p.read_bytes() for p in db_path.parent.glob("outbox.db.corrupt-*")}

    assert kept == {b"first corrupt file " * 50, b"second corrupt file " * 50}


def test_locked_database_is_not_mistaken_for_a_corrupt_one(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A busy database raises; it must not be moved aside and replaced by an empty one."""
    holder = sqlite3.connect(db_path, isolation_level=None)
    holder.execute("CREATE TABLE keep (x)")
    holder.execute("BEGIN EXCLUSIVE")
    # The default 5 s busy wait would only make this test slow; the outcome is the same.
    monkeypatch.setattr(sqlite3, "connect", functools.partial(sqlite3.connect, timeout=0.05))
    try:
        with pytest.raises(OutboxError):
            Outbox(db_path).close()
        assert not list(db_path.parent.glob("outbox.db.corrupt-*"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()


# -- threads -----------------------------------------------------------------------------------


def test_concurrent_put_and_peek_ack_lose_nothing(outbox: Outbox) -> None:
    total, batch = 2000, 10
    received: list[bytes] = []
    done = threading.Event()

    def produce() -> None:
        for start in range(0, total, batch):
            outbox.put([NewRecord(TOPIC, b"%d" % i) for i in range(start, start + batch)])
        done.set()

    def consume() -> None:
        while True:
            finished = done.is_set()
            records = outbox.peek(max_records=37)
            received.extend(r.payload for r in records)
            outbox.ack([r.id for r in records])
            if finished and not records:
                return

    threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(received, key=int) == [b"%d" % i for i in range(total)]
    assert len(outbox) == 0
    assert outbox.bytes == 0
    assert outbox.drop_counts() == {}
