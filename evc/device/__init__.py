"""The device tier: publishing from cameras and small boards."""

from evc.device.node import AsyncDevice, Device
from evc.device.simulate import SimulationResult, simulate, synthetic_detections

__all__ = ["AsyncDevice", "Device", "SimulationResult", "simulate", "synthetic_detections"]
