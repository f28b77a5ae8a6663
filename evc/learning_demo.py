"""The learning loop, live: the scene shifts, devices sample hard examples, the cloud trains v2,
v2 rolls out through the fog (canary first), and accuracy on the shifted scene rises.

Runs on a stack that :mod:`evc.demo` starts (brokers, a cloud worker with a model registry, a
gateway that relays models); used by ``evc demo`` and by the end-to-end integration test.
Labels come from the synthetic scene's ground truth (the simulated cameras attach it): no person
or model labels anything here, and the summary says so.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evc.cloud import CloudIngest
from evc.cloud.labelling import SyntheticTruthLabeller
from evc.cloud.learning import retrain_and_publish
from evc.cloud.rollout import Stage
from evc.cloud.trainer import GateConfig
from evc.config import (
    BrokerConfig,
    DetectorConfig,
    DeviceConfig,
    DeviceModelsConfig,
    FewSampler,
    NearThresholdSampler,
    PublishConfig,
    RandomSampler,
    SamplingConfig,
    SimulationConfig,
)
from evc.device import PublishMode
from evc.device.simulate import SimulationResult, simulate
from evc.errors import EvcError
from evc.gateway import Gateway
from evc.models.signing import SigningKey
from evc.synthetic.sample_model import sample_model_path
from evc.wire import Kind

MODEL = "shapes"
CANARY = "canary"
Progress = Callable[[str], None]


class LoopError(EvcError):
    """The learning loop did not complete."""


@dataclass(frozen=True, slots=True)
class LoopSettings:
    """How long and how hard each step of the loop runs."""

    cameras: int = 4
    fps: float = 10.0
    shift_after_s: float = 2.0
    samples: int = 100  # train once the cloud holds this many hard examples...
    sample_timeout_s: float = 60.0  # ... or after this long
    budget_s: float = 60.0
    promote_after_s: float = 5.0
    rollout_timeout_s: float = 90.0
    eval_frames: int = 100
    min_shifted_gain: float = 0.10  # the gate: v2 must gain this much on the shifted scene...
    max_base_loss: float = 0.05  # ... and lose at most this much on the original one


def run_learning_loop(
    *, work: Path, site: str, fog_url: str, cloud: CloudIngest, gateway: Gateway,
    key: SigningKey, public_key: Path, settings: LoopSettings, progress: Progress,
    stop: threading.Event, while_running: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """Run the loop on a running stack; return its summary.

    ``while_running`` is called once the rollout is complete, while the cameras still run (the
    demo takes its fleet view then).

    Raises:
        LoopError: no hard examples arrived, the candidate failed its gate, or the rollout did
            not complete in time.
    """
    service = cloud.models
    if service is None or service.controller is None:
        raise LoopError("the cloud worker has no model registry with rollouts")
    registry, controller = service.registry, service.controller
    registry.publish(name=MODEL, version="1", artifact=sample_model_path(), key=key)
    controller.set_default(site=site, name=MODEL, version="1")
    cameras = _Cameras(work, site, fog_url, public_key, settings=settings)
    cameras.start()
    try:
        samples = _wait_for_samples(cloud, settings, progress, stop)
        progress(f"training v2 on {samples} hard examples (budget {settings.budget_s:.0f} s)")
        result = retrain_and_publish(
            store=service.store, registry=registry, key=key, name=MODEL, base_version="1",
            version="2", labeller=SyntheticTruthLabeller(), budget_s=settings.budget_s,
            work=work / "training", site=site, eval_frames=settings.eval_frames,
            gate_config=GateConfig(
                min_shifted_gain=settings.min_shifted_gain, max_base_loss=settings.max_base_loss
            ),
        )
        if result.published is None:
            raise LoopError(f"v2 failed its gate: {'; '.join(result.decision.reasons)}")
        progress(f"v2 passed its gate (shifted mAP {result.evaluation.baseline_shifted:.2f} -> "
                 f"{result.evaluation.candidate_shifted:.2f}); rolling out, canary first")
        fetched_before = _fetched_bytes(gateway)
        rollout = controller.start(
            site=site, name=MODEL, version="2", canary_group=CANARY,
            promote_after_s=settings.promote_after_s,
        )
        stages = _follow_rollout(controller, rollout.id, settings, progress, stop)
        reports = controller.reports(site)  # while the cameras still run and report
        if while_running is not None:
            while_running()
    finally:
        cameras.stop()
    size = result.published.manifest.size
    fetched = _fetched_bytes(gateway) - fetched_before
    return {
        **result.summary(),
        "labels": "synthetic scene ground truth (not a person, not a model)",
        "rollout": " -> ".join(stages),
        "devices_on_v2": sum(r.sha256 == result.published.manifest.sha256 for r in reports),
        "devices": len(reports),
        "model_uplink_copies": round(fetched / size, 3),
        "frames_with_v2": cameras.frames_by_version().get("2", 0),
    }


def _fetched_bytes(gateway: Gateway) -> float:
    """Artifact bytes the gateway has fetched from the cloud so far."""
    metrics = gateway.metrics.registry
    return metrics.get_sample_value("evc_gateway_model_fetched_bytes_total") or 0.0


class _Cameras:
    """The site's simulated cameras: one canary and the rest, sampling, following models."""

    def __init__(
        self, work: Path, site: str, fog_url: str, public_key: Path, *, settings: LoopSettings
    ) -> None:
        self._stop = threading.Event()
        self._results: list[SimulationResult] = []
        groups = [(CANARY, 1), ("all", max(1, settings.cameras - 1))]
        self._threads = [
            threading.Thread(
                target=self._run, args=(_camera_config(
                    work, site, fog_url, public_key, settings=settings, group=group, count=count
                ),),
                name=f"cameras-{group}", daemon=True,
            )
            for group, count in groups
        ]

    def _run(self, config: DeviceConfig) -> None:
        self._results.append(simulate(config, stop=self._stop))

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def frames_by_version(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for result in self._results:
            for version, frames in result.frames_by_model.items():
                counts[version] = counts.get(version, 0) + frames
        return counts


def _camera_config(
    work: Path, site: str, fog_url: str, public_key: Path, *, settings: LoopSettings,
    group: str, count: int,
) -> DeviceConfig:
    return DeviceConfig(
        site=site, device_id="canary" if group == CANARY else "cam",
        fog=BrokerConfig(url=fog_url), state_dir=work / "devices", heartbeat_interval_s=1.0,
        detector=DetectorConfig(model=sample_model_path(), intra_op_threads=1),
        publish=PublishConfig(mode=PublishMode.ON_CHANGE, keyframe_interval_s=2.0),
        simulate=SimulationConfig(
            devices=count, fps=settings.fps, seed=100 if group == CANARY else 200,
            shift_after_s=settings.shift_after_s,
        ),
        sampling=SamplingConfig(
            enabled=True, max_per_minute=60, max_per_hour=600,
            samplers=[
                NearThresholdSampler(type="near_threshold", low=0.25, high=0.6),
                FewSampler(type="few", count=2),
                RandomSampler(type="random", probability=0.05),
            ],
        ),
        models=DeviceModelsConfig(
            trusted_keys=[public_key], group=group, probation_s=3.0, max_latency_ratio=10.0,
        ),
    )


def _wait_for_samples(
    cloud: CloudIngest, settings: LoopSettings, progress: Progress, stop: threading.Event
) -> int:
    deadline = time.monotonic() + settings.sample_timeout_s
    samples, reported = 0, -1
    while time.monotonic() < deadline and not stop.is_set():
        samples = cloud.store.stats().by_kind.get(int(Kind.SAMPLE), 0)
        if samples >= settings.samples:
            break
        if samples // 20 != reported:
            reported = samples // 20
            progress(f"the scene shifted; {samples} hard examples in the cloud")
        time.sleep(0.5)
    if samples == 0:
        raise LoopError("no hard examples reached the cloud")
    return samples


def _follow_rollout(
    controller: Any, rollout_id: int, settings: LoopSettings, progress: Progress,
    stop: threading.Event,
) -> list[str]:
    stages = [Stage.CANARY.value]
    deadline = time.monotonic() + settings.rollout_timeout_s
    while time.monotonic() < deadline and not stop.is_set():
        rollout = controller.get(rollout_id)
        if rollout.stage.value != stages[-1]:
            stages.append(rollout.stage.value)
            progress(f"rollout {rollout.stage.value}: {rollout.reason}")
        if rollout.stage in (Stage.COMPLETE, Stage.HALTED):
            break
        time.sleep(0.25)
    if stages[-1] != Stage.COMPLETE.value:
        raise LoopError(f"the rollout did not complete: {' -> '.join(stages)}")
    return stages
