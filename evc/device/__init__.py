"""The device tier: publishing from cameras and small boards.

Simulated cameras (``evc device simulate``) live in :mod:`evc.device.simulate`.
"""

from evc.device.health import InferenceHealth
from evc.device.node import AsyncDevice, Device
from evc.device.reduction import ChangeFilter, PublishMode
from evc.device.synthetic import synthetic_detections

__all__ = [
    "AsyncDevice",
    "ChangeFilter",
    "Device",
    "InferenceHealth",
    "PublishMode",
    "synthetic_detections",
]
