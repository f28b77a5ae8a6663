"""The numpy detector: layers, hand-written backprop (checked numerically), loss and training."""

from __future__ import annotations

import numpy as np
import pytest

from evc.errors import TrainingError
from evc.synthetic import SceneConfig, random_frames
from evc.training import layers
from evc.training.data import FrameDataset, MixedDataset, SceneDataset
from evc.training.loss import assign, detection_loss
from evc.training.model import (
    ModelConfig,
    Params,
    backward,
    count_params,
    decode,
    forward,
    init_params,
)
from evc.training.train import Progress, TrainConfig, learning_rate, train, train_step

TINY = ModelConfig(imgsz=32, num_classes=3, widths=(3, 4, 5, 6))
SMALL_SCENE = SceneConfig(width=64, height=64, min_size=8, max_size=20, max_objects=3)
SMALL = ModelConfig(imgsz=64, num_classes=3, widths=(8, 8, 16, 16))


def test_the_sample_architecture_is_about_200k_parameters() -> None:
    assert 190_000 < count_params(init_params(ModelConfig(), 0)) < 215_000


@pytest.mark.parametrize("stride", [1, 2])
def test_col2im_is_the_adjoint_of_im2col(stride: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 6, 3))
    cols = layers.im2col(x, stride)
    y = rng.normal(size=cols.shape)
    assert np.sum(cols * y) == pytest.approx(np.sum(x * layers.col2im(y, x.shape, stride)))


def _loss(
    params: Params, x: np.ndarray, boxes: list[np.ndarray], classes: list[np.ndarray]
) -> float:
    raw, _ = forward(params, x, TINY)
    return detection_loss(raw, assign(boxes, classes, TINY))[0].total


def test_backprop_matches_numerical_gradients() -> None:
    rng = np.random.default_rng(1)
    # float64, and nudged off the symmetric initial point.
    params = {
        k: v.astype(np.float64) + rng.normal(0.0, 0.05, v.shape)
        for k, v in init_params(TINY, 0).items()
    }
    x = rng.random((2, 32, 32, 3))
    boxes = [np.array([[4, 4, 16, 16], [18, 10, 30, 28]], float), np.array([[8, 2, 20, 14]], float)]
    classes = [np.array([0, 2]), np.array([1])]
    raw, cache = forward(params, x, TINY)
    parts, draw = detection_loss(raw, assign(boxes, classes, TINY))
    assert parts.positives > 0
    assert parts.box > 0
    grads = backward(params, cache, draw, TINY)
    assert grads.keys() == params.keys()
    eps = 1e-6
    for key, value in params.items():
        flat, grad = value.reshape(-1), grads[key].reshape(-1)
        for index in rng.choice(flat.size, size=min(4, flat.size), replace=False):
            original = flat[index]
            flat[index] = original + eps
            plus = _loss(params, x, boxes, classes)
            flat[index] = original - eps
            minus = _loss(params, x, boxes, classes)
            flat[index] = original
            numeric = (plus - minus) / (2 * eps)
            assert grad[index] == pytest.approx(numeric, rel=1e-4, abs=1e-7), (key, index)


def test_centre_sampling_assigns_cells_near_centres_smaller_object_wins() -> None:
    config = ModelConfig(imgsz=64)  # 8x8 cells of 8 px
    small = np.array([[26.0, 26.0, 38.0, 38.0]])  # 12 px at the centre (32, 32)
    big = np.array([[8.0, 8.0, 56.0, 56.0]])  # 48 px, same centre
    targets = assign(
        [small, big, np.concatenate([big, small])],
        [np.array([1]), np.array([2]), np.array([2, 1])],
        config,
    )
    assert (targets.classes[0] == 1).sum() == 4  # centre on a corner: 2x2 cells within 4 px
    assert (targets.classes[1] == 2).sum() == 16  # within 12 px: 4x4 cells
    assert (targets.classes[2] == 1).sum() == 4
    assert (targets.classes[2] == 2).sum() == 12
    rows, cols = np.nonzero(targets.classes[0] == 1)
    dx = targets.boxes[0, rows, cols, 0]
    assert np.allclose(32 / 8 - (cols + 0.5), dx)
    assert np.allclose(targets.boxes[0, rows, cols, 2], np.log(12 / 8))


