"""A seeded synthetic camera: frames of coloured shapes with ground-truth boxes."""

from evc.synthetic.scene import (
    CLASS_NAMES,
    Domain,
    Frame,
    SceneConfig,
    SyntheticCamera,
    random_frames,
)

__all__ = ["CLASS_NAMES", "Domain", "Frame", "SceneConfig", "SyntheticCamera", "random_frames"]
