"""The sample detector: a small CNN trained with numpy alone and exported to ONNX.

``train`` trains from scratch or fine-tunes existing weights (``from_onnx`` reads them back from
a deployed model) on any ``Dataset``; ``to_onnx`` writes the Ultralytics-layout graph. See
docs/SAMPLE_MODEL.md for the recipe and the measured accuracy.
"""

from evc.training.data import Dataset, FrameDataset, MixedDataset, SceneDataset
from evc.training.export import from_onnx, metadata, to_onnx
from evc.training.measure import LabelledImage, map50, onnx_predictor, to_prediction
from evc.training.model import ModelConfig, Params, init_params, predict
from evc.training.train import Progress, TrainConfig, TrainResult, evaluate, train

__all__ = [
    "Dataset",
    "FrameDataset",
    "LabelledImage",
    "MixedDataset",
    "ModelConfig",
    "Params",
    "Progress",
    "SceneDataset",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "from_onnx",
    "init_params",
    "map50",
    "metadata",
    "onnx_predictor",
    "predict",
    "to_onnx",
    "to_prediction",
    "train",
]
