"""Shared helpers of the integration tests: polling, configs, streams, raw clients, store reads.

Every test gets its own site name (``evc_topic_namespace``), its own brokers and its own
``tmp_path`` state, so tests never see each other's messages or files.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
import yaml
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from evc.cloud import CloudIngest
from evc.config import (
    BrokerConfig,
    CloudConfig,
    CloudIngestConfig,
    GatewayConfig,
    OutboxConfig,
    StoreConfig,
)
from evc.device import Device, synthetic_detections
from evc.device.synthetic import FRAME_HEIGHT, FRAME_WIDTH
from evc.gateway import Gateway
from evc.harness import Broker
from evc.wire import Channel, DeviceTopic, Kind, encode_map

Key = tuple[str, int, int]

DEFAULT_TIMEOUT_S = 30.0
_POLL_S = 0.05


def wait_for(
    predicate: Callable[[], Any],
    timeout: float = DEFAULT_TIMEOUT_S,
    *,
    interval: float = _POLL_S,
    message: str | Callable[[], str] = "condition",
) -> Any:
    """Poll ``predicate`` until it returns something truthy and return that; fail on timeout.

    ``message`` (or its result, computed only on failure) says what was awaited.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            text = message() if callable(message) else message
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {text}", pytrace=False)
        time.sleep(interval)


def finish_within(action: Callable[[], object], what: str, timeout: float = 15.0) -> None:
    """Run a close or stop call, failing the test (with the stuck stacks) if it hangs.

    Shutdown paths join threads without a timeout; a deadlock there would stall the whole run
    until pytest-timeout, and then again in every later teardown. The call runs in a daemon
    thread instead, so a hang becomes a named failure and the run goes on.
    """
    errors: list[BaseException] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:  # re-raised in the test thread below
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"finish {what}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"{what} did not return within {timeout:.0f} s:\n{evc_stacks()}", pytrace=False)
    if errors:
        raise errors[0]


