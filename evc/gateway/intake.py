"""Admission of device messages: the checks between the fog broker and the outbox.

A message is admitted only if its topic is a device topic of this site, its bytes are a valid
record of the kind the topic promises, and the envelope's origin is the device the topic names
(so one device cannot publish records under another's key). Anything else raises a
:class:`~evc.errors.WireError` whose ``reason`` the gateway counts.

With a pipeline, an admitted detections record then runs through its operators: a changed frame
is re-encoded under the device's own key and timestamp (so a redelivery still deduplicates), a
dropped one yields no record. Without one, the device's bytes are stored untouched.
"""

from __future__ import annotations

from evc.errors import OriginMismatchError, SchemaError, TopicError
from evc.gateway.pipeline import Frame, Pipeline
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


def admit(
    topic: str, payload: bytes, *, site: str, max_bytes: int, pipeline: Pipeline | None = None
) -> tuple[NewRecord | None, Channel]:
    """Validate one device message; return its outbox record and the channel it came on.

    The record is None when ``pipeline`` dropped the frame (a deliberate drop, counted by the
    pipeline's listener; the message is still acked).

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
    if pipeline is not None and envelope.kind is Kind.DETECTIONS:
        frame = Frame.from_envelope(envelope)
        result = pipeline(frame)
        if result is None:
            return None, parsed.channel
        if result is not frame:
            payload = result.encode()
    record = NewRecord(topic=topic, payload=payload, priority=PRIORITY_OF_KIND[envelope.kind])
    return record, parsed.channel
