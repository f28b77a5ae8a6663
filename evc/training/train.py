"""Training and fine-tuning of the sample detector, in numpy, on the CPU.

:func:`train` starts from fresh weights or from existing ones (fine-tuning), draws batches from
any :class:`~evc.training.data.Dataset`, and stops at a step count or a time budget, whichever
comes first; the learning rate warms up linearly, then follows a cosine to a small floor over
whichever of the two is further along. Held-out frames, if given, are scored (mAP@0.5) every
``eval_every`` steps and at the end, so a caller can gate publication on the result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from evc.errors import TrainingError
from evc.training import measure
from evc.training.data import Dataset
from evc.training.layers import Array
from evc.training.loss import assign, detection_loss
from evc.training.measure import LabelledImage
from evc.training.model import (
    ModelConfig,
    Params,
    backward,
    check_params,
    forward,
    init_params,
    predict,
    to_input,
)


@dataclass(frozen=True, kw_only=True, slots=True)
class TrainConfig:
    """How long and how hard to train. Defaults are the recipe of the committed sample model."""

    steps: int = 2500
    time_budget_s: float | None = None
    batch_size: int = 16
    learning_rate: float = 3e-3
    warmup_steps: int = 100
    final_lr_fraction: float = 0.02
    weight_decay: float = 1e-4
    max_grad_norm: float = 10.0
    hflip: bool = True
    eval_every: int = 500
    target_map50: float | None = None


@dataclass(frozen=True, slots=True)
class Progress:
    """Reported after every step; ``map50`` only on steps that evaluated."""

    step: int
    steps: int
    elapsed_s: float
    loss: float
    learning_rate: float
    map50: float | None = None


@dataclass(frozen=True, slots=True)
class TrainResult:
    """The trained weights and how training went.

    Attributes:
        stopped_by: ``"steps"``, ``"time"`` (budget spent) or ``"target"`` (mAP reached).
        map50: the last evaluation on the held-out frames, None if none were given.
    """

    params: Params
    model_config: ModelConfig
    steps: int
    seconds: float
    loss: float
    map50: float | None
    stopped_by: str

    def passes(self, gate: float) -> bool:
        """Whether the measured mAP@0.5 reached ``gate``."""
        return self.map50 is not None and self.map50 >= gate


class Adam:
    """Adam with decoupled weight decay on the weight matrices (not the biases)."""

    def __init__(self, params: Params, *, beta1: float = 0.9, beta2: float = 0.999) -> None:
        self.beta1, self.beta2 = beta1, beta2
        self.m = {key: np.zeros_like(value) for key, value in params.items()}
        self.v = {key: np.zeros_like(value) for key, value in params.items()}
        self.t = 0

    def step(self, params: Params, grads: Params, lr: float, weight_decay: float) -> None:
        """Update ``params`` in place."""
        self.t += 1
        correction1 = 1.0 - self.beta1**self.t
        correction2 = 1.0 - self.beta2**self.t
        for key, value in params.items():
            m, v, g = self.m[key], self.v[key], grads[key]
            m *= self.beta1
            m += (1.0 - self.beta1) * g
            v *= self.beta2
            v += (1.0 - self.beta2) * g * g
            update = (m / correction1) / (np.sqrt(v / correction2) + 1e-8)
            if key.endswith(".w"):
                update += weight_decay * value
            np.subtract(value, lr * update, out=value, casting="unsafe")


def learning_rate(config: TrainConfig, step: int, fraction: float) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay as ``fraction`` goes 0 -> 1."""
    if step <= config.warmup_steps:
        return config.learning_rate * step / max(config.warmup_steps, 1)
    floor = config.learning_rate * config.final_lr_fraction
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(max(fraction, 0.0), 1.0)))
    return floor + (config.learning_rate - floor) * cosine


def _clip(grads: Params, max_norm: float) -> None:
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in grads.values()))
    if norm > max_norm:
        for g in grads.values():
            np.multiply(g, max_norm / norm, out=g, casting="unsafe")


