"""How the drain shares each batch between priority classes: deficit round robin by bytes.

Strict priority starves the low classes for as long as a high one has a backlog (edgeHub's known
failure). Here every class with pending records takes turns, highest first; each turn adds
``weight x quantum`` bytes of credit to the class, which then sends its oldest records while its
credit covers them. Over many batches each backlogged class gets about ``weight / sum(weights of
the backlogged classes)`` of the bytes, an idle class's share goes to the others, and no class
with records waits forever. The state (credits and whose turn it is) lives across batches, so the
shares hold even when a batch has room for a single record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from evc.errors import OutboxError
from evc.outbox.policy import Priority

DEFAULT_WEIGHTS: Mapping[Priority, int] = {
    Priority.ALERT: 16,
    Priority.EVENT: 8,
    Priority.SUMMARY: 4,
    Priority.DETECTION: 2,
    Priority.SAMPLE: 1,
}
DEFAULT_QUANTUM_BYTES = 256
_ORDER = sorted(Priority, reverse=True)


class DeficitRoundRobin:
    """Choose how many head records of each class go into the next batch.

    Args:
        weights: relative share of each class; classes left out keep their default weight.
        quantum_bytes: credit a class of weight 1 gets per turn. Smaller is finer-grained.
    """

    def __init__(
        self,
        weights: Mapping[Priority, int] | None = None,
        *,
        quantum_bytes: int = DEFAULT_QUANTUM_BYTES,
    ) -> None:
        merged = {**DEFAULT_WEIGHTS, **(weights or {})}
        if any(w < 1 for w in merged.values()) or quantum_bytes < 1:
            raise OutboxError("class weights and the quantum must be positive integers")
        self.weights = {Priority(p): int(w) for p, w in merged.items()}
        self.quantum_bytes = quantum_bytes
        self._credit = dict.fromkeys(Priority, 0)
        self._pos = 0  # index in _ORDER of the class whose turn is current
        self._resume = False  # that turn was cut short by a full batch: no new quantum

    def select(
        self, sizes: Mapping[Priority, Sequence[int]], *, max_records: int, max_bytes: int
    ) -> dict[Priority, int]:
        """Return, per class, how many of its oldest records to send next.

        Args:
            sizes: per class, the byte sizes of its pending records, oldest first. Give one
                more than ``max_records`` when a class has that many, so that taking all of
                them means the class ran dry.
            max_records: at most this many records in total.
            max_bytes: at most about this many bytes (at least one record is chosen).
        """
        taken = {p: 0 for p in Priority if sizes.get(p)}
        for p in Priority:
            if p not in taken:
                self._credit[p] = 0  # an idle class keeps no credit: it cannot hoard
        count = total = idle_turns = 0
        while any(taken[p] < len(sizes[p]) for p in taken):
            p = _ORDER[self._pos]
            queue, i = sizes.get(p, ()), taken.get(p, 0)
            start = i
            if i < len(queue):
                if not self._resume:
                    self._credit[p] += self.weights[p] * self.quantum_bytes
                while i < len(queue) and queue[i] <= self._credit[p]:
                    if count >= max_records or (count and total + queue[i] > max_bytes):
                        self._resume = True
                        taken[p] = i
                        return {q: n for q, n in taken.items() if n}
                    self._credit[p] -= queue[i]
                    count, total, i = count + 1, total + queue[i], i + 1
                taken[p] = i
                if i == len(queue):
                    self._credit[p] = 0
            idle_turns = 0 if i > start else idle_turns + 1
            if idle_turns >= len(_ORDER):
                self._skip_idle_rounds(sizes, taken)
                idle_turns = 0
            self._pos, self._resume = (self._pos + 1) % len(_ORDER), False
        return {q: n for q, n in taken.items() if n}

    def _skip_idle_rounds(
        self, sizes: Mapping[Priority, Sequence[int]], taken: Mapping[Priority, int]
    ) -> None:
        """Add the credit of the rounds in which nobody could send anything, all at once."""
        waiting = [p for p in taken if taken[p] < len(sizes[p])]
        rounds = min(
            -(-(sizes[p][taken[p]] - self._credit[p]) // (self.weights[p] * self.quantum_bytes))
            for p in waiting
        )
        for p in waiting:
            self._credit[p] += max(0, rounds - 1) * self.weights[p] * self.quantum_bytes
