"""Simulated cameras: many devices in one process publishing synthetic detections.

Used by ``evc device simulate``, the demo, the benchmarks and the integration tests. The
detections are random but seeded; the on-device vision work replaces them with real inference.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from evc.config import DeviceConfig
from evc.device.node import Device

FRAME_WIDTH = 640
FRAME_HEIGHT = 480


@dataclass(slots=True)
class SimulationResult:
    """What a simulation published."""

    devices: int
    frames: int = 0
    detections: int = 0
    seconds: float = 0.0
    unsent: int = 0
    bytes_sent: int = 0
    keys: list[tuple[str, int, int]] = field(default_factory=list)


def synthetic_detections(
    rng: np.random.Generator, count: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Random class ids (0-2), scores and x1, y1, x2, y2 boxes inside a 640x480 frame."""
    xy = rng.uniform(0, [FRAME_WIDTH - 60, FRAME_HEIGHT - 60], size=(count, 2))
    wh = rng.uniform(12, 60, size=(count, 2))
    return rng.integers(0, 3, count), rng.uniform(0.25, 1.0, count), np.hstack([xy, xy + wh])


def simulate(
    config: DeviceConfig,
    *,
    stop: threading.Event | None = None,
    on_frame: Callable[[SimulationResult], None] | None = None,
    drain_timeout_s: float = 30.0,
) -> SimulationResult:
    """Run ``config.simulate.devices`` cameras at ``fps`` until the duration passes or ``stop``.

    Devices are named ``{device_id}-{n}``. Frames are paced on a shared clock so the total rate
    is ``devices * fps`` however long each publish takes.
    """
    sim = config.simulate
    stop = stop or threading.Event()
    devices = [
        Device(
            device_id=f"{config.device_id}-{n}", site=config.site, broker=config.fog.address,
            state_dir=config.state_dir, buffer_max_bytes=int(config.buffer_max_bytes),
            heartbeat_interval_s=config.heartbeat_interval_s, model_version=config.model_version,
        ).start()
        for n in range(sim.devices)
    ]
    rng = np.random.default_rng(sim.seed)
    result = SimulationResult(devices=len(devices))
    interval = 1.0 / (sim.fps * len(devices))
    started = time.monotonic()
    try:
        while not stop.is_set():
            elapsed = time.monotonic() - started
            if sim.duration_s is not None and elapsed >= sim.duration_s:
                break
            device = devices[result.frames % len(devices)]
            classes, scores, boxes = synthetic_detections(rng, sim.detections_per_frame)
            key = device.publish_detections(
                class_ids=classes, scores=scores, boxes=boxes,
                width=FRAME_WIDTH, height=FRAME_HEIGHT,
            )
            result.keys.append((key.origin, key.epoch, key.seq))
            result.frames += 1
            result.detections += len(scores)
            if on_frame:
                on_frame(result)
            delay = started + result.frames * interval - time.monotonic()
            if delay > 0:
                stop.wait(delay)
        result.seconds = time.monotonic() - started
    finally:
        for device in devices:
            device.wait_until_sent(drain_timeout_s)
            result.unsent += device.buffered
            device.close(drain_timeout_s=1.0)
            result.bytes_sent += device.forwarder.counters.bytes_sent
    return result
