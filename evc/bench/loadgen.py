"""Load generators, run as child processes: ``python -m evc.bench.loadgen``.

A publisher in the measuring process would share its GIL with what is measured; on a 2-core
machine that would halve both. Each generator therefore runs in its own interpreter and speaks
a line protocol on stdin/stdout with :class:`evc.bench.processes.LoadProcess`:

1. the parent writes one JSON job;
2. the child builds its messages, connects, and prints ``ready``;
3. the parent writes ``go``; the child runs the job and prints one JSON result (then cleans
   up; the parent may kill it from then on).

Timestamps are ``time.monotonic()`` (system-wide on Linux, so comparable across processes) or
``time.time_ns()`` where a wall clock is needed.

This module is never imported by the rest of :mod:`evc.bench`; it is only run.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from evc.bench import frames
from evc.device import Device, synthetic_detections
from evc.device.synthetic import FRAME_HEIGHT, FRAME_WIDTH

_CONNECT_TIMEOUT_S = 10.0
_POLL_EVERY = 64  # publishes between two non-blocking reads of PUBACKs

Job = dict[str, Any]


def build_messages(job: Job) -> list[tuple[str, bytes]]:
    """The (topic, payload) pairs a publish job sends, in order."""
    count: int = job["count"]
    if job["payloads"] == "raw":
        payload = bytes(range(100))  # 100 bytes, the payload size of the published baselines
        return [(job["topic"], payload)] * count
    body = frames.detection_body()
    devices: int = job["devices"]
    topics = [frames.device_topic(job["site"], n) for n in range(devices)]
    origins = [frames.device_id(n) for n in range(devices)]
    epoch = int(time.time())
    return [
        (topics[i % devices], frames.frame(
            origin=origins[i % devices], epoch=epoch, seq=i // devices + 1,
            ts_ms=time.time_ns() // 1_000_000, body=body,
        ))
        for i in range(count)
    ]


class Publisher:
    """A plain paho publisher that drives ``loop()`` itself with a bounded in-flight window.

    This is the fastest way to publish QoS 1 from Python measured on this class of machine (~21k
    msg/s), so it loads what is measured as hard as a Python device fleet could.
    """

    def __init__(self, *, host: str, port: int, client_id: str, window: int) -> None:
        self.window = window
        self.acked = 0
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.max_inflight_messages_set(window)
        self.client.on_publish = self._on_publish
        self.client.connect(host, port, keepalive=60)
        deadline = time.monotonic() + _CONNECT_TIMEOUT_S
        while not self.client.is_connected():
            if time.monotonic() > deadline:
                raise TimeoutError(f"publisher could not connect to {host}:{port}")
            self.client.loop(timeout=0.05)

    def _on_publish(self, *_args: object) -> None:
        self.acked += 1

    def run(self, messages: list[tuple[str, bytes]], rate: float | None) -> dict[str, Any]:
        """Publish every message at QoS 1 (paced at ``rate`` per second if given)."""
        client = self.client
        started = time.monotonic()
        for sent, (topic, payload) in enumerate(messages):
            if rate is not None:
                self._wait_until(started + sent / rate)
            while sent - self.acked >= self.window:
                client.loop(timeout=0.01)
            client.publish(topic, payload, qos=1)
            if sent % _POLL_EVERY == 0:
                client.loop(timeout=0)
        while self.acked < len(messages):
            client.loop(timeout=0.01)
        finished = time.monotonic()
        client.disconnect()
        client.loop(timeout=0.05)
        return {"sent": len(messages), "acked": self.acked, "started": started,
                "finished": finished}

    def _wait_until(self, when: float) -> None:
        # Reading PUBACKs while waiting keeps the window open at low rates.
        while (left := when - time.monotonic()) > 0:
            self.client.loop(timeout=min(left, 0.01))


def run_publish(
    job: Job, handshake: Callable[[], None], report: Callable[[dict[str, Any]], None]
) -> None:
    """A publish job: pre-build the messages, connect, wait for ``go``, publish."""
    messages = build_messages(job)
    publisher = Publisher(
        host=job["host"], port=job["port"], client_id=job["client_id"], window=job["window"]
    )
    handshake()
    report(publisher.run(messages, job.get("rate")))


def run_devices(
    job: Job, handshake: Callable[[], None], report: Callable[[dict[str, Any]], None]
) -> None:
    """A devices job: real :class:`~evc.device.Device` objects publishing paced frames.

    Reports the wall-clock time (ns) at which each frame was handed to ``publish_detections``,
    with its (origin, epoch, seq), for end-to-end latency; the devices close afterwards.
    """
    count: int = job["count"]
    rate: float = job["rate"]
    with tempfile.TemporaryDirectory(prefix="evc-bench-dev-") as state_dir:
        devices = [
            Device(
                device_id=frames.device_id(n), site=job["site"], broker=job["url"],
                state_dir=state_dir, heartbeat_interval_s=job["heartbeat_interval_s"],
                model_version=frames.MODEL_VERSION,
            ).start()
            for n in range(job["devices"])
        ]
        _wait_connected(devices)
        rng = np.random.default_rng(0)
        detections = [synthetic_detections(rng, frames.DETECTIONS_PER_FRAME) for _ in range(64)]
        handshake()
        published: list[tuple[str, int, int, int]] = []
        started = time.monotonic()
        for i in range(count):
            delay = started + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            classes, scores, boxes = detections[i % len(detections)]
            at_ns = time.time_ns()
            key = devices[i % len(devices)].publish_detections(
                class_ids=classes, scores=scores, boxes=boxes, width=FRAME_WIDTH,
                height=FRAME_HEIGHT, ts_ms=at_ns // 1_000_000,
            )
            published.append((key.origin, key.epoch, key.seq, at_ns))
        finished = time.monotonic()
        unsent = 0
        for device in devices:
            device.wait_until_sent(10.0)
            unsent += device.buffered
        report({"published": published, "unsent": unsent, "started": started,
                "finished": finished})
        _close_all(devices)


def _close_all(devices: list[Device]) -> None:
    # Closing is not measured and each close can wait seconds for a PUBACK: close in parallel.
    closers = [threading.Thread(target=device.close, kwargs={"drain_timeout_s": 1.0})
               for device in devices]
    for closer in closers:
        closer.start()
    for closer in closers:
        closer.join()


def _wait_connected(devices: list[Device]) -> None:
    deadline = time.monotonic() + _CONNECT_TIMEOUT_S
    while not all(device.connected for device in devices):
        if time.monotonic() > deadline:
            raise TimeoutError("devices could not connect to the fog broker")
        time.sleep(0.01)


_JOBS = {"publish": run_publish, "devices": run_devices}


def main() -> int:
    """Read a job, say ready, wait for go, run it, print the result."""
    job: Job = json.loads(sys.stdin.readline())

    def handshake() -> None:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            raise SystemExit(1)

    def report(result: dict[str, Any]) -> None:
        print(json.dumps(result), flush=True)

    _JOBS[job["type"]](job, handshake, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
