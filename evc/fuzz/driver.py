"""The run loop: feed generated inputs to the targets round-robin and count every outcome."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from evc.fuzz.contract import TARGETS, Target, check
from evc.fuzz.ingress import AdmitTarget, CloudIngestTarget
from evc.fuzz.inputs import Inputs
from evc.fuzz.report import Crash, Report, TargetStats
from evc.fuzz.targets import fuzz_targets


@contextmanager
def _quiet_logs() -> Iterator[None]:
    """The code under test logs every rejection; a million warnings only slow the run."""
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


def run(*, inputs: int, seed: int = 0, targets: Sequence[str] = TARGETS) -> Report:
    """Feed ``inputs`` generated inputs round-robin to ``targets``; count every outcome."""
    report = Report(seed=seed, targets={name: TargetStats() for name in targets})
    made = Inputs(seed)
    started = time.perf_counter()
    with _quiet_logs(), fuzz_targets() as live:
        for index in range(inputs):
            name = targets[index % len(targets)]
            data = made.make(name)
            _one(report, live, name, index, data)
        gateway = live.get("admit")
        if isinstance(gateway, AdmitTarget):
            _stop(report, gateway)
        cloud = live.get("cloud_ingest")
        if isinstance(cloud, CloudIngestTarget):
            report.record_rejects = cloud.record_rejects
    report.inputs = inputs
    report.seconds = time.perf_counter() - started
    return report


def _one(report: Report, live: dict[str, Target], name: str, index: int, data: bytes) -> None:
    stats = report.targets[name]
    stats.inputs += 1
    begin = time.perf_counter()
    try:
        reason = check(live[name], name, data)
    except Exception as exc:
        stats.crashes += 1
        _record_crash(report, name, index, data, exc)
    else:
        if reason is None:
            stats.accepted += 1
        else:
            stats.rejected[reason] += 1
    spent = time.perf_counter() - begin
    stats.seconds += spent
    stats.slowest_s = max(stats.slowest_s, spent)


def _stop(report: Report, gateway: AdmitTarget) -> None:
    """Stop the gateway's pipeline as a stopping daemon does: every window it still holds
    closes, and each summary must be valid too (a crash here is counted as input -1)."""
    try:
        gateway.close()
    except Exception as exc:
        report.stop_crashes += 1
        _record_crash(report, "admit", -1, b"", exc)


def _record_crash(report: Report, name: str, index: int, data: bytes, exc: Exception) -> None:
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    where = f"{Path(frame.filename).name}:{frame.lineno} {frame.name}"
    key = (name, type(exc).__name__, where)
    if key in report.crashes:
        report.crashes[key].count += 1
        return
    crash = Crash(name, f"{type(exc).__name__}: {str(exc)[:200]}", where, index,
                  data[:4096].hex())
    if index < 0:
        report.crashes[key] = crash
        return
    with fuzz_targets() as fresh:
        try:
            check(fresh[name], name, data)
            crash.standalone = False
        except Exception:
            crash.standalone = True
    report.crashes[key] = crash
