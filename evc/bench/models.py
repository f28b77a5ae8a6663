"""The learning loop's figures: one model copy per site on the uplink, and what a v2 gains.

Delivery runs on real brokers: a cloud :class:`~evc.cloud.models.ModelService` with v1 and v2 in
its registry, one gateway :class:`~evc.gateway.models.ModelRelay` and many devices behind it (a
:class:`~evc.device.updates.ModelUpdater` and an ONNX Runtime
:class:`~evc.device.model_slot.ModelSlot` each). v2 becomes the site default and the run waits
until every device runs it; the cloud's chunk server says how many artifact bytes crossed the
uplink.

The gain is measured without brokers (the MQTT path of samples is tested elsewhere): shifted
camera frames go through the v1 Detector and a HardExampleSampler per camera; the samples are
encoded and decoded as SAMPLE records, labelled from the scene's truth, fine-tuned into v2 and
both models are scored on held-out shifted and base frames, then gated.
"""

from __future__ import annotations

import itertools
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from evc.bench.processes import BenchError
from evc.cloud.dataset import Dataset, Item, ItemId
from evc.cloud.labelling import SyntheticTruthLabeller
from evc.cloud.models import ModelService
from evc.cloud.store import SqliteRecordStore
from evc.cloud.trainer import (
    SampleModelConfig,
    SampleModelTrainer,
    evaluate_candidate,
    gate,
    training_images,
)
from evc.config import FewSampler, NearThresholdSampler, SamplingConfig
from evc.device.model_slot import ModelSlot
from evc.device.sampling import HardExampleSampler
from evc.device.updates import ModelUpdater
from evc.gateway.models import ModelRelay
from evc.harness import Broker
from evc.inference import Detector
from evc.metrics import GatewayMetrics
from evc.models.signing import SigningKey, TrustedKeys, generate_keypair
from evc.mqtt.client import BrokerAddress
from evc.synthetic import Domain, SceneConfig, SyntheticCamera
from evc.synthetic.sample_model import sample_model_copy, sample_model_path
from evc.wire import decode, encode_sample, sample_from

MODEL_NAME = "shapes"
SWAP_TIMEOUT_S = 180.0
# Cameras of the learning run; far from the held-out seeds (7,000,001 and 7,000,002).
CAMERA_SEED = 12_000
CAMERA_FPS = 10.0
OFFER_EVERY = 5  # frames: consecutive frames of one camera are nearly the same picture
MAX_FRAMES_PER_CAMERA = 400


# -- delivery --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeliveryFigures:
    """One rollout of v2 to a site: what crossed the uplink and the site's broker."""

    model_uplink_copies_per_site: float
    model_swap_s: float
    devices: int
    artifact_bytes: int
    cloud_bytes_served: int
    relay_fetched_bytes: int
    fog_bytes_served: int
    fog_copies: float
    device_duplicate_chunks: int  # chunks devices received twice (re-asked after a quiet spell)
    rss_mb_before_devices: float
    rss_mb_all_swapped: float


def _rss_mb() -> float:
    """Resident memory of this process now, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _light_detector(path: Path) -> Detector:
    return Detector(path, intra_op_threads=1)


def measure_delivery(
    fog: Broker, cloud: Broker, workdir: Path, *, devices: int
) -> DeliveryFigures:
    """Roll v2 out to ``devices`` devices behind one gateway; see the figures' method text."""
    site = f"models-{uuid.uuid4().hex[:8]}"
    fog_at, cloud_at = BrokerAddress.from_url(fog.url), BrokerAddress.from_url(cloud.url)
    keys = generate_keypair(workdir / "keys")
    key, trusted = SigningKey.load(keys.private_path), TrustedKeys.load([keys.public_path])
    with ExitStack() as stack:
        store = SqliteRecordStore(workdir / "cloud.db")
        stack.callback(store.close)
        service = ModelService(
            address=cloud_at, registry=workdir / "registry", store=store, tick_s=0.5
        )
        service.start()
        stack.callback(service.stop)
        service.registry.publish(name=MODEL_NAME, version="1", artifact=sample_model_path(),
                                 key=key)
        v2 = service.registry.publish(
            name=MODEL_NAME, version="2", key=key,
            artifact=sample_model_copy(workdir / "v2.onnx", version="2"),
        )
        relay = ModelRelay(
            site=site, gateway_id="gw-1", fog=fog_at, cloud=cloud_at,
            folder=workdir / "gateway-models", trusted=trusted, metrics=GatewayMetrics().models,
        )
        relay.start()
        stack.callback(relay.stop)
        rss_before = _rss_mb()
        updaters = [
            _device(site, f"cam-{n:02d}", fog=fog_at, trusted=trusted,
                    folder=workdir / "devices", stack=stack)
            for n in range(devices)
        ]
        assert service.controller is not None
        started = time.monotonic()
        service.controller.set_default(site=site, name=MODEL_NAME, version="2")
        _wait_swapped(updaters, started)
        swap_s = time.monotonic() - started
        rss_after = _rss_mb()
        size = v2.manifest.size
        cloud_bytes, fetched = service.server.bytes_served, relay.fetcher.bytes_received
        if cloud_bytes != fetched:
            raise BenchError(f"the cloud served {cloud_bytes} B but the gateway fetched {fetched}")
        return DeliveryFigures(
            model_uplink_copies_per_site=cloud_bytes / size, model_swap_s=swap_s,
            devices=devices, artifact_bytes=size, cloud_bytes_served=cloud_bytes,
            relay_fetched_bytes=fetched, fog_bytes_served=relay.server.bytes_served,
            fog_copies=relay.server.bytes_served / size,
            device_duplicate_chunks=sum(u.fetcher.duplicates for u in updaters),
            rss_mb_before_devices=round(rss_before, 1), rss_mb_all_swapped=round(rss_after, 1),
        )


