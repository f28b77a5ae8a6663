"""The device library against a real fog broker: offline buffering, asyncio, birth and death."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pytest
from conftest import (
    Published,
    RawClient,
    finish_within,
    make_device,
    publish_frames,
    start_device,
    wait_for,
)

from evc import AsyncDevice
from evc.device import synthetic_detections
from evc.harness import Broker
from evc.wire import (
    Channel,
    DeviceTopic,
    Envelope,
    Kind,
    decode,
    detections_from,
    device_filter,
    map_from,
)

pytestmark = pytest.mark.integration


def _state(payload: bytes) -> tuple[str, Envelope]:
    envelope = decode(payload)
    assert envelope.kind is Kind.STATE
    return str(map_from(envelope)["state"]), envelope


def test_device_buffers_while_broker_is_down_and_drains_in_order(
    evc_fog_broker: Broker,
    evc_topic_namespace: str,
    tmp_path: Path,
    raw_client_factory: Callable[..., RawClient],
) -> None:
    site = evc_topic_namespace
    topic = str(DeviceTopic(site, "cam-0", Channel.DETECTIONS))
    watcher_id = f"{site}-watcher"
    # A persistent subscription made before the outage receives everything published after it.
    watcher = raw_client_factory(evc_fog_broker, client_id=watcher_id, clean_session=False)
    watcher.subscribe(topic)
    watcher.close()
    evc_fog_broker.stop()
    published = Published()
    with ExitStack() as stack:
        device = start_device(stack, site, "cam-0", evc_fog_broker, tmp_path / "dev")
        publish_frames(device, 200, np.random.default_rng(3), published)
        assert not device.connected
        assert device.buffered == 200
        evc_fog_broker.restart()
        watcher = raw_client_factory(evc_fog_broker, client_id=watcher_id, clean_session=False)
        wait_for(
            lambda: len(watcher.payloads(topic)) >= 200,
            message=lambda: f"200 frames at the watcher, got {len(watcher.payloads(topic))}",
        )
        assert device.wait_until_sent(10)
    envelopes = [decode(payload) for payload in watcher.payloads(topic)]
    assert [(e.origin, e.epoch, e.seq) for e in envelopes] == published.keys
    assert sum(len(detections_from(e)) for e in envelopes) == published.detections


def test_async_device_publishes_detections_and_heartbeats(
    evc_fog_broker: Broker,
    evc_topic_namespace: str,
    tmp_path: Path,
    raw_client_factory: Callable[..., RawClient],
) -> None:
    site = evc_topic_namespace
    watcher = raw_client_factory(evc_fog_broker)
    watcher.subscribe(device_filter(site))
    rng = np.random.default_rng(5)
    sent: list[tuple[int, int]] = []

    async def scenario() -> None:
        async with AsyncDevice(
            device_id="cam-a",
            site=site,
            broker=evc_fog_broker.url,
            state_dir=tmp_path / "dev",
            heartbeat_interval_s=0,
            model_version="m-7",
        ) as device:
            for _ in range(20):
                classes, scores, boxes = synthetic_detections(rng, 4)
                key = await device.publish_detections(
                    class_ids=classes, scores=scores, boxes=boxes, width=640, height=480
                )
                sent.append((key.seq, int(Kind.DETECTIONS)))
            key = await device.publish_heartbeat({"temperature_c": 41.5})
            sent.append((key.seq, int(Kind.HEARTBEAT)))
            assert await device.wait_until_sent(10)

    finish_within(lambda: asyncio.run(scenario()), "the AsyncDevice scenario", timeout=60)

    det = str(DeviceTopic(site, "cam-a", Channel.DETECTIONS))
    hb = str(DeviceTopic(site, "cam-a", Channel.HEARTBEAT))
    wait_for(lambda: len(watcher.payloads(det)) >= 20 and watcher.payloads(hb))
    frames = [decode(p) for p in watcher.payloads(det)]
    assert [(f.seq, int(f.kind)) for f in frames] == sent[:20]
    assert {detections_from(f).model_version for f in frames} == {"m-7"}
    (heartbeat,) = [decode(p) for p in watcher.payloads(hb)]
    assert heartbeat.seq == sent[-1][0]
    fields = map_from(heartbeat)
    assert fields["temperature_c"] == 41.5
    assert fields["model"] == "m-7"


def test_birth_is_retained_online_and_graceful_close_retains_offline(
    evc_fog_broker: Broker,
    evc_topic_namespace: str,
    tmp_path: Path,
    raw_client_factory: Callable[..., RawClient],
) -> None:
    site = evc_topic_namespace
    topic = str(DeviceTopic(site, "cam-0", Channel.STATE))
    device = make_device(site, "cam-0", evc_fog_broker, tmp_path / "dev").start()
    try:
        wait_for(lambda: device.connected, message="the device to connect")
        # A subscriber that comes later still learns the state: the birth is retained.
        late = raw_client_factory(evc_fog_broker)
        late.subscribe(topic)
        wait_for(lambda: late.payloads(topic), message="the retained birth")
        state, birth = _state(late.payloads(topic)[0])
        assert state == "online"
        assert late.messages[0].retain
    finally:
        finish_within(device.close, "Device.close()")
    wait_for(lambda: len(late.payloads(topic)) >= 2, message="the graceful death")
    state, death = _state(late.payloads(topic)[-1])
    assert state == "offline"
    assert death.seq > birth.seq
    fresh = raw_client_factory(evc_fog_broker)
    fresh.subscribe(topic)
    wait_for(lambda: fresh.payloads(topic), message="the retained death")
    assert _state(fresh.payloads(topic)[0])[0] == "offline"


_DEVICE_PROCESS = """
import sys, time
from evc import Device
device = Device(device_id="cam-9", site=sys.argv[1], broker=sys.argv[2], state_dir=sys.argv[3],
                heartbeat_interval_s=0).start()
time.sleep(120)
"""


def test_last_will_marks_a_killed_device_offline_after_its_birth(
    evc_fog_broker: Broker,
    evc_topic_namespace: str,
    tmp_path: Path,
    raw_client_factory: Callable[..., RawClient],
) -> None:
    site = evc_topic_namespace
    topic = str(DeviceTopic(site, "cam-9", Channel.STATE))
    watcher = raw_client_factory(evc_fog_broker)
    watcher.subscribe(topic)
    process = subprocess.Popen(
        [sys.executable, "-c", _DEVICE_PROCESS, site, evc_fog_broker.url, str(tmp_path / "dev")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: watcher.payloads(topic), message="the birth of the device process")
    finally:
        process.kill()
        process.wait(timeout=10)
    wait_for(lambda: len(watcher.payloads(topic)) >= 2, message="the Last Will")
    (born, birth), (died, death) = (_state(p) for p in watcher.payloads(topic)[:2])
    assert (born, died) == ("online", "offline")
    assert death.epoch == birth.epoch
    # Whoever orders one device's states by key must see the death after the birth it ends.
    assert death.seq > birth.seq, f"death seq {death.seq} sorts before birth seq {birth.seq}"
    fresh = raw_client_factory(evc_fog_broker)
    fresh.subscribe(topic)
    wait_for(lambda: fresh.payloads(topic), message="the retained Last Will")
    assert _state(fresh.payloads(topic)[0])[0] == "offline"
