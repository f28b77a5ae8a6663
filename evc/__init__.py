"""EVC (Edge Vision Cluster): MQTT-based edge / fog / cloud messaging for vision at the edge.

Device apps import what they need from here::

    from evc import Device

Daemons, the harness and the CLI live in the subpackages ``evc.gateway``, ``evc.cloud``,
``evc.harness`` and ``evc.cli``.
"""

from evc.device import AsyncDevice, Device
from evc.errors import (
    ConfigError,
    EvcError,
    MalformedPayloadError,
    OutboxError,
    PayloadTooLargeError,
    SchemaError,
    UnknownVersionError,
    WireError,
)
from evc.outbox import DropPolicy, Outbox, Priority
from evc.wire import DetectionFrame, Envelope, IdempotencyKey

__version__ = "0.1.0"

__all__ = [
    "AsyncDevice",
    "ConfigError",
    "DetectionFrame",
    "Device",
    "DropPolicy",
    "Envelope",
    "EvcError",
    "IdempotencyKey",
    "MalformedPayloadError",
    "Outbox",
    "OutboxError",
    "PayloadTooLargeError",
    "Priority",
    "SchemaError",
    "UnknownVersionError",
    "WireError",
    "__version__",
]
