"""Outbox state: saved in the same transaction as the records, surviving a reopen."""

from __future__ import annotations

from pathlib import Path

import pytest

from evc.outbox import NewRecord, Outbox


def test_state_is_saved_with_the_records_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "outbox.db"
    with Outbox(path) as outbox:
        assert outbox.load_state("k") is None
        assert outbox.put([NewRecord("t", b"a")], state={"k": b"1"}) == 1
        assert outbox.put([], state={"k": b"2", "j": b"x"}) == 0
        assert outbox.load_state("k") == b"2"
    with Outbox(path) as outbox:
        assert outbox.load_state("k") == b"2"
        assert outbox.load_state("j") == b"x"
        assert len(outbox) == 1


def test_a_failed_put_saves_neither_records_nor_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = Outbox(tmp_path / "outbox.db")
    outbox.put([NewRecord("t", b"a")], state={"k": b"1"})

    def broken(*_args: object) -> list[object]:
        raise RuntimeError("disk gone")

    monkeypatch.setattr(outbox, "_evict_over_cap", broken)
    with pytest.raises(RuntimeError):
        outbox.put([NewRecord("t", b"b")], state={"k": b"2"})
    monkeypatch.undo()
    assert outbox.load_state("k") == b"1"
    assert len(outbox) == 1
    outbox.close()
