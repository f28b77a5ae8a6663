"""What a fuzz run found: counts per target and every distinct crash, as JSON or a table."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class TargetStats:
    """What one target made of its inputs."""

    inputs: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    crashes: int = 0
    seconds: float = 0.0
    slowest_s: float = 0.0


@dataclass(slots=True)
class Crash:
    """One distinct crash: where, its first input, and whether that input alone repeats it."""

    target: str
    error: str
    where: str
    index: int
    input_hex: str
    count: int = 1
    standalone: bool | None = None


@dataclass(slots=True)
class Report:
    """A fuzz run: counts per target and every distinct crash."""

    seed: int
    inputs: int = 0
    seconds: float = 0.0
    targets: dict[str, TargetStats] = field(default_factory=dict)
    crashes: dict[tuple[str, str, str], Crash] = field(default_factory=dict)
    record_rejects: Counter[str] = field(default_factory=Counter)
    stop_crashes: int = 0  # the gateway's pipeline crashed while stopping (no input of its own)

    @property
    def crash_count(self) -> int:
        """Inputs that crashed a target, over every target, and a crash at the gateway's stop."""
        return sum(stats.crashes for stats in self.targets.values()) + self.stop_crashes

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON values."""
        return {
            "seed": self.seed, "inputs": self.inputs, "seconds": round(self.seconds, 2),
            "crashes": self.crash_count,
            "targets": {name: {
                "inputs": s.inputs, "accepted": s.accepted,
                "rejected": dict(sorted(s.rejected.items())),
                "crashes": s.crashes, "seconds": round(s.seconds, 2),
                "slowest_ms": round(1000 * s.slowest_s, 1),
            } for name, s in self.targets.items()},
            "cloud_ingest_record_rejects": dict(sorted(self.record_rejects.items())),
            "distinct_crashes": [
                {"target": c.target, "error": c.error, "where": c.where, "count": c.count,
                 "index": c.index, "standalone": c.standalone, "input_hex": c.input_hex}
                for c in self.crashes.values()
            ],
        }

    def summary(self) -> str:
        """A table of the counts, for people."""
        rate = self.inputs / self.seconds if self.seconds else 0.0
        lines = [f"evc.fuzz: {self.inputs:,} inputs in {self.seconds:.1f} s ({rate:,.0f}/s), "
                 f"seed {self.seed}, {self.crash_count} crashes",
                 f"{'target':<16}{'inputs':>10}{'accepted':>10}{'rejected':>10}  rejects by reason"]
        for name, s in self.targets.items():
            reasons = ", ".join(f"{r}={n:,}" for r, n in sorted(s.rejected.items()))
            lines.append(f"{name:<16}{s.inputs:>10,}{s.accepted:>10,}"
                         f"{sum(s.rejected.values()):>10,}  {reasons}")
        if self.record_rejects:
            lines.append("records refused inside accepted uplink batches: " + ", ".join(
                f"{r}={n:,}" for r, n in sorted(self.record_rejects.items())))
        for crash in self.crashes.values():
            lines.append(f"CRASH x{crash.count} {crash.target}: {crash.error} at {crash.where} "
                         f"(input {crash.index}, alone: {crash.standalone}) "
                         f"{crash.input_hex[:160]}...")
        return "\n".join(lines)
