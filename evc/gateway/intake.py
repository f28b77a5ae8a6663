"""Admission of device messages: the checks between the fog broker and the outbox.

A message is admitted only if its topic is a device topic of this site, its bytes are a valid
record of the kind the topic promises, and the envelope's origin is the device the topic names
(so one device cannot publish records under another's key). Anything else raises a
:class:`~evc.errors.WireError` whose ``reason`` the gateway counts.

With a pipeline, an admitted detections record then runs through its operators: a changed frame
is re-encoded under the device's own key and timestamp (so a redelivery still deduplicates), a
dropped one yields no record. Object events an operator derived from the frame (``track``) become
one EVENT record under the same key, stored even when the frame itself is dropped. Without a
pipeline, the device's bytes are stored untouched.

A SAMPLE record (a device's hard example) goes through the pipeline's ``sample`` operators
only: it is stored untouched at ``Priority.SAMPLE``, or dropped and counted by reason.

While the gateway degrades (a large backlog, ``degrade:`` in its config), a frame the pipeline
would forward is fed to ``degrade`` (an ``aggregate`` operator) instead of being stored: only the
SUMMARY records of the windows it closes are, so the cloud still gets exact counts.
"""

from __future__ import annotations

from evc.errors import OriginMismatchError, SchemaError, TopicError
from evc.gateway.pipeline import (
    Aggregate,
    Drop,
    Frame,
    Pipeline,
    PipelineListener,
    PipelineResult,
)
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
    Kind.EVENT: Priority.EVENT,
    Kind.SUMMARY: Priority.SUMMARY,
    Kind.ALERT: Priority.ALERT,
}


def admit(
    topic: str, payload: bytes, *, site: str, max_bytes: int, pipeline: Pipeline | None = None,
    degrade: Aggregate | None = None, listener: PipelineListener | None = None,
) -> tuple[list[NewRecord], Channel]:
    """Validate one device message; return its outbox records and the channel it came on.

    The records are the message's own (none when ``pipeline`` dropped the frame: a deliberate
    drop, counted by the pipeline's listener; the message is still acked), then the EVENT record
    of the frame's events and the ALERT record of its alerts (at ``Priority.ALERT``), if an
    operator derived any. With ``degrade``, a detections frame that would be stored is counted
    by it instead (reported to ``listener`` as dropped by ``degrade``, reason ``summarised``),
    and only the SUMMARY records of the windows it closed are returned.

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
    sample = envelope.kind is Kind.SAMPLE
    if sample and pipeline is not None and not pipeline.run_sample(envelope, len(payload)):
        return [], parsed.channel  # dropped by a sample operator: counted there, still acked
    if (pipeline is None and degrade is None) or envelope.kind is not Kind.DETECTIONS:
        record = NewRecord(topic=topic, payload=payload, priority=PRIORITY_OF_KIND[envelope.kind])
        return [record], parsed.channel
    frame = Frame.from_envelope(envelope)
    result = pipeline.run(frame) if pipeline is not None else PipelineResult(frame, None, None)
    records: list[NewRecord] = []
    if result.frame is not None and degrade is not None:
        records.extend(
            NewRecord(topic=topic, payload=summary, priority=Priority.SUMMARY)
            for summary in _summarise(degrade, result.frame, listener)
        )
    elif result.frame is not None:
        # Events alone leave the detections as they came: keep the device's bytes.
        same = result.frame.boxes is frame.boxes
        records.append(NewRecord(
            topic=topic, payload=payload if same else result.frame.encode(),
            priority=Priority.DETECTION,
        ))
    if result.events is not None:
        # On the device's detections topic: no device can publish an EVENT there (the kind
        # must match the channel), so the gateway is its only author.
        records.append(NewRecord(topic=topic, payload=result.events, priority=Priority.EVENT))
    if result.alerts is not None:
        # Same topic and authorship argument as events; the highest class drains first.
        records.append(NewRecord(topic=topic, payload=result.alerts, priority=Priority.ALERT))
    # SUMMARY records of windows this frame closed; same topic and authorship argument.
    records.extend(
        NewRecord(topic=topic, payload=summary, priority=Priority.SUMMARY)
        for summary in result.summaries
    )
    return records, parsed.channel


def _summarise(
    degrade: Aggregate, frame: Frame, listener: PipelineListener | None
) -> tuple[bytes, ...]:
    """Count ``frame`` in the degrade windows; return the summaries of the windows it closed."""
    try:
        out = degrade(frame)
    except Drop:
        return ()  # a redelivered frame already counted: its window holds it
    if listener is not None:
        listener.record("degrade", "dropped", "summarised", 0)
    return out.summaries[len(frame.summaries):]
