"""Simulated cameras: many devices publishing what they see, in one process or several.

Used by ``evc device simulate``, the demo, the benchmarks and the integration tests. With a
detector configured, each camera is a seeded :class:`~evc.synthetic.SyntheticCamera` whose frames
go through the ONNX detector, exactly as on a real device; without one, cameras publish random
seeded detections (for load tests that should not spend CPU on inference).

With ``sampling.enabled``, camera frames are also offered to each device's hard-example sampler
with their image and the scene's ground truth (marked ``meta={"truth": "synthetic-scene"}``, so
a labeller knows where it came from). Random detections have no image and are never sampled.
"""

from __future__ import annotations

import functools
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import numpy.typing as npt

from evc.config import DetectorConfig, DeviceConfig
from evc.device.model_slot import ModelSlot, SlotDetections
from evc.device.node import Device
from evc.device.reduction import ChangeFilter
from evc.device.sampling import HardExampleSampler
from evc.device.synthetic import FRAME_HEIGHT, FRAME_WIDTH, synthetic_detections
from evc.inference import Detections, Detector
from evc.models.signing import TrustedKeys
from evc.synthetic import Domain, Frame, SceneConfig, SyntheticCamera


@dataclass(slots=True)
class SimulationResult:
    """What a simulation published."""

    devices: int
    frames: int = 0
    published: int = 0
    suppressed: int = 0
    detections: int = 0
    samples: int = 0
    samples_over_budget: int = 0
    seconds: float = 0.0
    unsent: int = 0
    bytes_sent: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    keys: list[tuple[str, int, int]] = field(default_factory=list)
    frames_by_model: dict[str, int] = field(default_factory=dict)

    def merge(self, other: SimulationResult) -> None:
        """Add another part's counts (from another process) to this one."""
        self.devices += other.devices
        for name in ("frames", "published", "suppressed", "detections", "samples",
                     "samples_over_budget", "unsent", "bytes_sent"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.seconds = max(self.seconds, other.seconds)
        self.latencies_ms.extend(other.latencies_ms)
        self.keys.extend(other.keys)
        for version, frames in other.frames_by_model.items():
            self.frames_by_model[version] = self.frames_by_model.get(version, 0) + frames

    def latency_ms(self, percentile: float) -> float | None:
        """A percentile of the per-frame inference latency (None without a detector)."""
        if not self.latencies_ms:
            return None
        return float(np.percentile(self.latencies_ms, percentile))


# A camera's next frame: the detections, the synthetic frame they were made from (None for
# random detections, which have no image) and the version of the model that found them.
FrameSource = Callable[[int], tuple[Detections, Frame | None, str | None]]
SCENE_TRUTH_META = {"truth": "synthetic-scene"}


def simulate(
    config: DeviceConfig,
    *,
    stop: threading.Event | None = None,
    on_frame: Callable[[SimulationResult], None] | None = None,
    drain_timeout_s: float = 30.0,
) -> SimulationResult:
    """Run ``config.simulate.devices`` cameras at ``fps`` until the duration passes or ``stop``.

    Devices are named ``{device_id}-{n}``. Frames are paced on a shared clock so the total rate
    is ``devices * fps`` however long each frame takes. With ``simulate.processes`` > 1 the
    cameras are split over that many processes (``on_frame`` is then not called).
    """
    sim = config.simulate
    if sim.processes == 1:
        return _simulate_part(config, range(sim.devices), stop, on_frame, drain_timeout_s)
    parts = [range(sim.devices)[k :: sim.processes] for k in range(sim.processes)]
    total = SimulationResult(devices=0)
    with ProcessPoolExecutor(len(parts), mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_simulate_in_child, config, part, drain_timeout_s)
                   for part in parts if part]
        for future in futures:
            total.merge(future.result())
    return total


def _simulate_in_child(
    config: DeviceConfig, indexes: range, drain_timeout_s: float
) -> SimulationResult:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    return _simulate_part(config, indexes, stop, None, drain_timeout_s)


def _simulate_part(
    config: DeviceConfig,
    indexes: range,
    stop: threading.Event | None,
    on_frame: Callable[[SimulationResult], None] | None,
    drain_timeout_s: float,
) -> SimulationResult:
    sim = config.simulate
    stop = stop or threading.Event()
    devices = [_device(config, n) for n in indexes]
    cameras, sources = _sources(config, indexes, devices)
    result = SimulationResult(devices=len(devices))
    interval = 1.0 / (sim.fps * len(devices))
    started = time.monotonic()
    shifted = False
    try:
        while not stop.is_set():
            elapsed = time.monotonic() - started
            if sim.duration_s is not None and elapsed >= sim.duration_s:
                break
            if not shifted and sim.shift_after_s is not None and elapsed >= sim.shift_after_s:
                for camera in cameras:
                    camera.shift(Domain.SHIFTED)
                shifted = True
            slot = result.frames % len(devices)
            detections, frame, version = sources[slot](result.frames)
            _publish(
                devices[slot], detections, frame, version, result, detector=config.detector
            )
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
            result.suppressed += device.change_filter.counts.suppressed
            result.samples += device.samples_sent
            if device.sampler is not None:
                result.samples_over_budget += device.sampler.skipped["budget"]
            device.close(drain_timeout_s=1.0)
            result.bytes_sent += device.forwarder.counters.bytes_sent
    return result


