"""The intake runs detections records through the pipeline; other records pass untouched."""

from __future__ import annotations

import pytest

from evc.config import GatewayConfig
from evc.gateway import admit
from evc.gateway.pipeline import Pipeline, build_pipeline
from evc.wire import (
    Channel,
    DeviceTopic,
    Kind,
    decode,
    detections_from,
    encode_detections,
    encode_map,
)

SITE = "depot-1"
DET = str(DeviceTopic(SITE, "cam-1", Channel.DETECTIONS))
HB = str(DeviceTopic(SITE, "cam-1", Channel.HEARTBEAT))


def pipeline() -> Pipeline:
    config = GatewayConfig(
        site=SITE, gateway_id="gw", pipeline=[
            {"type": "threshold", "default": 0.5}, {"type": "min_detections"},
        ],
    )
    return build_pipeline(config.pipeline)


def record(scores: list[float], seq: int = 7) -> bytes:
    return encode_detections(
        origin="cam-1", epoch=3, seq=seq, ts_ms=123, model_version="m-2", width=640, height=480,
        class_ids=list(range(len(scores))), scores=scores,
        boxes=[[10 * i, 10, 10 * i + 5, 20] for i in range(len(scores))],
    )


def test_a_changed_frame_is_re_encoded_under_the_device_key() -> None:
    [stored], channel = admit(DET, record([0.9, 0.1, 0.7]), site=SITE, max_bytes=4096,
                              pipeline=pipeline())
    assert channel is Channel.DETECTIONS
    envelope = decode(stored.payload)
    assert (envelope.origin, envelope.epoch, envelope.seq, envelope.ts_ms) == ("cam-1", 3, 7, 123)
    frame = detections_from(envelope)
    assert frame.model_version == "m-2"
    assert frame.class_ids.tolist() == [0, 2]
    assert frame.boxes[1].tolist() == pytest.approx([20, 10, 25, 20], abs=0.01)


def test_unchanged_frames_and_heartbeats_keep_their_bytes() -> None:
    payload = record([0.9, 0.8])
    [stored], _ = admit(DET, payload, site=SITE, max_bytes=4096, pipeline=pipeline())
    assert stored.payload == payload
    beat = encode_map(Kind.HEARTBEAT, origin="cam-1", epoch=3, seq=8, ts_ms=1, fields={"ok": 1})
    [stored], _ = admit(HB, beat, site=SITE, max_bytes=4096, pipeline=pipeline())
    assert stored.payload == beat


def test_a_dropped_frame_yields_no_record() -> None:
    stored, channel = admit(DET, record([0.1]), site=SITE, max_bytes=4096, pipeline=pipeline())
    assert stored == []
    assert channel is Channel.DETECTIONS
