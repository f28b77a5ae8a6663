"""The seeded sample scene through a real gateway: the cloud store's counts equal the ground truth.

Two real devices publish a fixed, seeded stretch of the synthetic scene; a gateway with
``[track, aggregate]`` and zstd uplink batches forwards it to a cloud ingest worker, which stores
it in SQLite. The SUMMARY records read back from that store must add up, per class, to exactly
the objects the scene drew, and say in exactly which fraction of each window's frames each class
was present. Once with a clean stop, once with the gateway SIGKILLed mid-stream.
"""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    EvcProcess,
    RawClient,
    await_subscription,
    cloud_config,
    finish_within,
    gateway_config,
    scrape,
    scraped,
    start_cloud,
    start_device,
    wait_for,
    write_yaml,
)

from evc.config import ForwardConfig, MetricsConfig
from evc.device import Device
from evc.gateway import Gateway
from evc.harness import Broker, free_port
from evc.synthetic import SyntheticCamera
from evc.wire import Channel, DeviceTopic, Kind, SummaryFrame, decode, encode_map, summaries_from

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SCENE_SEED = 4_200
DEVICES = ("cam-1", "cam-2")
FPS = 10
SECONDS = 6  # per device: 60 frames, 100 ms apart on the device clock
WINDOW_S = 2
START_MS = 1_700_000_000_000  # a multiple of the window: 3 whole windows per device
STEP_MS = 1000 // FPS
CLOSING_MS = START_MS + 3_600_000  # a late, empty frame whose arrival closes the last windows
PIPELINE = [{"type": "track"}, {"type": "aggregate", "window_s": WINDOW_S}]

Window = tuple[str, int]  # (device, window start ms)


@dataclass
class Truth:
    """What the scene drew: per class over everything, and per window and class."""

    per_class: Counter[int] = field(default_factory=Counter)
    frames: Counter[Window] = field(default_factory=Counter)
    counts: dict[Window, Counter[int]] = field(default_factory=dict)
    present: dict[Window, Counter[int]] = field(default_factory=dict)  # frames with the class


@dataclass(frozen=True)
class Shot:
    """One frame of one device: its clock and its ground-truth objects."""

    device: str
    ts_ms: int
    class_ids: np.ndarray
    boxes: np.ndarray


def scene() -> tuple[list[Shot], Truth]:
    """Every device's seeded frames, in time order, and their ground truth."""
    per_device = []
    for index, device in enumerate(DEVICES):
        camera = itertools.islice(SyntheticCamera(seed=SCENE_SEED + index), FPS * SECONDS)
        per_device.append([
            Shot(device, START_MS + n * STEP_MS, frame.class_ids, frame.boxes)
            for n, frame in enumerate(camera)
        ])
    shots = [shot for row in zip(*per_device, strict=True) for shot in row]
    truth = Truth()
    for shot in shots:
        window = (shot.device, shot.ts_ms - shot.ts_ms % (WINDOW_S * 1000))
        classes = [int(c) for c in shot.class_ids.tolist()]
        truth.per_class.update(classes)
        truth.frames[window] += 1
        truth.counts.setdefault(window, Counter()).update(classes)
        truth.present.setdefault(window, Counter()).update(set(classes))
    return shots, truth


def publish(devices: dict[str, Device], shots: list[Shot], *, pause_s: float = 0.0) -> None:
    """Each frame's ground-truth objects as the device's detections.

    A perfect detector: the detections are exactly the objects the scene drew, every score 1,
    so the counts the cloud ends up with can be compared with the truth exactly.
    """
    for shot in shots:
        n = len(shot.class_ids)
        devices[shot.device].publish_detections(
            class_ids=shot.class_ids, scores=np.ones(n, dtype=np.float32), boxes=shot.boxes,
            width=160, height=160, ts_ms=shot.ts_ms,
        )
        time.sleep(pause_s)


def publish_closing_frames(devices: dict[str, Device]) -> None:
    for device in devices.values():
        device.publish_detections(
            class_ids=[], scores=[], boxes=np.zeros((0, 4)), width=160, height=160,
            ts_ms=CLOSING_MS,
        )


