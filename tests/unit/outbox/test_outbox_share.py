"""Weighted sharing of the drain between classes: shares by weight, no starvation, FIFO."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from evc.errors import OutboxError
from evc.outbox import NewRecord, Outbox, Priority
from evc.outbox.share import DEFAULT_WEIGHTS, DeficitRoundRobin

TOPIC = "evc/s/dev/d/det"
PAYLOAD = 100


def _backlogged(classes: list[Priority], records: int = 400) -> dict[Priority, list[int]]:
    return {p: [PAYLOAD] * records for p in classes}


def _drain_shares(
    share: DeficitRoundRobin, classes: list[Priority], *, batches: int, max_records: int
) -> Counter[Priority]:
    """Records each class sends over ``batches`` batches while every class stays backlogged."""
    sent: Counter[Priority] = Counter()
    for _ in range(batches):
        chosen = share.select(
            _backlogged(classes), max_records=max_records, max_bytes=1 << 30
        )
        sent.update(chosen)
    return sent


@pytest.mark.parametrize("max_records", [1, 7, 50])
def test_backlogged_classes_get_their_weight_share(max_records: int) -> None:
    sent = _drain_shares(
        DeficitRoundRobin(), list(Priority), batches=3100 // max_records, max_records=max_records
    )

    total = sum(sent.values())
    for priority, weight in DEFAULT_WEIGHTS.items():
        assert sent[priority] / total == pytest.approx(weight / 31, abs=0.02)


def test_an_idle_class_gives_its_share_to_the_others() -> None:
    busy = [Priority.EVENT, Priority.DETECTION, Priority.SAMPLE]  # no alerts, no summaries

    sent = _drain_shares(DeficitRoundRobin(), busy, batches=200, max_records=11)

    total = sum(sent.values())
    assert sent[Priority.EVENT] / total == pytest.approx(8 / 11, abs=0.02)
    assert sent[Priority.DETECTION] / total == pytest.approx(2 / 11, abs=0.02)
    assert sent[Priority.SAMPLE] / total == pytest.approx(1 / 11, abs=0.02)


def test_shares_are_of_bytes_not_records() -> None:
    share = DeficitRoundRobin()
    sizes = {Priority.DETECTION: [200] * 1000, Priority.SAMPLE: [50] * 1000}
    sent_bytes: Counter[Priority] = Counter()
    for _ in range(300):
        chosen = share.select(sizes, max_records=10, max_bytes=1 << 30)
        sent_bytes[Priority.DETECTION] += 200 * chosen.get(Priority.DETECTION, 0)
        sent_bytes[Priority.SAMPLE] += 50 * chosen.get(Priority.SAMPLE, 0)

    ratio = sent_bytes[Priority.DETECTION] / sent_bytes[Priority.SAMPLE]
    assert ratio == pytest.approx(2.0, rel=0.1)


def test_a_large_low_class_record_is_sent_despite_a_busy_high_class() -> None:
    share = DeficitRoundRobin()
    sizes = {Priority.ALERT: [100] * 1000, Priority.SAMPLE: [50_000]}

    batches = 0
    while Priority.SAMPLE not in share.select(sizes, max_records=20, max_bytes=1 << 30):
        batches += 1
        assert batches < 1000, "the sample starved"


def test_a_record_larger_than_max_bytes_is_still_chosen_alone() -> None:
    chosen = DeficitRoundRobin().select(
        {Priority.SAMPLE: [10_000, 10]}, max_records=5, max_bytes=100
    )

    assert chosen == {Priority.SAMPLE: 1}


def test_weights_must_be_positive() -> None:
    with pytest.raises(OutboxError):
        DeficitRoundRobin({Priority.SAMPLE: 0})


def test_outbox_drains_every_class_fifo_by_weight(tmp_path: Path) -> None:
    with Outbox(tmp_path / "o.db") as outbox:
        for n in range(200):
            outbox.put(
                [NewRecord(TOPIC, b"%c%05d" % (97 + p, n) + b"x" * 94, p) for p in Priority]
            )
        cursors: dict[Priority, int] = {}
        first_batches: Counter[Priority] = Counter()
        seen: dict[Priority, list[bytes]] = {p: [] for p in Priority}
        for batch in range(60):
            rows = outbox.peek(after=cursors, max_records=10)
            for row in rows:
                cursors[row.priority] = max(cursors.get(row.priority, 0), row.id)
                seen[row.priority].append(row.payload)
                if batch < 20:
                    first_batches[row.priority] += 1
            outbox.ack([row.id for row in rows])

    # Every class got some, the higher ones more, and each class came out oldest first.
    assert all(first_batches[p] > 0 for p in Priority)
    ordered = [first_batches[p] for p in sorted(Priority)]
    assert ordered == sorted(ordered)
    assert all(seen[p] == sorted(seen[p]) for p in Priority)


def test_per_class_ttl_applies_to_records_without_their_own(tmp_path: Path) -> None:
    with Outbox(
        tmp_path / "o.db", default_ttl_s=100.0, ttl_s_by_priority={Priority.SAMPLE: 1.0}
    ) as outbox:
        outbox.put([
            NewRecord(TOPIC, b"s", Priority.SAMPLE),
            NewRecord(TOPIC, b"d", Priority.DETECTION),
            NewRecord(TOPIC, b"own", Priority.SAMPLE, ttl_s=50.0),
        ])

        from evc.outbox import now_ms  # noqa: PLC0415 - read the clock right here

        expired = outbox.expire(now=now_ms() + 10_000)
        left = sorted(r.payload for r in outbox.peek())

    assert expired == 1
    assert left == [b"d", b"own"]
    assert outbox.ttl_for(Priority.ALERT) == 100.0
