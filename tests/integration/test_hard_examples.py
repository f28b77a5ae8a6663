"""Hard examples travel from a device's sampler through a gateway's ``sample`` operator to the
cloud store: the stored pixels are the frames sent, the truth rides along, and exactly what the
budgets allow is stored (the rest counted on the device and on the gateway)."""

from __future__ import annotations

import itertools
import sqlite3
from contextlib import ExitStack, closing
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    cloud_config,
    gateway_config,
    sample_value,
    start_cloud,
    start_device,
    start_gateway,
    stored_keys,
    wait_for,
)

from evc.config import DetectorConfig, DeviceConfig, SamplingConfig, SimulationConfig
from evc.device import HardExampleSampler
from evc.device.simulate import simulate
from evc.harness import Broker
from evc.inference import Detections
from evc.synthetic import Frame, SyntheticCamera
from evc.synthetic.sample_model import sample_model_path
from evc.wire import Kind, Sample, decode, sample_from

pytestmark = pytest.mark.integration

FRAMES = 16
SYNTHETIC = {"truth": "synthetic-scene"}


def _samples(store_path: Path, site: str) -> dict[int, Sample]:
    """The SAMPLE records stored for ``site``, by sequence number (read-only)."""
    if not store_path.exists():
        return {}
    with closing(sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)) as db:
        db.execute("PRAGMA busy_timeout=5000")
        try:
            rows = db.execute(
                "SELECT seq, payload FROM records WHERE site = ? AND kind = ?",
                (site, int(Kind.SAMPLE)),
            ).fetchall()
        except sqlite3.OperationalError:  # the schema is not created yet
            return {}
    return {seq: sample_from(decode(payload)) for seq, payload in rows}


def _detections(frame: Frame, score: float) -> Detections:
    """What a model would say about ``frame``: its true boxes, all at ``score``."""
    height, width = frame.image.shape[:2]
    return Detections(
        class_ids=frame.class_ids.astype(np.uint16),
        scores=np.full(len(frame.class_ids), score, dtype=np.float32),
        boxes=frame.boxes.astype(np.float32), width=width, height=height,
    )


def _assert_carries(sample: Sample, frame: Frame) -> None:
    assert sample.whole_frame
    assert np.array_equal(sample.frame(), frame.image)
    assert sample.truth_class_ids is not None
    assert sample.truth_boxes is not None
    assert sample.truth_class_ids.tolist() == frame.class_ids.tolist()
    assert np.array_equal(sample.truth_boxes, frame.boxes.astype(np.float32))
    assert dict(sample.meta) == SYNTHETIC