def test_decode_gives_the_ultralytics_layout() -> None:
    raw = np.zeros((1, TINY.grid, TINY.grid, TINY.outputs), dtype=np.float32)
    raw[0, 1, 2, 2:4] = np.log(2.0)
    out = decode(raw, TINY)
    assert out.shape == (1, 7, TINY.grid * TINY.grid)
    cell = 1 * TINY.grid + 2
    assert out[0, :4, cell] == pytest.approx([2.5 * 8, 1.5 * 8, 16.0, 16.0])
    assert out[0, 4:, cell] == pytest.approx([0.5, 0.5, 0.5])


def test_training_reduces_the_loss_and_reports_progress() -> None:
    frames = list(random_frames(0, 4, config=SMALL_SCENE))
    seen: list[Progress] = []
    config = TrainConfig(
        steps=40, batch_size=4, learning_rate=1e-2, warmup_steps=5, eval_every=20, hflip=False
    )
    result = train(
        None,
        FrameDataset(frames),
        config=config,
        model_config=SMALL,
        seed=0,
        eval_frames=frames,
        progress=seen.append,
    )
    assert [p.step for p in seen] == list(range(1, 41))
    images = np.stack([f.image for f in frames])
    boxes, classes = [f.boxes for f in frames], [f.class_ids for f in frames]
    initial, _ = train_step(init_params(SMALL, 0), images, boxes, classes, SMALL)
    trained, _ = train_step(result.params, images, boxes, classes, SMALL)
    assert trained < 0.6 * initial
    assert seen[19].map50 is not None
    assert seen[18].map50 is None
    assert result.steps == 40
    assert result.stopped_by == "steps"
    assert result.map50 is not None
    assert result.passes(0.0)


def test_fine_tuning_copies_the_weights_and_a_time_budget_stops_training() -> None:
    start = init_params(SMALL, 3)
    before = {k: v.copy() for k, v in start.items()}
    collected = FrameDataset(list(random_frames(1, 2, config=SMALL_SCENE)))
    mixed = MixedDataset([(SceneDataset(SMALL_SCENE), 0.5), (collected, 0.5)])
    config = TrainConfig(steps=10_000, time_budget_s=0.3, batch_size=2, eval_every=0)
    result = train(start, mixed, config=config, model_config=SMALL, seed=1)
    assert result.stopped_by == "time"
    assert 0 < result.steps < 10_000
    assert all(np.array_equal(before[k], start[k]) for k in start)
    assert not np.array_equal(result.params["c1.w"], start["c1.w"])
    assert result.map50 is None
    assert not result.passes(0.0)


def test_training_rejects_weights_and_images_that_do_not_fit() -> None:
    with pytest.raises(TrainingError):
        train(init_params(TINY, 0), SceneDataset(SMALL_SCENE), model_config=SMALL)
    with pytest.raises(TrainingError, match="64, 64, 3"):
        train(None, SceneDataset(), config=TrainConfig(steps=1), model_config=SMALL)


def test_mixed_dataset_draws_by_weight() -> None:
    a = FrameDataset(list(random_frames(0, 1, config=SMALL_SCENE)))
    b = FrameDataset(list(random_frames(1, 1, config=SMALL_SCENE)))
    items = MixedDataset([(a, 3.0), (b, 1.0)]).sample(np.random.default_rng(0), 400)
    share = sum(item is a.items[0] for item in items) / 400
    assert 0.68 < share < 0.82
    with pytest.raises(TrainingError):
        MixedDataset([(a, 0.0)])


def test_learning_rate_warms_up_then_decays() -> None:
    config = TrainConfig(learning_rate=1.0, warmup_steps=10, final_lr_fraction=0.1)
    assert learning_rate(config, 5, 0.0) == pytest.approx(0.5)
    assert learning_rate(config, 11, 0.0) == pytest.approx(1.0)
    assert learning_rate(config, 100, 0.5) == pytest.approx(0.55)
    assert learning_rate(config, 100, 1.0) == pytest.approx(0.1)
