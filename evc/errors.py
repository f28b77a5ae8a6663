"""The one exception hierarchy of EVC.

Every error that EVC raises derives from :class:`EvcError`. Errors that stand for a rejected
input carry a short ``reason`` slug; daemons count rejections by that reason in their metrics.
"""

from __future__ import annotations


class EvcError(Exception):
    """Base class of every error raised by EVC."""


class ConfigError(EvcError):
    """A configuration file is missing, unreadable or invalid."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class WireError(EvcError):
    """Bytes or a topic received from the network could not be accepted."""

    reason = "invalid"


class MalformedPayloadError(WireError):
    """The bytes are not a well-formed msgpack document."""

    reason = "malformed"


class UnknownVersionError(WireError):
    """The envelope declares a protocol version this build does not speak."""

    reason = "unknown_version"


class SchemaError(WireError):
    """The document is msgpack but does not have the fields and types the protocol requires."""

    reason = "schema"


class PayloadTooLargeError(WireError):
    """The payload is larger than the configured maximum."""

    reason = "oversized"


class TopicError(WireError):
    """A topic is not part of the EVC namespace, or names someone else."""

    reason = "topic"


class DeviceNotStartedError(EvcError):
    """A device was used before it was started."""


class OutboxError(EvcError):
    """The SQLite outbox could not complete an operation."""


class BrokerError(EvcError):
    """A test-harness broker could not be started, stopped or reached."""


class OriginMismatchError(WireError):
    """A message names an origin other than the device whose topic it was published on."""

    reason = "origin_mismatch"


class ModelError(EvcError):
    """A detection model could not be loaded, or does not look like one EVC can run."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class ModelNotFoundError(ModelError):
    """The model file does not exist or is not a regular file."""


class ModelLoadError(ModelError):
    """The file is not an ONNX model ONNX Runtime can load, or a provider is unavailable."""


class ModelInputError(ModelError):
    """The model's input is not one NCHW float image tensor with three channels."""


class ModelOutputError(ModelError):
    """The model's output is not a YOLO ``[1, 4+classes, anchors]`` detection tensor."""


class ModelMetadataError(ModelError):
    """The model's metadata or the configured class names disagree with the model."""


class InferenceError(ModelError):
    """ONNX Runtime failed while running a loaded model."""


class FrameError(EvcError):
    """A frame given to the detector is not an ``H x W x 3`` uint8 image."""


class TrainingError(EvcError):
    """A model could not be trained, measured, exported or loaded as asked."""
