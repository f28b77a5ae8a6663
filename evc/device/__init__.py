"""The device tier: publishing from cameras and small boards.

Simulated cameras (``evc device simulate``) live in :mod:`evc.device.simulate`.
"""

from evc.device.health import InferenceHealth
from evc.device.model_slot import (
    InstallOutcome,
    ModelSlot,
    ModelState,
    ModelStatus,
    SlotDetections,
    SlotSettings,
)
from evc.device.node import AsyncDevice, Device
from evc.device.reduction import ChangeFilter, PublishMode
from evc.device.sampling import HardExampleSampler, SampleBudget
from evc.device.synthetic import synthetic_detections

__all__ = [
    "AsyncDevice",
    "ChangeFilter",
    "Device",
    "HardExampleSampler",
    "InferenceHealth",
    "InstallOutcome",
    "ModelSlot",
    "ModelState",
    "ModelStatus",
    "PublishMode",
    "SampleBudget",
    "SlotDetections",
    "SlotSettings",
    "synthetic_detections",
]
