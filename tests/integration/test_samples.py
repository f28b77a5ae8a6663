"""The sample device app runs as documented against a real fog broker."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from evc.harness import MosquittoBroker
from evc.wire import decode, detections_from

SAMPLE = Path(__file__).parents[2] / "samples" / "device_app.py"


@pytest.mark.integration
def test_sample_device_app_publishes_every_frame(
    evc_fog_broker: MosquittoBroker, tmp_path: Path
) -> None:
    frames: list[bytes] = []
    subscribed = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="sample-watcher")
    client.on_connect = lambda c, *_: c.subscribe("evc/sample-site/dev/cam-01/det", qos=1)
    client.on_subscribe = lambda *_: subscribed.set()
    client.on_message = lambda _c, _u, msg: frames.append(msg.payload)
    client.connect(evc_fog_broker.host, evc_fog_broker.port)
    client.loop_start()
    try:
        assert subscribed.wait(5)
        run = subprocess.run(
            [sys.executable, str(SAMPLE), evc_fog_broker.url],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
        )
        assert run.returncode == 0, run.stderr
        assert "0 still buffered" in run.stdout
    finally:
        client.loop_stop()
        client.disconnect()
    seqs = [decode(frame).seq for frame in frames]
    assert len(seqs) == 100
    assert seqs == sorted(seqs)
    assert all(len(detections_from(decode(frame))) == 5 for frame in frames)
