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


class OutboxError(EvcError):
    """The SQLite outbox could not complete an operation."""


class BrokerError(EvcError):
    """A test-harness broker could not be started, stopped or reached."""


class MqttConnectionError(EvcError):
    """An MQTT connection could not be established or was lost."""


class OriginMismatchError(WireError):
    """A message names an origin other than the device whose topic it was published on."""

    reason = "origin_mismatch"
