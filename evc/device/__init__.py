"""The device tier: publishing from cameras and small boards, sampling hard examples, taking
pushed settings and signed model updates.

Simulated cameras (``evc device simulate``) live in :mod:`evc.device.simulate`.
"""

from evc.device.commands import DeviceCommands, DeviceSettings, push_device_settings
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
from evc.device.updates import ModelUpdater

__all__ = [
    "AsyncDevice",
    "ChangeFilter",
    "Device",
    "DeviceCommands",
    "DeviceSettings",
    "HardExampleSampler",
    "InferenceHealth",
    "InstallOutcome",
    "ModelSlot",
    "ModelState",
    "ModelStatus",
    "ModelUpdater",
    "PublishMode",
    "SampleBudget",
    "SlotDetections",
    "SlotSettings",
    "push_device_settings",
    "synthetic_detections",
]
