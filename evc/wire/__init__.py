"""Bytes and topics: the only place where EVC messages are encoded, decoded, named and parsed."""

from evc.wire.codec import (
    PROTOCOL_VERSION,
    Batch,
    BatchEncoding,
    DetectionFrame,
    Envelope,
    IdempotencyKey,
    Kind,
    batch_from,
    decode,
    detections_from,
    encode_batch,
    encode_detections,
    encode_map,
    map_from,
    validate_record,
)
from evc.wire.topics import Channel, DeviceTopic, GatewayTopic, device_filter, gateway_filter

__all__ = [
    "PROTOCOL_VERSION",
    "Batch",
    "BatchEncoding",
    "Channel",
    "DetectionFrame",
    "DeviceTopic",
    "Envelope",
    "GatewayTopic",
    "IdempotencyKey",
    "Kind",
    "batch_from",
    "decode",
    "detections_from",
    "device_filter",
    "encode_batch",
    "encode_detections",
    "encode_map",
    "gateway_filter",
    "map_from",
    "validate_record",
]
