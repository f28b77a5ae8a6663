"""Device health for heartbeats: inference latency percentiles, frame rate, CPU and memory."""

from __future__ import annotations

import os
import resource
import threading
import time
from collections import deque

import numpy as np

_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class InferenceHealth:
    """A rolling window of per-frame inference latencies, and process resource use.

    Args:
        window: how many recent frames the percentiles and the frame rate cover.
    """

    def __init__(self, *, window: int = 1000) -> None:
        self._latencies_ms: deque[float] = deque(maxlen=window)
        self._frame_times: deque[float] = deque(maxlen=window)
        self._errors = 0
        self._lock = threading.Lock()
        self._cpu_mark = (time.monotonic(), time.process_time())

    def record(self, latency_ms: float) -> None:
        """Record one inference."""
        with self._lock:
            self._latencies_ms.append(latency_ms)
            self._frame_times.append(time.monotonic())

    def record_error(self) -> None:
        """Record one failed inference."""
        with self._lock:
            self._errors += 1

    def fields(self) -> dict[str, float | int]:
        """Heartbeat fields: inference_ms_p50/p99, fps, cpu_percent, rss_bytes, errors."""
        with self._lock:
            latencies = np.fromiter(self._latencies_ms, dtype=np.float64)
            times = list(self._frame_times)
            errors = self._errors
        fields: dict[str, float | int] = {"inference_errors": errors}
        if len(latencies):
            p50, p99 = np.percentile(latencies, [50, 99])
            fields["inference_ms_p50"] = round(float(p50), 3)
            fields["inference_ms_p99"] = round(float(p99), 3)
        if len(times) >= 2 and times[-1] > times[0]:
            fields["fps"] = round((len(times) - 1) / (times[-1] - times[0]), 2)
        fields["cpu_percent"] = round(self._cpu_percent(), 1)
        fields["rss_bytes"] = _rss_bytes()
        return fields

    def _cpu_percent(self) -> float:
        # CPU time of this process over wall time since the previous heartbeat.
        wall, cpu = time.monotonic(), time.process_time()
        last_wall, last_cpu = self._cpu_mark
        self._cpu_mark = (wall, cpu)
        return 100.0 * (cpu - last_cpu) / (wall - last_wall) if wall > last_wall else 0.0


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES
    except OSError:
        # No /proc (macOS): the peak resident size is the best cheap figure.
        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
