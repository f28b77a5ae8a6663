"""How the trainer measures a model: decode its outputs, suppress duplicates, score mAP@0.5.

The decoding here is deliberately small and self-contained (confidence filter, best class per
cell, class-wise greedy NMS), so training and its tests do not depend on the device runtime.
It works on the Ultralytics layout ``[4 + nc, cells]`` that both the numpy model and the ONNX
export produce, so the same code measures either.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from evc.inference.evaluate import (
    GroundTruth,
    Prediction,
    box_iou,
    mean_average_precision,
)

# A low confidence floor keeps the tail of the precision-recall curve, as mAP tools do.
EVAL_CONFIDENCE = 0.01
NMS_IOU = 0.5
MAX_DETECTIONS = 100


class LabelledImage(Protocol):
    """An image with ground truth, such as :class:`evc.synthetic.Frame`."""

    @property
    def image(self) -> npt.NDArray[np.uint8]: ...
    @property
    def boxes(self) -> npt.NDArray[np.float32]: ...
    @property
    def class_ids(self) -> npt.NDArray[np.int64]: ...


def nms(boxes: npt.NDArray[np.float64], scores: npt.NDArray[np.float64], iou: float) -> list[int]:
    """Indexes of the boxes greedy non-maximum suppression keeps, highest score first."""
    order = np.argsort(-scores, kind="stable")
    overlaps = box_iou(boxes[order], boxes[order])
    suppressed = np.zeros(len(order), dtype=bool)
    keep: list[int] = []
    for rank, index in enumerate(order):
        if not suppressed[rank]:
            keep.append(int(index))
            suppressed |= overlaps[rank] > iou
    return keep


def to_prediction(
    output: npt.NDArray[np.floating],
    *,
    confidence: float = EVAL_CONFIDENCE,
    iou: float = NMS_IOU,
    max_detections: int = MAX_DETECTIONS,
) -> Prediction:
    """Detections of one image from its ``[4 + nc, cells]`` output, after class-wise NMS."""
    cells = np.asarray(output, dtype=np.float64).T
    scores_all = cells[:, 4:]
    class_ids = scores_all.argmax(axis=1)
    scores = scores_all[np.arange(len(cells)), class_ids]
    keep = scores >= confidence
    cells, class_ids, scores = cells[keep], class_ids[keep], scores[keep]
    boxes = np.concatenate([cells[:, :2] - cells[:, 2:4] / 2, cells[:, :2] + cells[:, 2:4] / 2], 1)
    # Offsetting each class far apart makes one NMS pass class-wise.
    offset = boxes + (class_ids * 1e5)[:, None]
    kept = nms(offset, scores, iou)[:max_detections]
    return Prediction(boxes[kept], scores[kept], class_ids[kept])


def map50(
    predict: Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.floating]],
    frames: Sequence[LabelledImage],
    *,
    num_classes: int,
    batch: int = 50,
) -> float:
    """mAP@0.5 on ``frames`` of a model given as ``predict(images) -> [N, 4 + nc, cells]``."""
    predictions: list[Prediction] = []
    for start in range(0, len(frames), batch):
        chunk = frames[start : start + batch]
        outputs = predict(np.stack([frame.image for frame in chunk]))
        predictions.extend(to_prediction(output) for output in outputs)
    truths = [GroundTruth(frame.boxes, frame.class_ids) for frame in frames]
    return mean_average_precision(predictions, truths, num_classes=num_classes)


def onnx_predictor(
    model: bytes | str,
) -> Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.float32]]:
    """``predict(images)`` through ONNX Runtime for a batch-1 model with a 0..1 NCHW input.

    Args:
        model: the serialised model or a path to it.
    """
    import onnxruntime as ort  # noqa: PLC0415 - training itself does not need the runtime

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def predict(images: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        outputs = []
        for image in images:
            x = image.transpose(2, 0, 1)[None].astype(np.float32) * np.float32(1.0 / 255.0)
            outputs.append(session.run(None, {name: x})[0][0])
        return np.stack(outputs)

    return predict
