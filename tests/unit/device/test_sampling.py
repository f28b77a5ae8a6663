"""Hard-example sampling: each sampler, the budget, what a sample carries, and the device."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from pydantic import ValidationError

from evc.config import DeviceConfig, SamplingConfig
from evc.device import Device, HardExampleSampler, SampleBudget
from evc.errors import FrameError, PayloadTooLargeError
from evc.inference import Detections
from evc.outbox import Priority
from evc.wire import Channel, DeviceTopic, Kind, decode, map_from, sample_from

W, H = 64, 48


def detections(scores: list[float], classes: list[int] | None = None) -> Detections:
    n = len(scores)
    return Detections(
        class_ids=np.asarray(classes if classes is not None else [0] * n, dtype=np.uint16),
        scores=np.asarray(scores, dtype=np.float32),
        boxes=np.asarray([[4 * i, 4, 4 * i + 10, 20] for i in range(n)], np.float32).reshape(-1, 4),
        width=W, height=H,
    )


def image(seed: int = 0) -> npt.NDArray[np.uint8]:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def sampler(*samplers: dict[str, Any], **settings: Any) -> HardExampleSampler:
    settings.setdefault("max_per_minute", 1000)
    settings.setdefault("max_per_hour", 1000)
    config = SamplingConfig(enabled=True, samplers=list(samplers), **settings)
    return HardExampleSampler(config, rng=np.random.default_rng(7))


NEAR = {"type": "near_threshold", "low": 0.25, "high": 0.5}

# -- samplers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("scores", "hard"), [
    ([0.9, 0.8], False), ([0.9, 0.3], True), ([0.25], True), ([0.5], True),
    ([0.24, 0.51], False), ([], False),
])
def test_near_threshold_picks_frames_with_an_unsure_score(scores: list[float], hard: bool) -> None:
    assert (sampler(NEAR).reason(detections(scores)) == "near_threshold") is hard


def test_few_and_many_compare_the_detection_count() -> None:
    few = sampler({"type": "few", "count": 2})
    assert [few.reason(detections([0.9] * n)) for n in (0, 1, 2)] == ["few", "few", None]
    many = sampler({"type": "many", "count": 2})
    assert [many.reason(detections([0.9] * n)) for n in (2, 3)] == [None, "many"]


def test_classes_picks_frames_with_a_listed_class() -> None:
    rare = sampler({"type": "classes", "class_ids": [3, 5]})
    assert rare.reason(detections([0.9, 0.9], [0, 1])) is None
    assert rare.reason(detections([0.9, 0.9], [0, 5])) == "classes"


def test_random_follows_its_seeded_probability() -> None:
    assert sampler({"type": "random", "probability": 0.0}).reason(detections([0.9])) is None
    assert sampler({"type": "random", "probability": 1.0}).reason(detections([0.9])) == "random"
    half = sampler({"type": "random", "probability": 0.5})
    picks = [half.reason(detections([0.9])) == "random" for _ in range(200)]
    expected = (np.random.default_rng(7).random(200) < 0.5).tolist()
    assert picks == expected


def test_the_first_sampler_that_picks_names_the_reason() -> None:
    both = sampler({"type": "few", "count": 5}, NEAR)
    assert both.reason(detections([0.3])) == "few"
    assert sampler(NEAR, {"type": "few", "count": 5}).reason(detections([0.3])) == "near_threshold"


def test_a_disabled_sampler_samples_nothing() -> None:
    off = HardExampleSampler(SamplingConfig(samplers=[{"type": "random", "probability": 1.0}]))
    assert off.consider(detections([0.3]), image(), now_s=0.0) is None
    assert not off.sampled


def test_config_defaults_and_cross_field_rules() -> None:
    config = DeviceConfig(site="s", device_id="d").sampling
    assert not config.enabled
    assert (config.max_per_minute, config.max_per_hour, config.content) == (6, 60, "frame")
    with pytest.raises(ValidationError, match="max_per_minute"):
        SamplingConfig(max_per_minute=10, max_per_hour=5)
    with pytest.raises(ValidationError, match="low must not be above high"):
        SamplingConfig(samplers=[{"type": "near_threshold", "low": 0.6, "high": 0.5}])
    with pytest.raises(ValidationError):
        SamplingConfig(samplers=[{"type": "sometimes"}])


# -- budget ------------------------------------------------------------------------------------


def test_budget_allows_a_burst_per_minute_then_refills() -> None:
    budget = SampleBudget(per_minute=3, per_hour=100)
    assert [budget.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not budget.take(19.0)  # one sample per 20 s comes back
    assert budget.take(20.0)
    assert not budget.take(20.0)


def test_budget_per_hour_binds_across_minutes() -> None:
    budget = SampleBudget(per_minute=2, per_hour=3)
    taken = [budget.take(60.0 * minute) for minute in range(5) for _ in range(2)]
    assert sum(taken) == 3
    assert budget.take(60.0 * 4 + 1200.0)  # 3600 / 3 s later one hourly sample is back


def test_over_budget_hard_examples_are_counted_not_sent() -> None:
    hard = sampler(NEAR, max_per_minute=2, max_per_hour=2)
    got = [hard.consider(detections([0.3]), image(), now_s=float(t)) for t in range(5)]
    assert [s is not None for s in got] == [True, True, False, False, False]
    assert hard.sampled == {"near_threshold": 2}
    assert hard.skipped == {"budget": 3}
    assert hard.consider(detections([0.9]), image(), now_s=6.0) is None
    assert hard.skipped == {"budget": 3}  # an easy frame is not over budget, just not sampled


# -- what a sample carries ---------------------------------------------------------------------


def test_a_frame_sample_carries_every_pixel_the_predictions_and_truth() -> None:
    frame = image(1)
    det = detections([0.3, 0.9], [2, 1])
    sample = sampler(NEAR).consider(
        det, frame, now_s=0.0, truth=([2, 4], [[1, 2, 11, 12], [20, 20, 30, 40]]),
        model_version="m-3", meta={"truth": "synthetic-scene"},
    )
    assert sample is not None
    payload = _roundtrip(sample)
    assert payload.whole_frame
    assert np.array_equal(payload.frame(), frame)
    assert (payload.model_version, payload.reason, payload.width, payload.height) == (
        "m-3", "near_threshold", W, H)
    assert payload.class_ids.tolist() == [2, 1]
    assert payload.scores.tolist() == pytest.approx([0.3, 0.9], abs=0.003)
    assert np.allclose(payload.boxes, det.boxes, atol=0.01)
    assert payload.truth_class_ids is not None
    assert payload.truth_boxes is not None
    assert payload.truth_class_ids.tolist() == [2, 4]
    assert payload.truth_boxes.tolist() == [[1, 2, 11, 12], [20, 20, 30, 40]]
    assert dict(payload.meta) == {"truth": "synthetic-scene"}


def test_a_crops_sample_carries_only_the_pixels_around_boxes() -> None:
    frame = image(2)
    det = Detections(
        class_ids=np.asarray([0], np.uint16), scores=np.asarray([0.3], np.float32),
        boxes=np.asarray([[10, 10, 20, 20]], np.float32), width=W, height=H,
    )
    crop = sampler(NEAR, content="crops", crop_margin=2)
    sample = crop.consider(det, frame, now_s=0.0, truth=([1], [[40, 30, 50, 40]]))
    assert sample is not None
    payload = _roundtrip(sample)
    assert not payload.whole_frame
    assert [r.box for r in payload.regions] == [(8, 8, 22, 22), (38, 28, 52, 42)]
    canvas = payload.frame()
    inside = np.zeros((H, W), bool)
    inside[8:22, 8:22] = inside[28:42, 38:52] = True
    assert np.array_equal(canvas[inside], frame[inside])
    assert not canvas[~inside].any()


def test_crops_without_any_box_are_counted_and_not_sent() -> None:
    crop = sampler({"type": "few", "count": 1}, content="crops")
    assert crop.consider(detections([]), image(), now_s=0.0) is None
    assert crop.skipped == {"no_pixels": 1}


def test_the_sample_keeps_the_pixels_even_if_the_camera_reuses_its_buffer() -> None:
    frame = image(3)
    original = frame.copy()
    sample = sampler(NEAR).consider(detections([0.3]), frame, now_s=0.0)
    frame[:] = 0
    assert sample is not None
    assert np.array_equal(sample.frame(), original)


def test_an_image_of_another_size_is_refused() -> None:
    with pytest.raises(FrameError):
        sampler(NEAR).consider(detections([0.3]), image()[:, :10], now_s=0.0)


def _roundtrip(sample: Any) -> Any:
    from evc.wire import encode_sample  # noqa: PLC0415 -- used only here

    return sample_from(decode(encode_sample(origin="cam", epoch=1, seq=2, ts_ms=3, sample=sample)))


# -- the device --------------------------------------------------------------------------------


@pytest.fixture
def device(tmp_path: Path) -> Iterator[Device]:
    """A device that is never started: records stay in its buffer for the test to read."""
    made = Device(
        device_id="cam-1", site="depot", state_dir=tmp_path, heartbeat_interval_s=0,
        model_version="m-1", sampler=sampler(NEAR, max_per_minute=2, max_per_hour=2),
    )
    yield made
    made.buffer.close()


def buffered(device: Device) -> list[tuple[str, Priority, Kind]]:
    rows = device.buffer.peek(max_records=100, max_bytes=10**8)
    return [(row.topic, row.priority, decode(row.payload).kind) for row in rows]


def test_device_publishes_hard_examples_at_sample_priority(device: Device) -> None:
    for _ in range(4):
        device.publish_frame(detections([0.3]), image=image(), truth=([0], [[1, 1, 5, 5]]))
    device.publish_frame(detections([0.9]), image=image())  # easy: not sampled
    sample_topic = str(DeviceTopic("depot", "cam-1", Channel.SAMPLE))
    samples = [row for row in buffered(device) if row[0] == sample_topic]
    assert samples == [(sample_topic, Priority.SAMPLE, Kind.SAMPLE)] * 2
    assert device.samples_sent == 2
    assert device.sampler is not None
    assert device.sampler.skipped == {"budget": 2}
    rows = device.buffer.peek(max_records=100, max_bytes=10**8)
    stored = sample_from(decode(next(r.payload for r in rows if r.topic == sample_topic)))
    assert stored.model_version == "m-1"
    assert np.array_equal(stored.frame(), image())
    device.publish_heartbeat()
    beat = next(r for r in device.buffer.peek(max_records=100, max_bytes=10**8)
                if decode(r.payload).kind is Kind.HEARTBEAT)
    fields = map_from(decode(beat.payload))
    assert (fields["samples_sent"], fields["samples_over_budget"]) == (2, 2)


def test_a_suppressed_frame_is_still_offered_to_the_sampler(tmp_path: Path) -> None:
    from evc.device import ChangeFilter, PublishMode  # noqa: PLC0415 -- used only here

    device = Device(
        device_id="cam-2", site="depot", state_dir=tmp_path, heartbeat_interval_s=0,
        change_filter=ChangeFilter(mode=PublishMode.ON_CHANGE, keyframe_interval_s=0),
        sampler=sampler(NEAR),
    )
    try:
        keys = [device.publish_frame(detections([0.3]), image=image()) for _ in range(3)]
        assert keys[0] is not None
        assert keys[1:] == [None, None]
        assert device.samples_sent == 3
        kinds = [kind for _, _, kind in buffered(device)]
        assert kinds.count(Kind.DETECTIONS) == 1
        assert kinds.count(Kind.SAMPLE) == 3
    finally:
        device.buffer.close()


def test_frames_without_an_image_are_not_sampled(device: Device) -> None:
    device.publish_frame(detections([0.3]))
    assert device.samples_sent == 0
    assert [kind for _, _, kind in buffered(device)] == [Kind.DETECTIONS]


def test_an_oversized_sample_is_refused_or_counted(tmp_path: Path) -> None:
    device = Device(
        device_id="cam-3", site="depot", state_dir=tmp_path, heartbeat_interval_s=0,
        max_record_bytes=2048, sampler=sampler(NEAR),
    )
    try:
        hard = sampler(NEAR).consider(detections([0.3]), image(), now_s=0.0)
        assert hard is not None
        with pytest.raises(PayloadTooLargeError):
            device.publish_sample(hard)  # random pixels do not compress below 2 KiB
        assert device.publish_frame(detections([0.3]), image=image()) is not None
        assert device.sampler is not None
        assert device.sampler.skipped == {"too_large": 1}
        assert device.samples_sent == 0
        assert [kind for _, _, kind in buffered(device)] == [Kind.DETECTIONS]
    finally:
        device.buffer.close()
