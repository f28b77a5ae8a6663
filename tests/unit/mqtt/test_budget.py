"""The uplink token bucket, on an injected clock."""

from __future__ import annotations

import pytest

from evc.errors import ConfigError
from evc.mqtt.budget import UplinkBudget


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_full_bucket_lets_the_burst_go_at_once() -> None:
    clock = FakeClock()
    budget = UplinkBudget(bytes_per_s=1000, burst_bytes=3000, clock=clock)

    for _ in range(3):
        assert budget.wait_s() == 0
        budget.spend(1000)

    assert budget.wait_s() == 0  # exactly empty, not in debt
    budget.spend(500)
    assert budget.wait_s() == pytest.approx(0.5)


def test_debt_is_refilled_at_the_rate() -> None:
    clock = FakeClock()
    budget = UplinkBudget(bytes_per_s=1000, burst_bytes=1000, clock=clock)
    budget.spend(3000)  # a message larger than the burst still goes, alone

    assert budget.wait_s() == pytest.approx(2.0)
    clock.now += 1.5
    assert budget.wait_s() == pytest.approx(0.5)
    clock.now += 0.5
    assert budget.wait_s() == 0


def test_idle_time_fills_the_bucket_only_up_to_the_burst() -> None:
    clock = FakeClock()
    budget = UplinkBudget(bytes_per_s=1000, burst_bytes=2000, clock=clock)
    clock.now += 3600

    assert budget.tokens == 2000


def test_long_run_rate_never_exceeds_the_cap() -> None:
    clock = FakeClock()
    budget = UplinkBudget(bytes_per_s=10_000, burst_bytes=5_000, clock=clock)
    sent = 0
    while clock.now < 110.0:  # a sender that goes whenever allowed, for 10 s
        delay = budget.wait_s()
        if delay:
            clock.now += delay
            continue
        budget.spend(1_500)
        sent += 1_500

    assert sent <= 10_000 * 10 + 5_000 + 1_500


@pytest.mark.parametrize(("rate", "burst"), [(0, 10), (10, 0), (-1, 10)])
def test_rate_and_burst_must_be_positive(rate: float, burst: int) -> None:
    with pytest.raises(ConfigError):
        UplinkBudget(bytes_per_s=rate, burst_bytes=burst)
