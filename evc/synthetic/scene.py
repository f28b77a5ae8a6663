"""A seeded synthetic camera: coloured shapes moving over textured backgrounds.

Two ways to get frames:

* :class:`SyntheticCamera` is one fixed camera: a static background, objects that glide and
  bounce (they never overlap), slowly drifting light, fresh sensor noise every frame, and now
  and then an object that leaves or arrives. Consecutive frames are strongly correlated, as a
  real camera's are, which is what tracking and change suppression need.
* :func:`random_frames` gives independent frames (a new scene every time) for training and
  evaluation.

Both are deterministic for a seed. :class:`Domain` selects the distribution: ``SHIFTED`` has
striped and checkerboard backgrounds, darker light and colours the base scene never shows, so
a model trained on ``BASE`` does badly on it until it learns from shifted samples.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace

import numpy as np
import numpy.typing as npt

from evc.errors import ConfigError
from evc.synthetic import render

CLASS_NAMES: tuple[str, ...] = ("circle", "square", "triangle")

# Shapes keep this many pixels between their boxes, so boxes never overlap.
_GAP = 2.0
_PLACEMENT_TRIES = 50


class Domain(enum.Enum):
    """Which distribution frames are drawn from."""

    BASE = "base"
    SHIFTED = "shifted"


@dataclass(frozen=True, kw_only=True, slots=True)
class SceneConfig:
    """What a scene looks like. Sizes are in pixels; a shape of size ``s`` fills an s x s box."""

    width: int = 160
    height: int = 160
    classes: tuple[str, ...] = CLASS_NAMES
    min_objects: int = 1
    max_objects: int = 6
    min_size: float = 12.0
    max_size: float = 48.0
    domain: Domain = Domain.BASE
    noise_std: float = 5.0
    max_speed: float = 2.0
    turnover: float = 0.005

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            if isinstance(value, int | float) and value < 0:
                raise ConfigError(f"{item.name} must not be negative", path=item.name)
        if not self.classes or any(name not in CLASS_NAMES for name in self.classes):
            raise ConfigError(f"classes must be drawn from {CLASS_NAMES}", path="classes")
        if not 0 <= self.min_objects <= self.max_objects:
            raise ConfigError("need 0 <= min_objects <= max_objects", path="max_objects")
        if not 1 <= self.min_size <= self.max_size <= min(self.width, self.height) / 2:
            raise ConfigError("need 1 <= min_size <= max_size <= half the frame", path="max_size")
        if self.turnover > 1:
            raise ConfigError("turnover is a probability per frame", path="turnover")


@dataclass(frozen=True, kw_only=True, eq=False, slots=True)
class Frame:
    """One RGB image with its ground truth.

    Attributes:
        image: ``H x W x 3`` uint8 RGB.
        boxes: ``[n, 4]`` float32 x1, y1, x2, y2 in pixels.
        class_ids: ``[n]`` int64 indexes into ``SceneConfig.classes``.
        track_ids: ``[n]`` int64 object identities, stable across a camera's frames.
        index: the frame's position in its stream.
        domain: the distribution the frame was drawn from.
    """

    image: npt.NDArray[np.uint8]
    boxes: npt.NDArray[np.float32]
    class_ids: npt.NDArray[np.int64]
    track_ids: npt.NDArray[np.int64]
    index: int
    domain: Domain


@dataclass(slots=True)
class _Shape:
    """One object: its class, box (x1, y1, size), colour, velocity and identity."""

    class_id: int
    x: float
    y: float
    size: float
    colour: render.Colour
    vx: float = 0.0
    vy: float = 0.0
    track_id: int = 0

    def box(self) -> tuple[float, float, float, float]:
        return (self.x, self.y, self.x + self.size, self.y + self.size)


def _overlaps(shape: _Shape, others: list[_Shape]) -> bool:
    """Whether ``shape``'s box comes within the gap of any other's."""
    return any(
        shape.x < o.x + o.size + _GAP
        and o.x < shape.x + shape.size + _GAP
        and shape.y < o.y + o.size + _GAP
        and o.y < shape.y + shape.size + _GAP
        for o in others
        if o is not shape
    )


def _colour(rng: np.random.Generator, domain: Domain) -> render.Colour:
    palette = render.BASE_PALETTE if domain is Domain.BASE else render.SHIFTED_PALETTE
    base = palette[int(rng.integers(len(palette)))]
    r, g, b = np.clip(np.asarray(base) + rng.uniform(-20.0, 20.0, size=3), 0.0, 255.0)
    return (float(r), float(g), float(b))


def _lighting(rng: np.random.Generator, domain: Domain) -> render.Lighting:
    low, high = (0.75, 1.15) if domain is Domain.BASE else (0.45, 0.75)
    gx, gy = rng.uniform(-0.4, 0.4, size=2)
    return render.Lighting(float(rng.uniform(low, high)), float(gx), float(gy))


def _background(rng: np.random.Generator, config: SceneConfig) -> render.Image:
    if config.domain is Domain.BASE:
        return render.base_background(rng, config.height, config.width)
    return render.shifted_background(rng, config.height, config.width)


def _new_shape(
    rng: np.random.Generator, config: SceneConfig, others: list[_Shape]
) -> _Shape | None:
    """A randomly placed shape clear of ``others``, or None if none fits after some tries."""
    size = float(rng.uniform(config.min_size, config.max_size))
    shape = _Shape(
        class_id=int(rng.integers(len(config.classes))),
        x=0.0,
        y=0.0,
        size=size,
        colour=_colour(rng, config.domain),
    )
    for _ in range(_PLACEMENT_TRIES):
        shape.x = float(rng.uniform(0.0, config.width - size))
        shape.y = float(rng.uniform(0.0, config.height - size))
        if not _overlaps(shape, others):
            return shape
    return None


def _populate(rng: np.random.Generator, config: SceneConfig, count: int) -> list[_Shape]:
    shapes: list[_Shape] = []
    for _ in range(count):
        shape = _new_shape(rng, config, shapes)
        if shape is not None:
            shapes.append(shape)
    return shapes


def _render(
    rng: np.random.Generator,
    *,
    background: render.Image,
    shapes: list[_Shape],
    lighting: render.Lighting,
    config: SceneConfig,
    index: int,
) -> Frame:
    image = background.copy()
    for shape in shapes:
        render.draw_shape(image, config.classes[shape.class_id], shape.box(), shape.colour)
    render.light(image, lighting)
    boxes = np.array([s.box() for s in shapes], dtype=np.float32).reshape(-1, 4)
    return Frame(
        image=render.finish(image, rng, config.noise_std),
        boxes=boxes,
        class_ids=np.array([s.class_id for s in shapes], dtype=np.int64),
        track_ids=np.array([s.track_id for s in shapes], dtype=np.int64),
        index=index,
        domain=config.domain,
    )


def random_frames(seed: int, n: int, *, config: SceneConfig | None = None) -> Iterator[Frame]:
    """``n`` independent frames, each a new scene (background, objects, light, noise).

    Args:
        seed: the same seed gives the same frames.
        n: how many frames to yield.
        config: the scene; the default is ``SceneConfig()`` (160x160, base domain).
    """
    config = config or SceneConfig()
    rng = np.random.default_rng(seed)
    for index in range(n):
        count = int(rng.integers(config.min_objects, config.max_objects + 1))
        shapes = _populate(rng, config, count)
        for track_id, shape in enumerate(shapes):
            shape.track_id = track_id
        background = _background(rng, config)
        lighting = _lighting(rng, config.domain)
        yield _render(
            rng,
            background=background,
            shapes=shapes,
            lighting=lighting,
            config=config,
            index=index,
        )


class SyntheticCamera:
    """One fixed camera watching shapes glide, bounce and now and then come and go.

    An endless iterator of :class:`Frame`; use ``itertools.islice`` to take some. The light
    drifts slowly (a sine of the frame index around the camera's own level); sensor noise is
    new in every frame.
    """

    def __init__(self, *, seed: int = 0, config: SceneConfig | None = None) -> None:
        self._config = config or SceneConfig()
        self._rng = np.random.default_rng(seed)
        self._index = 0
        self._next_track = 0
        self._shapes: list[_Shape] = []
        self._set_stage()
        count = int(self._rng.integers(self._config.min_objects, self._config.max_objects + 1))
        for _ in range(count):
            self._add_shape()

    @property
    def config(self) -> SceneConfig:
        """The scene this camera currently shows."""
        return self._config

    def shift(self, domain: Domain) -> None:
        """Move the camera to ``domain``: new background and light; objects are repainted."""
        self._config = replace(self._config, domain=domain)
        self._set_stage()
        for shape in self._shapes:
            shape.colour = _colour(self._rng, domain)

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        if self._index > 0:
            self._step()
        lighting = self._lighting_now()
        frame = _render(
            self._rng,
            background=self._background,
            shapes=self._shapes,
            lighting=lighting,
            config=self._config,
            index=self._index,
        )
        self._index += 1
        return frame

    def _set_stage(self) -> None:
        self._background = _background(self._rng, self._config)
        self._light = _lighting(self._rng, self._config.domain)
        self._light_period = float(self._rng.uniform(200.0, 400.0))
        self._light_phase = float(self._rng.uniform(0.0, 2.0 * math.pi))

    def _lighting_now(self) -> render.Lighting:
        wave = math.sin(2.0 * math.pi * self._index / self._light_period + self._light_phase)
        brightness = self._light.brightness * (1.0 + 0.15 * wave)
        return replace(self._light, brightness=brightness)

    def _add_shape(self) -> None:
        shape = _new_shape(self._rng, self._config, self._shapes)
        if shape is None:
            return
        speed = float(self._rng.uniform(0.3, max(self._config.max_speed, 0.3)))
        angle = float(self._rng.uniform(0.0, 2.0 * math.pi))
        shape.vx, shape.vy = speed * math.cos(angle), speed * math.sin(angle)
        shape.track_id = self._next_track
        self._next_track += 1
        self._shapes.append(shape)

    def _step(self) -> None:
        self._turn_over()
        previous = [(s.x, s.y) for s in self._shapes]
        for shape in self._shapes:
            self._move(shape)
        # Undo the moves that collide and bounce those shapes back; repeat because an undone
        # shape can now be in the way of one that moved. Two undone shapes cannot overlap (the
        # last state was valid), so every round undoes at least one more and the loop ends.
        undone: set[int] = set()
        while collided := [
            i
            for i, shape in enumerate(self._shapes)
            if i not in undone and _overlaps(shape, self._shapes)
        ]:
            for i in collided:
                shape = self._shapes[i]
                shape.x, shape.y = previous[i]
                shape.vx, shape.vy = -shape.vx, -shape.vy
                undone.add(i)

    def _move(self, shape: _Shape) -> None:
        """Advance ``shape`` by its velocity, reflecting it off the frame's edges."""
        limit_x, limit_y = self._config.width - shape.size, self._config.height - shape.size
        shape.x += shape.vx
        shape.y += shape.vy
        if not 0.0 <= shape.x <= limit_x:
            shape.vx = -shape.vx
            shape.x = min(max(shape.x, 0.0), limit_x)
        if not 0.0 <= shape.y <= limit_y:
            shape.vy = -shape.vy
            shape.y = min(max(shape.y, 0.0), limit_y)

    def _turn_over(self) -> None:
        """With probability ``turnover`` an object leaves or a new one arrives."""
        config = self._config
        if self._rng.random() >= config.turnover:
            return
        count = len(self._shapes)
        leave = count > config.min_objects and (
            count >= config.max_objects or self._rng.random() < 0.5
        )
        if leave:
            self._shapes.pop(int(self._rng.integers(count)))
        elif count < config.max_objects:
            self._add_shape()
