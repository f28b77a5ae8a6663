"""A stateful property test of the outbox: whatever the sequence of calls, nothing vanishes.

Every record put is, at every step, either still stored, acknowledged, or counted as a drop;
``bytes`` always equals the sum of the stored rows' sizes and never exceeds the cap.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from evc.outbox import DropPolicy, DropReason, NewRecord, Outbox, Priority, StoredRecord, now_ms

RECORDS = st.builds(
    NewRecord,
    topic=st.sampled_from(["evc/s/dev/d/det", "evc/site-1/gw/gw-1/batch", "t"]),
    payload=st.binary(max_size=400),
    priority=st.sampled_from(list(Priority)),
    ttl_s=st.sampled_from([None, 0.0, 0.05, 60.0]),
)


def _stored_size(record: StoredRecord) -> int:
    return NewRecord(record.topic, record.payload).size


class OutboxModel(RuleBasedStateMachine):
    """Drives one outbox with random puts, peeks, acks, expiries and restarts."""

    def __init__(self) -> None:
        super().__init__()
        self._dir = tempfile.TemporaryDirectory()
        self.path = Path(self._dir.name) / "outbox.db"
        self.outbox: Outbox | None = None
        self.max_bytes = 0
        self.policy = DropPolicy.EVICT_LOWEST_OLDEST
        self.put_total = 0
        self.acked = 0
        self.notified: Counter[tuple[str, int]] = Counter()
        self.in_flight: set[int] = set()
        self.cursors: dict[Priority, int] = {}

    # -- helpers -------------------------------------------------------------------------------

    def _open(self) -> Outbox:
        return Outbox(
            self.path, max_bytes=self.max_bytes, policy=self.policy, on_drop=self._on_drop
        )

    def _on_drop(self, reason: DropReason, priority: Priority, count: int) -> None:
        self.notified[(reason.value, int(priority))] += count

    def _ob(self) -> Outbox:
        assert self.outbox is not None
        return self.outbox

    def _stored(self) -> list[StoredRecord]:
        return self._ob().peek(max_records=10**6, max_bytes=1 << 40)

    def _dropped(self) -> int:
        return sum(self._ob().drop_counts().values())

    # -- rules ---------------------------------------------------------------------------------

    @initialize(policy=st.sampled_from(list(DropPolicy)), max_bytes=st.integers(150, 3000))
    def open_outbox(self, policy: DropPolicy, max_bytes: int) -> None:
        self.policy, self.max_bytes = policy, max_bytes
        self.outbox = self._open()

    @rule(records=st.lists(RECORDS, max_size=8))
    def put(self, records: list[NewRecord]) -> None:
        inserted = self._ob().put(records)
        self.put_total += len(records)
        assert 0 <= inserted <= len(records)

    @rule(max_records=st.integers(1, 20), use_cursors=st.booleans())
    def peek(self, max_records: int, use_cursors: bool) -> None:
        after = dict(self.cursors) if use_cursors else None
        records = self._ob().peek(after=after, max_records=max_records)
        assert len(records) <= max_records
        order = [(-r.priority, r.id) for r in records]
        assert order == sorted(order)
        for record in records:
            assert record.id > (after or {}).get(record.priority, 0)
            self.cursors[record.priority] = max(self.cursors.get(record.priority, 0), record.id)
            self.in_flight.add(record.id)

    @precondition(lambda self: self.outbox is not None)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        ids = data.draw(st.lists(st.sampled_from(sorted(self.in_flight | {10**9}))))
        before = {r.id for r in self._stored()}
        self._ob().ack(ids)
        after = {r.id for r in self._stored()}
        assert before - after == before & set(ids)
        self.acked += len(before - after)
        self.in_flight -= set(ids)

    @rule(offset_ms=st.sampled_from([-1000, 0, 60, 100_000]))
    def expire(self, offset_ms: int) -> None:
        dropped = self._dropped()
        count = self._ob().expire(now=now_ms() + offset_ms)
        assert self._dropped() == dropped + count

    @rule()
    def reopen(self) -> None:
        stored, drops = self._stored(), self._ob().drop_counts()
        self._ob().close()
        self.outbox = self._open()
        assert self._stored() == stored
        assert self._ob().drop_counts() == drops

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def nothing_vanishes(self) -> None:
        if self.outbox is None:
            return
        assert self.put_total == len(self.outbox) + self.acked + self._dropped()

    @invariant()
    def every_drop_is_reported_to_the_listener(self) -> None:
        if self.outbox is None:
            return
        assert dict(self.notified) == self.outbox.drop_counts()

    @invariant()
    def bytes_is_the_sum_of_stored_sizes_within_the_cap(self) -> None:
        if self.outbox is None:
            return
        assert self.outbox.bytes == sum(_stored_size(r) for r in self._stored())
        assert self.outbox.stats().bytes == self.outbox.bytes
        assert self.outbox.bytes <= self.max_bytes

    def teardown(self) -> None:
        if self.outbox is not None:
            self.outbox.close()
        self._dir.cleanup()


OutboxModel.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestOutboxModel = OutboxModel.TestCase