def _publish(
    device: Device, detections: Detections, frame: Frame | None, version: str | None,
    result: SimulationResult, *, detector: DetectorConfig | None,
) -> None:
    if device.sampler is not None and frame is not None:
        key = device.publish_frame(
            detections, model_version=version, image=frame.image,
            truth=(frame.class_ids, frame.boxes), meta=SCENE_TRUTH_META,
        )
    else:
        key = device.publish_frame(detections, model_version=version)
    result.frames += 1
    if version is not None:
        result.frames_by_model[version] = result.frames_by_model.get(version, 0) + 1
    if detector is not None:
        result.latencies_ms.append(
            detections.preprocess_ms + detections.inference_ms + detections.postprocess_ms
        )
    if key is not None:
        result.published += 1
        result.detections += len(detections)
        result.keys.append((key.origin, key.epoch, key.seq))


def _device(config: DeviceConfig, n: int) -> Device:
    policy = config.publish
    device = Device(
        device_id=f"{config.device_id}-{n}", site=config.site, broker=config.fog.address,
        state_dir=config.state_dir, buffer_max_bytes=int(config.buffer_max_bytes),
        heartbeat_interval_s=config.heartbeat_interval_s, model_version=config.model_version,
        change_filter=ChangeFilter(
            mode=policy.mode, iou_threshold=policy.iou_threshold,
            keyframe_interval_s=policy.keyframe_interval_s,
        ),
        sampler=(
            HardExampleSampler(
                config.sampling, rng=np.random.default_rng(config.simulate.seed + n)
            )
            if config.sampling.enabled else None
        ),
    )
    models = config.models
    if models.trusted_keys and config.detector is not None:
        # Each camera has its own slot: a rollout swaps models camera by camera.
        slot = ModelSlot(
            models_dir=Path(config.state_dir) / f"{device.device_id}.models",
            initial=config.detector.model, smoke_max_ms=models.smoke_max_ms,
            probation_s=models.probation_s, max_latency_ratio=models.max_latency_ratio,
            max_error_rate=models.max_error_rate,
            detector_factory=functools.partial(_detector, config.detector),
        )
        device.follow_models(
            slot, trusted=TrustedKeys.load(models.trusted_keys), group=models.group
        )
    return device.start()


def _detector(settings: DetectorConfig, path: Path) -> Detector:
    return Detector(
        path, conf_threshold=settings.conf_threshold, iou_threshold=settings.iou_threshold,
        max_detections=settings.max_detections, intra_op_threads=settings.intra_op_threads,
        class_names=settings.class_names,
    )


def _sources(
    config: DeviceConfig, indexes: range, devices: list[Device]
) -> tuple[list[SyntheticCamera], list[FrameSource]]:
    sim = config.simulate
    if config.detector is None:
        rng = np.random.default_rng(sim.seed + indexes.start)
        return [], [_random_source(rng, sim.detections_per_frame) for _ in indexes]
    shared = _detector(config.detector, config.detector.model)
    scene = SceneConfig(domain=Domain(sim.domain))
    cameras = [SyntheticCamera(seed=sim.seed + n, config=scene) for n in indexes]
    def shared_detect(image: npt.NDArray[np.uint8]) -> SlotDetections:
        return SlotDetections(shared(image), shared.model_version)

    for device in devices:
        device.model_version = shared.model_version  # what heartbeats and births report
    sources = [
        _camera_source(device.models.slot.run if device.models else shared_detect, iter(camera))
        for camera, device in zip(cameras, devices, strict=True)
    ]
    return cameras, sources


def _random_source(rng: np.random.Generator, count: int) -> FrameSource:
    def next_frame(_index: int) -> tuple[Detections, Frame | None, str | None]:
        classes, scores, boxes = synthetic_detections(rng, count)
        return Detections(
            class_ids=classes.astype(np.uint16), scores=scores.astype(np.float32),
            boxes=boxes.astype(np.float32), width=FRAME_WIDTH, height=FRAME_HEIGHT,
        ), None, None

    return next_frame


def _camera_source(
    detect: Callable[[npt.NDArray[np.uint8]], SlotDetections], frames: Iterator[Frame]
) -> FrameSource:
    def next_frame(_index: int) -> tuple[Detections, Frame | None, str | None]:
        frame = next(frames)
        found = detect(frame.image)
        return found.detections, frame, found.model_version

    return next_frame
