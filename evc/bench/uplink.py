"""Uplink reduction: raw detections as JSON beside the gateway's track + aggregate pipeline.

The sample Detector runs once over a seeded synthetic scene (several cameras); the same
detections are then (a) weighed as compact JSON, one MQTT payload per frame, and (b) published
as device records through a real Gateway with ``[track, aggregate]`` and zstd uplink batches,
whose acknowledged uplink bytes are read from its metrics. A raw subscriber on the cloud broker
decodes the SUMMARY records to check that the per-class counts are exact.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from evc.bench.processes import BenchError
from evc.bench.receivers import MessageCounter
from evc.bench.scenarios import _wait_connected, gateway_config
from evc.config import ForwardConfig, GatewayConfig
from evc.gateway import Gateway
from evc.harness import Broker
from evc.inference import Detector
from evc.inference.detector import Detections
from evc.synthetic import SyntheticCamera
from evc.synthetic.sample_model import sample_model_path
from evc.wire import (
    Channel,
    DeviceTopic,
    Kind,
    batch_from,
    decode,
    encode_detections,
    gateway_filter,
    summaries_from,
)

WINDOW_S = 10.0
PIPELINE = [{"type": "track"}, {"type": "aggregate", "window_s": WINDOW_S}]
SCENE_SEED = 11_000
START_MS = 1_700_000_000_000
_MAX_BATCH_BYTES = 64 * 1024 * 1024
_WAIT_S = 60.0
_DRAIN_S = 15.0


@dataclass(frozen=True, slots=True)
class UplinkFigures:
    """The uplink figures of one run and what they were measured on."""

    uplink_reduction_ratio: float
    uplink_bytes_per_device_hour: float
    uplink_counts_exact: float
    cameras: int
    frames: int
    detections: int
    seconds: float
    json_bytes: int
    pipeline_uplink_bytes: int
    pipeline_uplink_records: int


@dataclass(frozen=True, slots=True)
class _Shot:
    device: str
    seq: int
    ts_ms: int
    found: Detections


def detect(cameras: int, fps: float, seconds: float) -> list[_Shot]:
    """Run the sample Detector once over every camera's frames, in time order."""
    detector = Detector(sample_model_path(), intra_op_threads=1)
    count = round(fps * seconds)
    step_ms = round(1000 / fps)
    per_camera = []
    for cam in range(cameras):
        frames = itertools.islice(SyntheticCamera(seed=SCENE_SEED + cam), count)
        per_camera.append([
            _Shot(f"cam-{cam}", n + 1, START_MS + n * step_ms, detector(frame.image))
            for n, frame in enumerate(frames)
        ])
    return [shot for row in zip(*per_camera, strict=True) for shot in row]


def json_payload(shot: _Shot, model_version: str, names: tuple[str, ...]) -> bytes:
    """One frame's raw detections as one compact JSON object with readable keys."""
    found = shot.found
    doc = {
        "device": shot.device, "seq": shot.seq, "ts_ms": shot.ts_ms, "model": model_version,
        "width": found.width, "height": found.height,
        "detections": [
            {"class": names[int(c)], "score": round(float(s), 3),
             "box": [round(float(v), 1) for v in box]}
            for c, s, box in zip(found.class_ids, found.scores, found.boxes, strict=True)
        ],
    }
    return json.dumps(doc, separators=(",", ":")).encode()


class _SummaryCollector:
    """Per-class counts of every SUMMARY record in the uplink batches seen on the cloud."""

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.summaries = 0
        self.records = 0
        self.messages = 0

    def weigh(self, payload: bytes) -> int:
        batch = batch_from(decode(payload, max_bytes=_MAX_BATCH_BYTES), max_bytes=_MAX_BATCH_BYTES)
        for record in batch.records:
            envelope = decode(record)
            if envelope.kind is Kind.SUMMARY:
                summary = summaries_from(envelope)
                self.summaries += 1
                for cls, n in zip(summary.class_ids.tolist(), summary.counts.tolist(), strict=True):
                    self.counts[int(cls)] += int(n)
        self.records += len(batch.records)
        self.messages += 1
        return len(batch.records)