def _device(
    site: str, device: str, *, fog: BrokerAddress, trusted: TrustedKeys, folder: Path,
    stack: ExitStack,
) -> ModelUpdater:
    """One device's slot (running v1) and updater, stopped when ``stack`` closes."""
    slot = ModelSlot(
        models_dir=folder / device / "models", initial=sample_model_path(),
        detector_factory=_light_detector,
    )
    updater = ModelUpdater(
        site=site, device_id=device, address=fog, slot=slot, trusted=trusted,
        folder=folder / device / "downloads",
    ).start()
    stack.callback(updater.stop)
    return updater


def _wait_swapped(updaters: list[ModelUpdater], started: float) -> None:
    while not all(u.slot.status().version == "2" for u in updaters):
        if time.monotonic() - started > SWAP_TIMEOUT_S:
            behind = sum(u.slot.status().version != "2" for u in updaters)
            refused = sum((u.refused for u in updaters), Counter[str]())
            raise BenchError(f"{behind} devices still run v1 (refusals: {dict(refused)})")
        time.sleep(0.05)


# -- the gain of a v2 trained by the loop ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class LearningFigures:
    """A v2 trained on the loop's own hard examples, scored against v1."""

    model_v2_map50_gain: float
    v1_shifted_map50: float
    v2_shifted_map50: float
    v1_base_map50: float
    v2_base_map50: float
    gate_passed: bool
    gate_reasons: tuple[str, ...]
    cameras: int
    frames_offered: int
    samples: int
    samples_by_reason: dict[str, int]
    train_budget_s: float
    train_seconds: float
    train_steps: int
    eval_frames: int
    eval_seed: int


def hard_examples(*, cameras: int, per_camera: int) -> tuple[Dataset, int]:
    """Shifted frames through v1 and a sampler per camera, as decoded SAMPLE records; and how
    many frames were offered.

    Every camera offers every ``OFFER_EVERY``-th frame; its sampler's budget (``per_camera``
    an hour, all of it available within a minute) ends its sampling.
    """
    detector = Detector(sample_model_path(), intra_op_threads=1)
    config = SamplingConfig(
        enabled=True, max_per_minute=per_camera, max_per_hour=per_camera,
        samplers=[NearThresholdSampler(type="near_threshold"), FewSampler(type="few", count=1)],
    )
    items: list[Item] = []
    offered = 0
    for cam in range(cameras):
        sampler = HardExampleSampler(config)
        camera = SyntheticCamera(seed=CAMERA_SEED + cam, config=SceneConfig(domain=Domain.SHIFTED))
        frames = itertools.islice(camera, 0, MAX_FRAMES_PER_CAMERA, OFFER_EVERY)
        for frame in frames:
            offered += 1
            now_s = frame.index / CAMERA_FPS
            sample = sampler.consider(
                detector(frame.image), frame.image, now_s=now_s,
                truth=(frame.class_ids, frame.boxes), model_version=detector.model_version,
            )
            if sample is not None:
                origin, seq, ts_ms = f"cam-{cam}", len(items), int(now_s * 1000)
                record = encode_sample(origin=origin, epoch=1, seq=seq, ts_ms=ts_ms,
                                       sample=sample)
                items.append(Item(ItemId("bench", origin, 1, seq), ts_ms,
                                  sample_from(decode(record))))
            if sum(sampler.sampled.values()) >= per_camera:
                break
    return Dataset(items=items), offered


def measure_learning(
    workdir: Path, *, cameras: int, per_camera: int, budget_s: float, eval_frames: int
) -> LearningFigures:
    """Train v2 from v1 on the loop's hard examples and score both; see the method text."""
    sampled, offered = hard_examples(cameras=cameras, per_camera=per_camera)
    dataset = sampled.label(SyntheticTruthLabeller())
    images = training_images(dataset)
    if not images:
        raise BenchError("the samplers picked no hard example to train on")
    v1, v2 = sample_model_path(), workdir / "v2.onnx"
    trainer = SampleModelTrainer(config=SampleModelConfig(version="shapes-2-bench"))
    result = trainer.train(images, base_model=v1, out=v2, budget_s=budget_s)
    evaluation = evaluate_candidate(v2, v1, frames=eval_frames)
    decision = gate(evaluation)
    return LearningFigures(
        model_v2_map50_gain=evaluation.shifted_gain,
        v1_shifted_map50=evaluation.baseline_shifted, v2_shifted_map50=evaluation.candidate_shifted,
        v1_base_map50=evaluation.baseline_base, v2_base_map50=evaluation.candidate_base,
        gate_passed=decision.passed, gate_reasons=decision.reasons, cameras=cameras,
        frames_offered=offered, samples=len(images),
        samples_by_reason=dict(Counter(item.sample.reason for item in dataset)),
        train_budget_s=budget_s, train_seconds=result.seconds, train_steps=result.steps,
        eval_frames=eval_frames, eval_seed=evaluation.seed,
    )
