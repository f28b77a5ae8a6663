"""A bandwidth cap for an uplink: a token bucket of bytes.

The forwarder asks :meth:`UplinkBudget.wait_s` before each publish and reports what it sent
with :meth:`UplinkBudget.spend`. A message is sent whenever the bucket is not in debt, and its
full size is then taken from the bucket, possibly driving it below zero; the next message waits
until the debt is refilled. So a message larger than the burst still goes (alone), the long-run
rate never exceeds ``bytes_per_s``, and what does not fit simply stays in the outbox.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from evc.errors import ConfigError


class UplinkBudget:
    """A token bucket of ``bytes_per_s`` refill and ``burst_bytes`` capacity.

    Args:
        bytes_per_s: long-run rate cap.
        burst_bytes: bytes that may go at once after an idle period (the bucket's size).
        clock: monotonic seconds; injected by tests.
    """

    def __init__(
        self,
        *,
        bytes_per_s: float,
        burst_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if bytes_per_s <= 0 or burst_bytes <= 0:
            raise ConfigError("an uplink budget needs a positive rate and burst")
        self.bytes_per_s = float(bytes_per_s)
        self.burst_bytes = int(burst_bytes)
        self._clock = clock
        self._tokens = float(burst_bytes)
        self._at = clock()
        self._lock = threading.Lock()

    def wait_s(self) -> float:
        """Seconds until the next message may go (0: now)."""
        with self._lock:
            self._refill()
            # Less than a byte of debt counts as none: float rounding must not stall a sender.
            return 0.0 if self._tokens > -1.0 else -self._tokens / self.bytes_per_s

    def spend(self, nbytes: int) -> None:
        """Take ``nbytes`` that were just sent from the bucket."""
        with self._lock:
            self._refill()
            self._tokens -= nbytes

    @property
    def tokens(self) -> float:
        """Bytes available now (negative: debt)."""
        with self._lock:
            self._refill()
            return self._tokens

    def _refill(self) -> None:
        now = self._clock()
        elapsed = max(0.0, now - self._at)
        self._at = now
        self._tokens = min(float(self.burst_bytes), self._tokens + elapsed * self.bytes_per_s)