def stored_summaries(store_path: Path, site: str) -> list[tuple[str, SummaryFrame]]:
    """Every SUMMARY record of ``site`` in the cloud store, decoded (read-only)."""
    if not store_path.exists():
        return []
    with closing(sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)) as db:
        db.execute("PRAGMA busy_timeout=5000")
        try:
            rows = db.execute(
                "SELECT payload FROM records WHERE site = ? AND kind = ?",
                (site, int(Kind.SUMMARY)),
            ).fetchall()
        except sqlite3.OperationalError:  # the ingest has not created its schema yet
            return []
    envelopes = [decode(payload) for (payload,) in rows]
    return [(envelope.origin, summaries_from(envelope)) for envelope in envelopes]


def wait_for_windows(store_path: Path, site: str, truth: Truth) -> None:
    """Wait until the store holds a summary of every window the scene filled."""
    def windows() -> set[Window]:
        return {(origin, s.window_start_ms) for origin, s in stored_summaries(store_path, site)}

    wait_for(lambda: set(truth.frames) <= windows(), timeout=60, interval=0.2,
             message=lambda: f"summaries of {sorted(set(truth.frames) - windows())}")


def assert_counts_exact(store_path: Path, site: str, truth: Truth) -> None:
    """The stored summaries' counts and occupancy against the scene's ground truth."""
    per_class: Counter[int] = Counter()
    seen: list[Window] = []
    for origin, summary in stored_summaries(store_path, site):
        window = (origin, summary.window_start_ms)
        seen.append(window)
        counts = dict(zip(summary.class_ids.tolist(), summary.counts.tolist(), strict=True))
        per_class.update(counts)
        if window not in truth.frames:  # the closing frame's window: one empty frame
            assert (summary.window_start_ms, summary.frames, counts) == (
                CLOSING_MS - CLOSING_MS % (WINDOW_S * 1000), 1, {}
            )
            continue
        assert summary.window_ms == WINDOW_S * 1000
        assert summary.frames == truth.frames[window]
        assert counts == dict(truth.counts[window]), window
        occupancy = dict(zip(summary.class_ids.tolist(), summary.occupancy.tolist(), strict=True))
        expected = {c: n / truth.frames[window] for c, n in truth.present[window].items()}
        assert occupancy.keys() == expected.keys(), window
        for cls, fraction in expected.items():  # occupancy travels as uint8 /255
            assert occupancy[cls] == pytest.approx(fraction, abs=0.5 / 255 + 1e-6), (window, cls)
    assert sorted(w for w in seen if w in truth.frames) == sorted(truth.frames)  # each once
    assert per_class == truth.per_class


def test_the_cloud_store_counts_every_object_of_the_seeded_scene(
    evc_fog_broker: Broker,
    evc_cloud_broker: Broker,
    evc_topic_namespace: str,
    tmp_path: Path,
    raw_client_factory: Callable[..., RawClient],
) -> None:
    site = evc_topic_namespace
    store_path = tmp_path / "cloud" / "records.db"
    shots, truth = scene()
    config = gateway_config(
        site=site, state_dir=tmp_path / "gw", fog=evc_fog_broker, cloud=evc_cloud_broker,
        forward=ForwardConfig(compression="zstd"), pipeline=PIPELINE,
    )
    with ExitStack() as stack:
        start_cloud(stack, cloud_config(site=site, store_path=store_path, cloud=evc_cloud_broker))
        gateway = Gateway(config)
        gateway.start()
        try:
            await_subscription(gateway, raw_client_factory(evc_fog_broker), site, epoch=1)
            devices = {
                name: start_device(stack, site, name, evc_fog_broker, tmp_path / "dev")
                for name in DEVICES
            }
            publish(devices, shots)
            wait_for(lambda: through_aggregate(gateway) == len(shots),
                     message=lambda: f"{len(shots)} frames through the aggregator, "
                     f"{through_aggregate(gateway)} so far")
        finally:
            # Stopping flushes the open windows (no frame closes the last ones here) and the
            # drain forwards their summaries.
            finish_within(lambda: gateway.stop(drain_timeout_s=15), "Gateway.stop()", 30)
        wait_for_windows(store_path, site, truth)
        assert_counts_exact(store_path, site, truth)
    assert sum(truth.per_class.values()) > len(shots)  # a busy scene, not a trivial one
    assert len(truth.per_class) > 1


