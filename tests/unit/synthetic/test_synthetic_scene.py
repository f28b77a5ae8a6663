"""The synthetic camera: deterministic, fast, valid ground truth, smooth motion, shiftable."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

from evc.errors import ConfigError
from evc.synthetic import CLASS_NAMES, Domain, Frame, SceneConfig, SyntheticCamera, random_frames


def _assert_valid(frame: Frame, config: SceneConfig) -> None:
    assert frame.image.shape == (config.height, config.width, 3)
    assert frame.image.dtype == np.uint8
    n = len(frame.boxes)
    assert frame.boxes.shape == (n, 4)
    assert frame.boxes.dtype == np.float32
    assert frame.class_ids.shape == frame.track_ids.shape == (n,)
    assert config.min_objects <= n <= config.max_objects
    assert set(frame.class_ids.tolist()) <= set(range(len(config.classes)))
    x1, y1, x2, y2 = frame.boxes.T
    assert (x1 >= 0).all()
    assert (y1 >= 0).all()
    assert (x2 <= config.width).all()
    assert (y2 <= config.height).all()
    sizes = x2 - x1
    assert (sizes >= config.min_size - 1e-4).all()
    assert (sizes <= config.max_size + 1e-4).all()
    for a, b in itertools.combinations(frame.boxes, 2):
        apart = a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]
        assert apart, "objects must not overlap"


def test_random_frames_are_seeded() -> None:
    first = list(random_frames(7, 5))
    again = list(random_frames(7, 5))
    other = list(random_frames(8, 5))
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.image, b.image)
        assert np.array_equal(a.boxes, b.boxes)
    assert not all(np.array_equal(a.image, b.image) for a, b in zip(first, other, strict=True))
    assert [f.index for f in first] == list(range(5))


@pytest.mark.parametrize("domain", list(Domain))
def test_random_frames_have_valid_ground_truth(domain: Domain) -> None:
    config = SceneConfig(domain=domain)
    frames = list(random_frames(0, 60, config=config))
    for frame in frames:
        _assert_valid(frame, config)
        assert frame.domain is domain
    classes = np.concatenate([f.class_ids for f in frames])
    assert set(classes.tolist()) == {0, 1, 2}


def test_objects_are_painted_where_their_boxes_are() -> None:
    config = SceneConfig(noise_std=0.0, min_objects=1, max_objects=1, min_size=30, max_size=30)
    for frame in random_frames(3, 10, config=config):
        x1, y1, x2, y2 = frame.boxes[0].astype(int) + np.array([0, 0, -1, -1])
        outside = frame.image[y1, x1 - 2 if x1 >= 2 else x2 + 2].astype(float)
        centre = frame.image[(y1 + y2) // 2, (x1 + x2) // 2].astype(float)
        corner = frame.image[y1 + 1, x1 + 1].astype(float)
        assert np.abs(centre - outside).sum() > 30, "every shape covers its box centre"
        if CLASS_NAMES[frame.class_ids[0]] == "square":
            assert np.abs(corner - centre).sum() < 30  # only the light gradient differs
        else:  # circles and triangles leave the top-left corner of their box bare
            assert np.abs(corner - outside).sum() < 30


def test_generation_is_far_faster_than_real_time() -> None:
    start = time.perf_counter()
    frames = list(random_frames(1, 100))
    camera = list(itertools.islice(SyntheticCamera(seed=1), 100))
    elapsed = time.perf_counter() - start
    assert len(frames) == len(camera) == 100
    assert elapsed < 2.0, f"{elapsed / 200 * 1000:.1f} ms per frame"


def test_camera_is_seeded_and_objects_move_smoothly() -> None:
    config = SceneConfig(min_objects=3, max_objects=6, turnover=0.0, max_speed=2.0)
    frames = list(itertools.islice(SyntheticCamera(seed=5, config=config), 150))
    again = list(itertools.islice(SyntheticCamera(seed=5, config=config), 150))
    assert all(np.array_equal(a.image, b.image) for a, b in zip(frames, again, strict=True))
    moved = 0.0
    for before, after in itertools.pairwise(frames):
        _assert_valid(after, config)
        assert np.array_equal(before.track_ids, after.track_ids)
        assert np.array_equal(before.class_ids, after.class_ids)
        step = np.abs(after.boxes - before.boxes).max(initial=0.0)
        assert step <= config.max_speed + 1e-4
        moved += step
    assert moved > 50, "objects should travel"
    assert [f.index for f in frames[:3]] == [0, 1, 2]


def test_camera_turnover_brings_new_objects() -> None:
    config = SceneConfig(turnover=0.3)
    frames = list(itertools.islice(SyntheticCamera(seed=2, config=config), 100))
    tracks = set(np.concatenate([f.track_ids for f in frames]).tolist())
    assert len(tracks) > config.max_objects
    for frame in frames:
        _assert_valid(frame, config)


def test_shift_changes_the_distribution() -> None:
    base = np.stack([f.image for f in random_frames(0, 50)]).astype(float)
    shifted_config = SceneConfig(domain=Domain.SHIFTED)
    shifted = np.stack([f.image for f in random_frames(0, 50, config=shifted_config)])
    assert shifted.astype(float).mean() < base.mean() - 15  # darker

    camera = SyntheticCamera(seed=4)
    before = next(camera)
    camera.shift(Domain.SHIFTED)
    after = next(camera)
    assert camera.config.domain is Domain.SHIFTED
    assert after.domain is Domain.SHIFTED
    assert np.array_equal(before.track_ids, after.track_ids)
    assert np.abs(after.image.astype(float) - before.image).mean() > 20


def test_a_subset_of_classes_can_be_drawn() -> None:
    config = SceneConfig(classes=("square", "circle"))
    ids = np.concatenate([f.class_ids for f in random_frames(0, 30, config=config)])
    assert set(ids.tolist()) == {0, 1}


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"classes": ("hexagon",)}, "classes"),
        ({"min_objects": 4, "max_objects": 2}, "max_objects"),
        ({"max_size": 100.0}, "max_size"),
        ({"noise_std": -1.0}, "noise_std"),
        ({"turnover": 2.0}, "turnover"),
    ],
)
def test_invalid_config_names_the_field(changes: dict[str, object], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        SceneConfig(**changes)  # type: ignore[arg-type]
    assert info.value.path == path