def evc_stacks() -> str:
    """The Python stacks of every thread that is inside EVC code (to diagnose a hang)."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    dumps = []
    for ident, frame in sys._current_frames().items():
        stack = traceback.format_stack(frame)
        if any("/evc/" in line for line in stack):
            dumps.append(f"--- thread {names.get(ident, ident)}:\n" + "".join(stack[-8:]))
    return "\n".join(dumps)


def start_device(
    stack: ExitStack, site: str, device_id: str, broker: Broker, state_dir: Path, **kw: Any
) -> Device:
    """Start a device (heartbeats off unless given) and close it when ``stack`` unwinds."""
    device = make_device(site, device_id, broker, state_dir, **kw).start()
    stack.callback(finish_within, device.close, f"Device {device_id}.close()")
    return device


def start_gateway(stack: ExitStack, config: GatewayConfig) -> Gateway:
    """Start an in-process gateway and stop it when ``stack`` unwinds."""
    gateway = Gateway(config)
    gateway.start()
    stack.callback(finish_within, gateway.stop, "Gateway.stop()")
    return gateway


def start_cloud(stack: ExitStack, config: CloudConfig) -> CloudIngest:
    """Start an in-process cloud ingest, wait until it is connected, stop it at unwind."""
    ingest = CloudIngest(config)
    ingest.start()
    stack.callback(finish_within, ingest.stop, "CloudIngest.stop()")
    wait_for(ingest.consumer.connected.is_set, message="the cloud ingest to connect")
    return ingest


def received(gateway: Gateway, channel: str) -> float:
    """Device messages of ``channel`` the gateway took off the fog broker."""
    return sample_value(
        gateway.metrics.registry, "evc_gateway_received_messages_total", {"channel": channel}
    )


def committed(gateway: Gateway) -> float:
    """Device records the gateway committed to its outbox (refused ones are counted as drops)."""
    return sample_value(gateway.metrics.registry, "evc_gateway_committed_records_total")


def rejected(gateway: Gateway, reason: str) -> float:
    """Device messages the gateway rejected for ``reason``."""
    return sample_value(
        gateway.metrics.registry, "evc_gateway_rejected_messages_total", {"reason": reason}
    )


# -- configs -----------------------------------------------------------------------------------


def gateway_config(
    *,
    site: str,
    state_dir: Path,
    fog: Broker,
    cloud: Broker,
    gateway_id: str = "gw-1",
    **overrides: Any,
) -> GatewayConfig:
    """A gateway config with its state and outbox under ``state_dir``."""
    settings: dict[str, Any] = {
        "site": site,
        "gateway_id": gateway_id,
        "state_dir": state_dir,
        "fog": BrokerConfig(url=fog.url),
        "cloud": BrokerConfig(url=cloud.url),
        "outbox": OutboxConfig(path=state_dir / "outbox.db"),
    }
    settings.update(overrides)
    return GatewayConfig(**settings)


def cloud_config(*, site: str, store_path: Path, cloud: Broker, **overrides: Any) -> CloudConfig:
    """A cloud ingest config storing into ``store_path``, with a worker id unique to the test."""
    settings: dict[str, Any] = {
        "cloud": BrokerConfig(url=cloud.url),
        "ingest": CloudIngestConfig(worker_id=f"cloud-{site}"),
        "store": StoreConfig(path=store_path),
    }
    settings.update(overrides)
    return CloudConfig(**settings)


def write_yaml(path: Path, config: GatewayConfig | CloudConfig) -> Path:
    """Write ``config`` as the YAML file a daemon reads with ``--config``."""
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")), encoding="utf-8")
    return path


def sample_value(registry: Any, name: str, labels: dict[str, str] | None = None) -> float:
    """Value of one sample of a prometheus registry, 0 if it was never set."""
    value = registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else float(value)


# -- devices and streams -----------------------------------------------------------------------


def make_device(site: str, device_id: str, broker: Broker, state_dir: Path, **kw: Any) -> Device:
    """A device with heartbeats off (tests count records exactly), not started."""
    kw.setdefault("heartbeat_interval_s", 0)
    return Device(
        device_id=device_id,
        site=site,
        broker=broker.url,
        state_dir=state_dir,
        model_version="test-0",
        **kw,
    )


@dataclass
class Published:
    """What a test published: the key and the number of detections of every frame."""

    keys: list[Key] = field(default_factory=list)
    detections: int = 0


def publish_frames(device: Device, count: int, rng: np.random.Generator, out: Published) -> None:
    """Publish ``count`` frames with 0-10 random detections each and record them in ``out``."""
    for _ in range(count):
        n = int(rng.integers(0, 11))
        classes, scores, boxes = synthetic_detections(rng, n)
        key = device.publish_detections(
            class_ids=classes, scores=scores, boxes=boxes, width=FRAME_WIDTH, height=FRAME_HEIGHT
        )
        out.keys.append((key.origin, key.epoch, key.seq))
        out.detections += n


class Stream:
    """A thread publishing frames round-robin over ``devices`` at ``fps`` per device.

    Frames are paced on a shared clock; :meth:`stop` joins the thread and re-raises any error.
    """

    def __init__(self, devices: list[Device], *, fps: float, seed: int = 0) -> None:
        self.devices = devices
        self.published = Published()
        self._interval = 1.0 / (fps * len(devices))
        self._rng = np.random.default_rng(seed)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="stream", daemon=True)

    def __enter__(self) -> Stream:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def count(self) -> int:
        return len(self.published.keys)

    def stop(self) -> Published:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if self._error is not None:
            raise self._error
        return self.published

    def _run(self) -> None:
        started = time.monotonic()
        frames = 0
        try:
            while not self._stop.is_set():
                device = self.devices[frames % len(self.devices)]
                publish_frames(device, 1, self._rng, self.published)
                frames += 1
                delay = started + frames * self._interval - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
        except BaseException as exc:  # Re-raised in the test thread by stop().
            self._error = exc


# -- the cloud store ---------------------------------------------------------------------------


def stored_keys(store_path: Path, site: str, kind: int = 1) -> list[Key]:
    """Keys of the records of ``kind`` stored for ``site`` (read-only, beside a running ingest)."""
    if not store_path.exists():
        return []
    with closing(sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)) as db:
        db.execute("PRAGMA busy_timeout=5000")
        try:
            rows = db.execute(
                "SELECT origin, epoch, seq FROM records WHERE site = ? AND kind = ?", (site, kind)
            ).fetchall()
        except sqlite3.OperationalError:  # the schema is not created yet
            return []
    return [(origin, epoch, seq) for origin, epoch, seq in rows]


def wait_until_stored(
    store_path: Path,
    site: str,
    expected: list[Key],
    timeout: float,
    *,
    gateway: Gateway | None = None,
) -> None:
    """Wait until every key of ``expected`` is stored; fail naming how many are missing.

    With ``gateway``, the failure also tells its outbox backlog and uplink state.
    """
    wanted = set(expected)

    def done() -> bool:
        return wanted <= set(stored_keys(store_path, site))

    def missing() -> str:
        have = set(stored_keys(store_path, site))
        text = f"all {len(wanted)} published records stored; {len(wanted - have)} missing"
        if gateway is not None:
            text += (
                f" (gateway outbox holds {len(gateway.outbox)} records, uplink connected:"
                f" {gateway.uplink.connected.is_set()}, in flight: {gateway.uplink.inflight()})"
            )
        return text

    wait_for(done, timeout, interval=0.2, message=missing)


# -- raw MQTT clients --------------------------------------------------------------------------


class RawClient:
    """A plain paho client for publishing raw bytes and recording what arrives."""

    def __init__(
        self, broker: Broker, *, client_id: str | None = None, clean_session: bool = True
    ) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"raw-{uuid.uuid4().hex[:12]}",
            clean_session=clean_session,
        )
        self._client.max_inflight_messages_set(1000)
        self._client.on_connect = lambda *_a: self._connected.set()
        self._client.on_subscribe = lambda *_a: self._subscribed.set()
        self._client.on_message = self._on_message
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        if not self._connected.wait(DEFAULT_TIMEOUT_S):
            self.close()
            pytest.fail("raw MQTT client did not connect", pytrace=False)

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(message)

    def subscribe(self, topic: str) -> None:
        """Subscribe at QoS 1 and return once the SUBACK arrived."""
        self._subscribed.clear()
        self._client.subscribe(topic, qos=1)
        assert self._subscribed.wait(DEFAULT_TIMEOUT_S), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 and return once the broker acknowledged it."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(timeout=DEFAULT_TIMEOUT_S)
        assert info.is_published(), f"publish on {topic} not acknowledged"

    def payloads(self, topic: str | None = None) -> list[bytes]:
        with self._lock:
            return [bytes(m.payload) for m in self.messages if topic in (None, m.topic)]

    def close(self) -> None:
        if self._client.is_connected():
            self._client.disconnect()
        self._client.loop_stop()
        sock = self._client.socket()
        if sock is not None:  # an open socket is a ResourceWarning, and warnings are errors
            sock.close()


@pytest.fixture
def raw_client_factory() -> Iterator[Callable[..., RawClient]]:
    """Make raw paho clients that are closed after the test."""
    clients: list[RawClient] = []

    def make(broker: Broker, **kw: Any) -> RawClient:
        client = RawClient(broker, **kw)
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        client.close()


# -- daemons as subprocesses -------------------------------------------------------------------


class EvcProcess:
    """``python -m evc ...`` as a child process, its output in a log file under ``tmp_path``."""

    def __init__(self, args: list[str], *, log_path: Path, cwd: Path) -> None:
        self.args = args
        self.log_path = log_path
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> EvcProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "evc", *self.args],
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return self

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait(timeout=10)

    def terminate(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait and return the exit code (killing it if it hangs)."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.terminate()
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


@pytest.fixture
def evc_process_factory(tmp_path: Path) -> Iterator[Callable[..., EvcProcess]]:
    """Start ``python -m evc`` children; any still running are killed after the test."""
    processes: list[EvcProcess] = []

    def make(args: list[str], *, name: str) -> EvcProcess:
        proc = EvcProcess(args, log_path=tmp_path / f"{name}.log", cwd=tmp_path).start()
        processes.append(proc)
        return proc

    yield make
    for proc in processes:
        proc.kill()


def run_evc(
    args: list[str], *, cwd: Path, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m evc ...`` to completion and return its output."""
    return subprocess.run(
        [sys.executable, "-m", "evc", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    """Samples of http://127.0.0.1:port/metrics by (name, sorted labels); None if unreachable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def scraped(port: int, name: str, **labels: str) -> float | None:
    """One sample from a metrics endpoint; None if the endpoint does not answer."""
    samples = scrape(port)
    if samples is None:
        return None
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def await_subscription(gateway: Gateway, device: RawClient, site: str, *, epoch: int) -> None:
    """Publish heartbeats (which no pipeline operator sees) from ``cam-1`` until the gateway
    commits one: from then on it is subscribed and nothing published is missed."""
    topic = str(DeviceTopic(site, "cam-1", Channel.HEARTBEAT))
    beats = iter(range(1, 1000))

    def subscribed() -> bool:
        if committed(gateway) >= 1:
            return True
        beat = encode_map(Kind.HEARTBEAT, origin="cam-1", epoch=epoch, seq=next(beats),
                          ts_ms=1, fields={"ok": True})
        device.publish(topic, beat)
        return False

    wait_for(subscribed, interval=0.2, message="the gateway's subscription")
