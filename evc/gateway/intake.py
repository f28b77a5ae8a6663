"""Admission of device messages: the checks between the fog broker and the outbox.

A message is admitted only if its topic is a device topic of this site, its bytes are a valid
record of the kind the topic promises, and the envelope's origin is the device the topic names
(so one device cannot publish records under another's key). Anything else raises a
:class:`~evc.errors.WireError` whose ``reason`` the gateway counts.
"""

from __future__ import annotations

from evc.errors import OriginMismatchError, SchemaError, TopicError
from evc.outbox import NewRecord, Priority
from evc.wire import Channel, DeviceTopic, Kind, validate_record

_KIND_OF_CHANNEL = {
    Channel.DETECTIONS: Kind.DETECTIONS,
    Channel.HEARTBEAT: Kind.HEARTBEAT,
    Channel.STATE: Kind.STATE,
    Channel.SAMPLE: Kind.SAMPLE,
}
PRIORITY_OF_KIND = {
    Kind.DETECTIONS: Priority.DETECTION,
    Kind.HEARTBEAT: Priority.SUMMARY,
    Kind.STATE: Priority.EVENT,
    Kind.SAMPLE: Priority.SAMPLE,
}


def admit(topic: str, payload: bytes, *, site: str, max_bytes: int) -> tuple[NewRecord, Channel]:
    """Validate one device message; return its outbox record and the channel it came on.

    Raises:
        WireError: a subclass naming why the message was refused.
    """
    parsed = DeviceTopic.parse(topic)
    if parsed.site != site:
        raise TopicError(f"message for site {parsed.site!r} reached the gateway of {site!r}")
    envelope = validate_record(payload, max_bytes=max_bytes)
    expected = _KIND_OF_CHANNEL.get(parsed.channel)
    if envelope.kind is not expected:
        raise SchemaError(f"{envelope.kind.name} message on the {parsed.channel.value} channel")
    if envelope.origin != parsed.device:
        raise OriginMismatchError(
            f"origin {envelope.origin!r} published on the topic of device {parsed.device!r}"
        )
    record = NewRecord(topic=topic, payload=payload, priority=PRIORITY_OF_KIND[envelope.kind])
    return record, parsed.channel
