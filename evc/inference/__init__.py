"""On-device inference: the :class:`Detector` and its pre- and post-processing.

``Detector`` runs any Ultralytics YOLOv8 / YOLO11 detection model exported to ONNX with
``nms=False`` and returns :class:`Detections` columns that go straight into
:func:`evc.wire.encode_detections`. ``docs/BRING_YOUR_OWN_MODEL.md`` explains how to export one.
"""

from evc.inference.detector import ClassNames, Detections, Detector
from evc.inference.postprocess import OutputLayout, decode, nms, postprocess, resolve_layout
from evc.inference.preprocess import Interpolation, Letterbox, letterbox, unletterbox_boxes

__all__ = [
    "ClassNames",
    "Detections",
    "Detector",
    "Interpolation",
    "Letterbox",
    "OutputLayout",
    "decode",
    "letterbox",
    "nms",
    "postprocess",
    "resolve_layout",
    "unletterbox_boxes",
]