def through_aggregate(gateway: Gateway) -> float:
    """Frames the ``aggregate`` operator has seen, whatever it did with them."""
    return sum(
        sample.value
        for family in gateway.metrics.registry.collect()
        if family.name == "evc_gateway_pipeline_frames"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels.get("operator") == "aggregate"
    )


def scraped_through_aggregate(port: int) -> float:
    """:func:`through_aggregate` of a gateway process, from its metrics endpoint."""
    samples = scrape(port) or {}
    return sum(
        value for (name, labels), value in samples.items()
        if name == "evc_gateway_pipeline_frames_total" and ("operator", "aggregate") in labels
    )


def test_the_cloud_store_counts_stay_exact_across_a_sigkilled_gateway(
    evc_fog_broker: Broker,
    evc_cloud_broker: Broker,
    evc_topic_namespace: str,
    tmp_path: Path,
    raw_client_factory: Callable[..., RawClient],
    evc_process_factory: Callable[..., EvcProcess],
) -> None:
    site = evc_topic_namespace
    store_path = tmp_path / "cloud" / "records.db"
    shots, truth = scene()
    port = free_port()
    config_path = write_yaml(tmp_path / "gateway.yaml", gateway_config(
        site=site, state_dir=tmp_path / "gw", fog=evc_fog_broker, cloud=evc_cloud_broker,
        forward=ForwardConfig(compression="zstd"), pipeline=PIPELINE,
        metrics=MetricsConfig(port=port),
    ))
    runs = iter(range(10))

    def start_gateway_process() -> EvcProcess:
        process = evc_process_factory(
            ["gateway", "run", "--config", str(config_path)], name=f"gateway-{next(runs)}"
        )
        wait_for(lambda: scraped(port, "evc_gateway_fog_connected") == 1.0,
                 message=lambda: f"the gateway to connect; its log:\n{process.log()}")
        return process

    with ExitStack() as stack:
        start_cloud(stack, cloud_config(site=site, store_path=store_path, cloud=evc_cloud_broker))
        gateway = start_gateway_process()
        await_process_subscription(port, raw_client_factory(evc_fog_broker), site)
        devices = {
            name: start_device(stack, site, name, evc_fog_broker, tmp_path / "dev")
            for name in DEVICES
        }
        publisher = threading.Thread(target=publish, args=(devices, shots), kwargs={
            "pause_s": 0.02})
        publisher.start()
        try:
            # Killed mid-stream, once it has put a good part of the frames through the pipeline;
            # the frames published meanwhile wait in its persistent session on the fog broker.
            wait_for(lambda: scraped_through_aggregate(port) >= len(shots) // 3,
                     message="the gateway to aggregate a third of the frames")
            gateway.kill()
            gateway = start_gateway_process()
        finally:
            publisher.join()
        publish_closing_frames(devices)
        wait_for_windows(store_path, site, truth)
        assert gateway.terminate() == 0, gateway.log()
        assert_counts_exact(store_path, site, truth)


def await_process_subscription(port: int, device: RawClient, site: str) -> None:
    """:func:`conftest.await_subscription` for a gateway process, read from its metrics."""
    topic = str(DeviceTopic(site, "probe", Channel.HEARTBEAT))
    beats = iter(range(1, 1000))

    def subscribed() -> bool:
        if (scraped(port, "evc_gateway_committed_records_total") or 0) >= 1:
            return True
        beat = encode_map(Kind.HEARTBEAT, origin="probe", epoch=1, seq=next(beats), ts_ms=1,
                          fields={"ok": True})
        device.publish(topic, beat)
        return False

    wait_for(subscribed, interval=0.2, message="the gateway's subscription")
