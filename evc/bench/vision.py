"""On-device vision figures: the Detector's cost beside raw ONNX Runtime, and model accuracy."""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from evc.inference import Detector, OutputLayout, letterbox, postprocess, unletterbox_boxes
from evc.inference.evaluate import GroundTruth, Prediction, mean_average_precision
from evc.synthetic import SyntheticCamera, random_frames
from evc.synthetic.sample_model import sample_model_path

# The sample model's accuracy is scored on frames no training run has seen.
MAP_SEED = 7_000_001
EVAL_CONFIDENCE = 0.01
CAMERA_FRAME = (480, 640)  # pre/post-processing figures use a VGA camera frame
YOLO_INPUT = (320, 320)
YOLO_CLASSES = 80


@dataclass(frozen=True, slots=True)
class VisionFigures:
    """Every vision figure of one run."""

    detector_overhead_ratio: float
    inference_ms_p50: float
    inference_ms_p99: float
    preprocess_ms_p50: float
    postprocess_ms_p50: float
    sample_model_map50: float


def measure(*, frames: int, map_frames: int) -> VisionFigures:
    """Measure on the committed sample model, one ONNX Runtime thread for steadiness."""
    path = sample_model_path()
    detector = Detector(path, intra_op_threads=1)
    images = [frame.image for frame in itertools.islice(SyntheticCamera(seed=3), frames)]
    overhead = _overhead_ratio(detector, _raw_pipeline(detector), images)
    latencies = [_timed(partial(detector, image)) for image in images]
    return VisionFigures(
        detector_overhead_ratio=overhead,
        inference_ms_p50=float(np.percentile(latencies, 50)),
        inference_ms_p99=float(np.percentile(latencies, 99)),
        preprocess_ms_p50=_preprocess_ms(frames),
        postprocess_ms_p50=_postprocess_ms(frames),
        sample_model_map50=_map50(path, map_frames),
    )


def _timed(call: Callable[[], object]) -> float:
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1000


def _raw_pipeline(detector: Detector) -> Callable[[npt.NDArray[np.uint8]], object]:
    """The same work done inline on a bare session: what the Detector's wrapping is compared to."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(
        str(sample_model_path()), sess_options=options, providers=["CPUExecutionProvider"]
    )
    input_name = session.get_inputs()[0].name
    layout = OutputLayout(num_classes=detector.num_classes, channels_first=True)

    def run(image: npt.NDArray[np.uint8]) -> object:
        tensor, placement = letterbox(image, detector.input_size)
        (output,) = session.run(None, {input_name: tensor})
        ids, scores, boxes = postprocess(
            output, layout, conf_threshold=detector.conf_threshold,
            iou_threshold=detector.iou_threshold, max_detections=detector.max_detections,
        )
        return ids, scores, unletterbox_boxes(boxes, placement)

    return run


def _overhead_ratio(
    detector: Detector, raw: Callable[[npt.NDArray[np.uint8]], object],
    images: list[npt.NDArray[np.uint8]],
) -> float:
    # Interleaved per frame so that load from elsewhere hits both sides alike.
    ours, theirs = [], []
    for image in images:
        ours.append(_timed(partial(detector, image)))
        theirs.append(_timed(partial(raw, image)))
    return statistics.median(ours) / statistics.median(theirs)


def _preprocess_ms(repeats: int) -> float:
    frame = np.random.default_rng(0).integers(0, 255, (*CAMERA_FRAME, 3), dtype=np.uint8)
    return statistics.median(
        _timed(lambda: letterbox(frame, YOLO_INPUT)) for _ in range(repeats)
    )


def _postprocess_ms(repeats: int) -> float:
    """A YOLO output at 320x320 with 80 classes (2,100 anchors) and ten objects in it."""
    rng = np.random.default_rng(0)
    anchors = (YOLO_INPUT[0] // 8) ** 2 + (YOLO_INPUT[0] // 16) ** 2 + (YOLO_INPUT[0] // 32) ** 2
    output = np.zeros((1, 4 + YOLO_CLASSES, anchors), dtype=np.float32)
    output[0, :4] = rng.uniform(10, 300, (4, anchors))
    output[0, 4:] = rng.uniform(0, 0.05, (YOLO_CLASSES, anchors))
    objects = rng.choice(anchors, 30, replace=False)  # 10 objects, 3 overlapping anchors each
    output[0, 4 + rng.integers(0, YOLO_CLASSES, 30), objects] = rng.uniform(0.5, 0.95, 30)
    layout = OutputLayout(num_classes=YOLO_CLASSES, channels_first=True)
    return statistics.median(
        _timed(lambda: postprocess(output, layout, conf_threshold=0.25, iou_threshold=0.45,
                                   max_detections=300))
        for _ in range(repeats)
    )


def _map50(path: Path, count: int) -> float:
    detector = Detector(path, conf_threshold=EVAL_CONFIDENCE, max_detections=100)
    predictions, truths = [], []
    for frame in random_frames(MAP_SEED, count):
        found = detector(frame.image)
        predictions.append(Prediction(found.boxes, found.scores, found.class_ids))
        truths.append(GroundTruth(frame.boxes, frame.class_ids))
    return mean_average_precision(predictions, truths, num_classes=detector.num_classes)
