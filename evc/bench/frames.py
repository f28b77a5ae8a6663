"""The detection frames every benchmark sends: realistic, seeded, and built the same everywhere.

A frame is what a camera running a detector publishes: ten detections of a 640x480 image,
encoded by :func:`evc.wire.encode_detections`. Load generators pre-encode their frames before
the clock starts, so what is measured is the path under test, not the encoder.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from evc.device.synthetic import FRAME_HEIGHT, FRAME_WIDTH, synthetic_detections
from evc.wire import DeviceTopic, Kind, codec, decode, encode_detections
from evc.wire.topics import Channel

DETECTIONS_PER_FRAME = 10
MODEL_VERSION = "detector-1.0.0"
SITE = "bench"
# Realistic identifiers: their lengths are part of every envelope's size.
EPOCH = 1_764_230_400
TS_MS = 1_764_230_400_123


def device_id(index: int) -> str:
    """The id of simulated camera ``index`` (``cam-00``, ``cam-01``, ...)."""
    return f"cam-{index:02d}"


def device_topic(site: str, index: int) -> str:
    """The detections topic of camera ``index`` at ``site``."""
    return str(DeviceTopic(site, device_id(index), Channel.DETECTIONS))


def detection_body(seed: int = 0) -> list[Any]:
    """The msgpack body of one seeded 10-detection frame, to be wrapped by :func:`frame`."""
    rng = np.random.default_rng(seed)
    classes, scores, boxes = synthetic_detections(rng, DETECTIONS_PER_FRAME)
    payload = encode_detections(
        origin=device_id(0), epoch=EPOCH, seq=1, ts_ms=TS_MS, model_version=MODEL_VERSION,
        width=FRAME_WIDTH, height=FRAME_HEIGHT, class_ids=classes, scores=scores, boxes=boxes,
    )
    body: list[Any] = decode(payload).body
    return body


def frame(*, origin: str, epoch: int, seq: int, ts_ms: int, body: list[Any]) -> bytes:
    """One encoded detections envelope around a pre-built body (about 2 us, no numpy)."""
    return codec.encode(
        Kind.DETECTIONS, origin=origin, epoch=epoch, seq=seq, ts_ms=ts_ms, body=body
    )


def sample_frame(seed: int = 0) -> bytes:
    """The reference frame of the size figures, encoded by the public encoder."""
    rng = np.random.default_rng(seed)
    classes, scores, boxes = synthetic_detections(rng, DETECTIONS_PER_FRAME)
    return encode_detections(
        origin=device_id(0), epoch=EPOCH, seq=123_456, ts_ms=TS_MS, model_version=MODEL_VERSION,
        width=FRAME_WIDTH, height=FRAME_HEIGHT, class_ids=classes, scores=scores, boxes=boxes,
    )


def sample_frame_json(seed: int = 0) -> bytes:
    """The same frame as compact JSON with readable keys, at the codec's precision.

    Scores keep 3 decimals and box corners 2 decimals (the codec keeps 1/255 and 1/65535 of
    the frame), and separators are compact, so JSON is not penalised for precision it does
    not need.
    """
    rng = np.random.default_rng(seed)
    classes, scores, boxes = synthetic_detections(rng, DETECTIONS_PER_FRAME)
    doc = {
        "version": 1,
        "kind": "detections",
        "origin": device_id(0),
        "epoch": EPOCH,
        "seq": 123_456,
        "ts_ms": TS_MS,
        "model_version": MODEL_VERSION,
        "width": FRAME_WIDTH,
        "height": FRAME_HEIGHT,
        "detections": [
            {
                "class_id": int(cls),
                "score": round(float(score), 3),
                "box": [round(float(v), 2) for v in box],
            }
            for cls, score, box in zip(classes, scores, boxes, strict=True)
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode()