def measure(
    fog: Broker, cloud: Broker, workdir: Path, *, cameras: int, fps: float, seconds: float
) -> UplinkFigures:
    """Measure both sides on the same detections; see the figures' method text."""
    shots = detect(cameras, fps, seconds)
    detector = Detector(sample_model_path(), intra_op_threads=1)
    model, names = detector.model_version, detector.class_names
    json_bytes = sum(len(json_payload(shot, model, names)) for shot in shots)
    truth: Counter[int] = Counter()
    for shot in shots:
        truth.update(int(c) for c in shot.found.class_ids.tolist())

    site = f"uplink-{uuid.uuid4().hex[:8]}"
    base = gateway_config(site, fog, cloud, workdir)
    config = GatewayConfig(
        site=base.site, gateway_id=base.gateway_id, state_dir=base.state_dir, fog=base.fog,
        cloud=base.cloud, outbox=base.outbox, log_level=base.log_level,
        forward=ForwardConfig(compression="zstd"), pipeline=PIPELINE,
    )
    collector = _SummaryCollector()
    with MessageCounter(
        host=cloud.host, port=cloud.port, topic=gateway_filter(Channel.BATCH),
        expected=1 << 62, weigh=collector.weigh,
    ) as _counter:
        gateway = Gateway(config)
        gateway.start()
        try:
            _wait_connected(gateway)
            _publish(fog, site, model, shots)
            registry = gateway.metrics.registry
            deadline = time.monotonic() + _WAIT_S
            while (registry.get_sample_value(
                "evc_gateway_received_messages_total", {"channel": Channel.DETECTIONS.value}
            ) or 0) < len(shots):
                if time.monotonic() > deadline:
                    raise BenchError("the gateway did not take every frame off the fog broker")
                time.sleep(0.05)
            time.sleep(0.5)  # lets the last intake batch commit
        finally:
            # Stopping flushes the open windows; the drain forwards their summaries.
            gateway.stop(drain_timeout_s=_DRAIN_S)
        batches = int(registry.get_sample_value("evc_gateway_uplink_batches_total") or 0)
        deadline = time.monotonic() + 5
        while collector.messages < batches and time.monotonic() < deadline:
            time.sleep(0.05)
    uplink_bytes = int(registry.get_sample_value("evc_gateway_uplink_bytes_total") or 0)
    if uplink_bytes <= 0:
        raise BenchError("the gateway forwarded nothing to the cloud broker")
    exact = dict(collector.counts) == {c: n for c, n in truth.items() if n}
    return UplinkFigures(
        uplink_reduction_ratio=json_bytes / uplink_bytes,
        uplink_bytes_per_device_hour=uplink_bytes / cameras / (seconds / 3600),
        uplink_counts_exact=1.0 if exact else 0.0,
        cameras=cameras, frames=len(shots), detections=sum(truth.values()), seconds=seconds,
        json_bytes=json_bytes, pipeline_uplink_bytes=uplink_bytes,
        pipeline_uplink_records=collector.records,
    )


def _publish(fog: Broker, site: str, model: str, shots: list[_Shot]) -> None:
    """Every frame as a device DETECTIONS record on its device topic, QoS 1."""
    publisher = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"evc-bench-up-{uuid.uuid4().hex[:8]}"
    )
    publisher.max_inflight_messages_set(1000)
    publisher.connect(fog.host, fog.port)
    publisher.loop_start()
    try:
        infos = [
            publisher.publish(
                str(DeviceTopic(site, shot.device, Channel.DETECTIONS)),
                encode_detections(
                    origin=shot.device, epoch=1, seq=shot.seq, ts_ms=shot.ts_ms,
                    model_version=model, width=shot.found.width, height=shot.found.height,
                    class_ids=shot.found.class_ids, scores=shot.found.scores,
                    boxes=shot.found.boxes,
                ),
                qos=1,
            )
            for shot in shots
        ]
        for info in infos:
            info.wait_for_publish(_WAIT_S)
    finally:
        publisher.loop_stop()
        publisher.disconnect()