def _batch(
    dataset: Dataset, rng: np.random.Generator, config: TrainConfig, model: ModelConfig
) -> tuple[npt.NDArray[np.uint8], list[npt.NDArray[np.float32]], list[npt.NDArray[np.int64]]]:
    """Images, boxes and classes of one batch, each image flipped left-right with p=0.5."""
    items = dataset.sample(rng, config.batch_size)
    shape = (model.imgsz, model.imgsz, 3)
    if any(item.image.shape != shape for item in items):
        raise TrainingError(f"training images must be {shape}, the model's input size")
    images = np.stack([item.image for item in items])
    boxes = [np.asarray(item.boxes, dtype=np.float32).reshape(-1, 4) for item in items]
    classes = [np.asarray(item.class_ids, dtype=np.int64).reshape(-1) for item in items]
    if config.hflip:
        for i in np.flatnonzero(rng.random(len(items)) < 0.5):
            images[i] = images[i, :, ::-1]
            boxes[i] = np.stack(
                [
                    model.imgsz - boxes[i][:, 2],
                    boxes[i][:, 1],
                    model.imgsz - boxes[i][:, 0],
                    boxes[i][:, 3],
                ],
                axis=1,
            )
    return images, boxes, classes


def train_step(
    params: Params,
    images: npt.NDArray[np.uint8],
    boxes: Sequence[npt.NDArray[np.float32]],
    classes: Sequence[npt.NDArray[np.int64]],
    model: ModelConfig,
) -> tuple[float, Params]:
    """The loss of one batch and its gradients."""
    raw, cache = forward(params, to_input(images), model)
    parts, draw = detection_loss(raw, assign(boxes, classes, model))
    return parts.total, backward(params, cache, draw, model)


def evaluate(params: Params, frames: Sequence[LabelledImage], model: ModelConfig) -> float:
    """mAP@0.5 of the numpy model on labelled frames."""

    def run(images: npt.NDArray[np.uint8]) -> Array:
        return predict(params, images, model)

    return measure.map50(run, frames, num_classes=model.num_classes)


def train(
    params: Params | None,
    dataset: Dataset,
    *,
    config: TrainConfig | None = None,
    model_config: ModelConfig | None = None,
    seed: int = 0,
    eval_frames: Sequence[LabelledImage] = (),
    progress: Callable[[Progress], None] | None = None,
) -> TrainResult:
    """Train from scratch (``params=None``) or fine-tune a copy of ``params``.

    Args:
        params: starting weights, or None for a fresh seeded initialisation.
        dataset: where batches come from (e.g. a ``MixedDataset`` of new frames and replay).
        config: steps, time budget, optimiser settings; the default is the sample recipe.
        model_config: the network's shape; must match ``params`` if they are given.
        seed: seeds the initialisation, batch draws and flips.
        eval_frames: held-out labelled frames scored every ``config.eval_every`` steps.
        progress: called after every step.

    Raises:
        TrainingError: if ``params`` do not fit ``model_config`` or images do not fit the input.
    """
    config = config or TrainConfig()
    model = model_config or ModelConfig()
    if params is None:
        params = init_params(model, seed)
    check_params(params, model)
    params = {key: value.astype(np.float32, copy=True) for key, value in params.items()}
    rng = np.random.default_rng(seed)
    optimiser = Adam(params)
    start = time.perf_counter()
    loss_avg, map50, step, stopped_by = math.nan, None, 0, "steps"
    while step < config.steps:
        elapsed = time.perf_counter() - start
        fraction = step / config.steps
        if config.time_budget_s is not None:
            if elapsed >= config.time_budget_s:
                stopped_by = "time"
                break
            fraction = max(fraction, elapsed / config.time_budget_s)
        step += 1
        lr = learning_rate(config, step, fraction)
        loss, grads = train_step(params, *_batch(dataset, rng, config, model), model)
        _clip(grads, config.max_grad_norm)
        optimiser.step(params, grads, lr, config.weight_decay)
        loss_avg = loss if math.isnan(loss_avg) else 0.95 * loss_avg + 0.05 * loss
        step_map = None
        if eval_frames and config.eval_every and step % config.eval_every == 0:
            map50 = step_map = evaluate(params, eval_frames, model)
        if progress is not None:
            elapsed = time.perf_counter() - start
            progress(Progress(step, config.steps, elapsed, loss_avg, lr, step_map))
        target = config.target_map50
        if step_map is not None and target is not None and step_map >= target:
            stopped_by = "target"
            break
    if eval_frames and (map50 is None or not config.eval_every or step % config.eval_every):
        map50 = evaluate(params, eval_frames, model)
    seconds = time.perf_counter() - start
    return TrainResult(params, model, step, seconds, loss_avg, map50, stopped_by)
