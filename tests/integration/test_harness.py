"""The Mosquitto harness against real brokers: lifecycle, persistence, deep queues, fixtures."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from evc.errors import BrokerError
from evc.harness import Broker, MosquittoBroker, Tier, render_config
from evc.harness.pytest_plugin import BrokerFactory

pytestmark = pytest.mark.integration

_TIMEOUT_SECONDS = 30.0


class Subscriber:
    """A paho client that records the payloads it receives, for assertions."""

    def __init__(self, broker: Broker, client_id: str, *, clean_session: bool) -> None:
        self.payloads: list[bytes] = []
        self._connected = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session
        )
        self._client.on_connect = lambda *_args: self._connected.set()
        self._client.on_message = lambda _c, _u, msg: self.payloads.append(bytes(msg.payload))
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        assert self._connected.wait(_TIMEOUT_SECONDS), "subscriber did not connect"

    def subscribe(self, topic: str) -> None:
        info = self._client.subscribe(topic, qos=1)
        assert info[0] == mqtt.MQTT_ERR_SUCCESS
        time.sleep(0.2)  # SUBACK is asynchronous; a publish racing it would not be routed.

    def wait_for(self, count: int) -> list[bytes]:
        deadline = time.monotonic() + _TIMEOUT_SECONDS
        while len(self.payloads) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.payloads

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def publish_qos1(broker: Broker, topic: str, payloads: list[bytes]) -> None:
    """Publish every payload with QoS 1 and return once the broker acknowledged all of them."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{os.urandom(4).hex()}")
    client.max_inflight_messages_set(500)
    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=1) for payload in payloads]
        for info in infos:
            info.wait_for_publish(timeout=_TIMEOUT_SECONDS)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def queue_for_offline_subscriber(broker: Broker, client_id: str, topic: str, count: int) -> None:
    """Create a persistent session subscribed to ``topic``, disconnect it, publish ``count``."""
    subscriber = Subscriber(broker, client_id, clean_session=False)
    subscriber.subscribe(topic)
    subscriber.close()
    publish_qos1(broker, topic, [str(i).encode() for i in range(count)])


@pytest.fixture
def broker() -> Iterator[MosquittoBroker]:
    with MosquittoBroker(tier="fog") as started:
        yield started


def test_start_connect_publish_subscribe_roundtrip(
    broker: MosquittoBroker, evc_topic_namespace: str
) -> None:
    topic = f"evc/{evc_topic_namespace}/roundtrip"
    subscriber = Subscriber(broker, f"{evc_topic_namespace}-sub", clean_session=True)
    subscriber.subscribe(topic)
    publish_qos1(broker, topic, [b"hello"])
    assert subscriber.wait_for(1) == [b"hello"]
    subscriber.close()
    assert broker.url == f"mqtt://127.0.0.1:{broker.port}"
    # Started as root, a broker that dropped to the mosquitto user could not open its log.
    log = broker.log_path.read_text()
    assert "running" in log
    assert "Unable to open log file" not in log


def test_graceful_restart_keeps_port_and_queued_messages(
    broker: MosquittoBroker, evc_topic_namespace: str
) -> None:
    topic = f"evc/{evc_topic_namespace}/persist"
    client_id = f"{evc_topic_namespace}-durable"
    queue_for_offline_subscriber(broker, client_id, topic, 100)
    port = broker.port
    broker.restart()
    assert broker.port == port
    assert (broker.data_dir / "mosquitto.db").is_file()
    subscriber = Subscriber(broker, client_id, clean_session=False)
    received = subscriber.wait_for(100)
    subscriber.close()
    assert sorted(received, key=int) == [str(i).encode() for i in range(100)]


def test_kill_then_restart_serves_again(broker: MosquittoBroker, evc_topic_namespace: str) -> None:
    port = broker.port
    broker.kill()
    assert not broker.running
    assert not broker.ping(timeout=0.2)
    broker.restart()
    assert broker.running
    assert broker.port == port
    assert broker.ping()


def test_offline_subscriber_gets_a_backlog_of_5000_qos1_messages(
    broker: MosquittoBroker, evc_topic_namespace: str
) -> None:
    topic = f"evc/{evc_topic_namespace}/backlog"
    client_id = f"{evc_topic_namespace}-slow"
    queue_for_offline_subscriber(broker, client_id, topic, 5000)
    subscriber = Subscriber(broker, client_id, clean_session=False)
    received = subscriber.wait_for(5000)
    subscriber.close()
    assert len(received) == 5000
    assert set(received) == {str(i).encode() for i in range(5000)}
    assert "dropped" not in broker.log_path.read_text()


def test_pause_freezes_the_broker_and_resume_restores_it(broker: MosquittoBroker) -> None:
    broker.pause()
    assert broker.running
    assert not broker.ping(timeout=0.3)
    broker.resume()
    assert broker.ping()


def test_stop_while_paused_is_graceful(broker: MosquittoBroker) -> None:
    broker.pause()
    broker.stop()
    assert not broker.running
    assert (broker.data_dir / "mosquitto.db").is_file()


def test_close_removes_only_a_temporary_workdir(tmp_path: Path) -> None:
    with MosquittoBroker(tier="cloud") as temporary:
        owned = temporary.workdir
    assert not owned.exists()
    with MosquittoBroker(tier="cloud", workdir=tmp_path / "b") as kept:
        assert kept.running
    assert (tmp_path / "b" / "mosquitto.log").is_file()


def test_start_failure_raises_broker_error_with_log_tail() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        broker = MosquittoBroker(port=port)
        with pytest.raises(BrokerError, match="Address already in use"):
            broker.start()
        broker.close()


def test_missing_binary_raises_broker_error_with_install_hint() -> None:
    broker = MosquittoBroker(binary="/nonexistent/mosquitto")
    with pytest.raises(BrokerError, match="apt-get install -y mosquitto"):
        broker.start()
    broker.close()


@pytest.mark.parametrize("tier", ["fog", "cloud"])
def test_templates_keep_qos1_queues_unbounded_by_count(tier: Tier) -> None:
    lines = set(render_config(tier, port=1, data_dir="/d/", log_file="/d/log").splitlines())
    assert {
        "listener 1 127.0.0.1",
        "persistence true",
        "persistence_location /d/",
        "max_queued_messages 0",
        "max_queued_bytes 1073741824",
        "log_dest file /d/log",
    } <= lines


def test_fixtures_give_running_brokers_on_distinct_ports(
    evc_fog_broker: Broker,
    evc_cloud_broker: Broker,
    evc_broker_factory: BrokerFactory,
    evc_topic_namespace: str,
) -> None:
    extra = evc_broker_factory("fog")
    idle = evc_broker_factory("cloud", start=False)
    assert evc_fog_broker.tier == "fog"
    assert evc_cloud_broker.tier == "cloud"
    assert len({evc_fog_broker.port, evc_cloud_broker.port, extra.port, idle.port}) == 4
    assert all(b.ping() for b in (evc_fog_broker, evc_cloud_broker, extra))
    assert not idle.running
    assert evc_topic_namespace.startswith("t-")
    assert len(evc_topic_namespace) == 10


def test_factory_fails_the_test_instead_of_skipping(evc_broker_factory: BrokerFactory) -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as busy,
        pytest.raises(pytest.fail.Exception, match="did not start"),
    ):
        evc_broker_factory("fog", port=busy.getsockname()[1])