def test_hard_examples_reach_the_cloud_within_both_budgets(
    evc_fog_broker: Broker, evc_cloud_broker: Broker, evc_topic_namespace: str, tmp_path: Path,
) -> None:
    site = evc_topic_namespace
    store_path = tmp_path / "cloud" / "records.db"
    # Even frames are unsure (near_threshold), odd ones sure but sampled anyway (random).
    sampling = SamplingConfig(
        enabled=True, max_per_minute=6, max_per_hour=6,
        samplers=[{"type": "near_threshold", "low": 0.25, "high": 0.5},
                  {"type": "random", "probability": 1.0}],
    )
    pipeline = [{"type": "sample", "max_per_minute": 2, "max_per_hour": 2,
                 "reasons": ["near_threshold"]}]
    frames = list(itertools.islice(SyntheticCamera(seed=3), FRAMES))
    with ExitStack() as stack:
        start_cloud(stack, cloud_config(site=site, store_path=store_path, cloud=evc_cloud_broker))
        gateway = start_gateway(stack, gateway_config(
            site=site, state_dir=tmp_path / "gw", fog=evc_fog_broker, cloud=evc_cloud_broker,
            pipeline=pipeline,
        ))
        device = start_device(
            stack, site, "cam-1", evc_fog_broker, tmp_path / "dev",
            sampler=HardExampleSampler(sampling),
        )
        sent_after = []
        for index, frame in enumerate(frames):
            device.publish_frame(
                _detections(frame, 0.4 if index % 2 == 0 else 0.9), image=frame.image,
                truth=(frame.class_ids, frame.boxes), meta=SYNTHETIC,
            )
            sent_after.append(device.samples_sent)
        # The device's budget: the first six frames (three of each reason), ten counted over.
        assert sent_after[5:] == [6] * (FRAMES - 5)
        assert device.sampler is not None
        assert device.sampler.sampled == {"near_threshold": 3, "random": 3}
        assert device.sampler.skipped == {"budget": FRAMES - 6}

        def sampled(outcome: str, reason: str = "") -> float:
            return sample_value(
                gateway.metrics.registry, "evc_gateway_pipeline_frames_total",
                {"operator": "sample", "outcome": outcome, "reason": reason},
            )

        # The gateway's: random is not allowed, and two near_threshold samples per device.
        wait_for(lambda: sampled("passed") + sampled("dropped", "reason_not_allowed")
                 + sampled("dropped", "budget_device") == 6,
                 message="the gateway to decide on all six samples")
        assert sampled("passed") == 2
        assert sampled("dropped", "reason_not_allowed") == 3
        assert sampled("dropped", "budget_device") == 1
        # Detections of every frame go on regardless of sampling.
        wait_for(lambda: len(stored_keys(store_path, site)) == FRAMES,
                 message="every detections frame stored")
        stored = wait_for(lambda: len(_samples(store_path, site)) == 2 and _samples(
            store_path, site), message="two samples stored")
        assert device.wait_until_sent(10)

    # Frames 0 and 2 were near_threshold; frame 4 was the third, over the gateway's budget.
    assert [sample.reason for _, sample in sorted(stored.items())] == ["near_threshold"] * 2
    for (_, sample), frame in zip(sorted(stored.items()), [frames[0], frames[2]], strict=True):
        _assert_carries(sample, frame)
        assert sample.model_version == "test-0"
        assert sample.scores.tolist() == pytest.approx([0.4] * len(frame.class_ids), abs=0.003)
    assert len(_samples(store_path, site)) == 2


def test_simulated_cameras_sample_their_frames_with_the_scene_truth(
    evc_fog_broker: Broker, evc_cloud_broker: Broker, evc_topic_namespace: str, tmp_path: Path,
) -> None:
    site = evc_topic_namespace
    store_path = tmp_path / "cloud" / "records.db"
    config = DeviceConfig(
        site=site, device_id="sim", fog={"url": evc_fog_broker.url},
        state_dir=tmp_path / "dev", heartbeat_interval_s=3600,
        detector=DetectorConfig(model=sample_model_path(), intra_op_threads=1),
        simulate=SimulationConfig(devices=1, fps=20, duration_s=1.0, seed=11),
        sampling=SamplingConfig(
            enabled=True, max_per_minute=3, max_per_hour=3,
            samplers=[{"type": "random", "probability": 1.0}],
        ),
    )
    with ExitStack() as stack:
        start_cloud(stack, cloud_config(site=site, store_path=store_path, cloud=evc_cloud_broker))
        start_gateway(stack, gateway_config(
            site=site, state_dir=tmp_path / "gw", fog=evc_fog_broker, cloud=evc_cloud_broker,
        ))
        result = simulate(config)
        assert result.frames >= 4
        assert result.unsent == 0
        assert (result.samples, result.samples_over_budget) == (3, result.frames - 3)
        stored = wait_for(lambda: len(_samples(store_path, site)) == 3 and _samples(
            store_path, site), message="three samples stored")

    # Sampled with probability 1 within a budget of three: the camera's first three frames.
    replay = list(itertools.islice(SyntheticCamera(seed=11), 3))
    for (_, sample), frame in zip(sorted(stored.items()), replay, strict=True):
        assert sample.reason == "random"
        _assert_carries(sample, frame)
