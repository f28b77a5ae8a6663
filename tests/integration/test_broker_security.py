"""Guarantee 8 against real brokers: passwords, ACLs and TLS of the secure broker configs."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from conftest import DEFAULT_TIMEOUT_S, Published, finish_within, publish_frames, wait_for
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from evc.device import Device
from evc.harness import (
    Broker,
    BrokerSecurity,
    MosquittoBroker,
    TestCA,
    render_cloud_acl,
    render_fog_acl,
)
from evc.harness.pytest_plugin import BrokerFactory
from evc.mqtt.client import BrokerAddress
from evc.wire.topics import Channel, DeviceTopic, GatewayTopic, device_filter, gateway_filter

pytestmark = pytest.mark.integration

NOT_AUTHORIZED = 0x87
BAD_CREDENTIALS = 0x86
PASSWORDS = {
    "cam-1": "pw-cam-1",
    "cam-2": "pw-cam-2",
    "gw-1": "pw-gw-1",
    "gw-2": "pw-gw-2",
    "worker-1": "pw-w",
}


class User:
    """An MQTT 5 paho client that records CONNACK, PUBACK and SUBACK reason codes and messages."""

    def __init__(
        self, broker: Broker, username: str | None, password: str | None, ca: Path | None = None
    ) -> None:
        self.connack: ReasonCode | None = None
        self.pubacks: dict[int, ReasonCode] = {}
        self.subacks: dict[int, list[ReasonCode]] = {}
        self.messages: list[tuple[str, bytes]] = []
        self._answered = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"sec-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv5,
        )
        if username is not None:
            self._client.username_pw_set(username, password)
        if ca is not None:
            self._client.tls_set(ca_certs=str(ca))
        self._client.on_connect = self._on_connect
        self._client.on_publish = lambda _c, _u, mid, rc, _p: self.pubacks.__setitem__(mid, rc)
        self._client.on_subscribe = lambda _c, _u, mid, rcs, _p: self.subacks.__setitem__(mid, rcs)
        self._client.on_message = lambda _c, _u, m: self.messages.append((m.topic, m.payload))
        self._client.connect(broker.host, broker.port)
        self._client.loop_start()
        assert self._answered.wait(DEFAULT_TIMEOUT_S), "no CONNACK"

    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        self.connack = rc
        self._answered.set()

    def publish(self, topic: str, payload: bytes = b"x") -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        info = self._client.publish(topic, payload, qos=1)
        return wait_for(lambda: self.pubacks.get(info.mid), message=f"PUBACK for {topic}")

    def subscribe(self, topic: str) -> ReasonCode:
        """Subscribe at QoS 1 and return the SUBACK's reason code."""
        _rc, mid = self._client.subscribe(topic, qos=1)
        return wait_for(lambda: self.subacks.get(mid), message=f"SUBACK for {topic}")[0]

    def topics(self) -> list[str]:
        return [topic for topic, _payload in self.messages]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
        sock = self._client.socket()
        if sock is not None:  # an open socket is a ResourceWarning, and warnings are errors
            sock.close()


UserFactory = Callable[..., User]


@pytest.fixture
def user_factory() -> Iterator[UserFactory]:
    users: list[User] = []

    def make(broker: Broker, username: str | None, ca: Path | None = None) -> User:
        user = User(broker, username, PASSWORDS.get(username or ""), ca)
        users.append(user)
        return user

    yield make
    for user in reversed(users):
        user.close()


@pytest.fixture
def site(evc_topic_namespace: str) -> str:
    return evc_topic_namespace


@pytest.fixture
def fog(evc_broker_factory: BrokerFactory, site: str) -> Broker:
    acl = render_fog_acl(site=site, gateway="gw-1")
    return evc_broker_factory("fog", security=BrokerSecurity(users=PASSWORDS, acl=acl))


def det(site: str, device: str) -> str:
    return str(DeviceTopic(site, device, Channel.DETECTIONS))


def test_anonymous_and_wrong_password_are_refused(fog: Broker, user_factory: UserFactory) -> None:
    anonymous = user_factory(fog, None)
    wrong = User(fog, "cam-1", "not-the-password")
    try:
        assert anonymous.connack is not None
        assert anonymous.connack.value in (NOT_AUTHORIZED, BAD_CREDENTIALS)
        assert wrong.connack is not None
        assert wrong.connack.value in (NOT_AUTHORIZED, BAD_CREDENTIALS)
    finally:
        wrong.close()


def test_a_device_publishes_only_under_its_own_id(
    fog: Broker, site: str, user_factory: UserFactory
) -> None:
    gateway = user_factory(fog, "gw-1")
    assert gateway.connack is not None
    assert not gateway.connack.is_failure
    assert gateway.subscribe(device_filter(site)).value == 1  # granted QoS 1
    camera = user_factory(fog, "cam-1")

    assert camera.publish(det(site, "cam-2")).value == NOT_AUTHORIZED
    assert camera.publish(det("elsewhere", "cam-1")).value == NOT_AUTHORIZED
    assert camera.publish(str(DeviceTopic(site, "cam-1", Channel.COMMAND))).value == NOT_AUTHORIZED
    assert camera.publish(det(site, "cam-1")).value == 0

    wait_for(lambda: det(site, "cam-1") in gateway.topics(), message="cam-1's own detection")
    assert gateway.topics() == [det(site, "cam-1")]


def test_read_rules_apply_per_message_so_a_gateway_sees_only_its_site(
    evc_broker_factory: BrokerFactory, site: str, user_factory: UserFactory
) -> None:
    # Two sites on one broker, to have traffic of another site that the gateway must not see.
    other = f"{site}-b"
    acl = render_fog_acl(site=site, gateway="gw-1") + render_fog_acl(site=other, gateway="gw-2")
    fog = evc_broker_factory("fog", security=BrokerSecurity(users=PASSWORDS, acl=acl))
    gateway, other_gateway = user_factory(fog, "gw-1"), user_factory(fog, "gw-2")
    spy = user_factory(fog, "cam-2")
    # Mosquitto 2.0's acl_file grants every SUBACK; read rules are applied to each message.
    for user in (gateway, other_gateway, spy):
        assert user.subscribe("evc/#").value == 1
    camera = user_factory(fog, "cam-1")
    assert camera.publish(det(other, "cam-1")).value == 0
    assert camera.publish(det(site, "cam-1")).value == 0

    wait_for(lambda: det(site, "cam-1") in gateway.topics(), message="the detection of its site")
    wait_for(lambda: det(other, "cam-1") in other_gateway.topics(), message="the other site's")
    assert gateway.topics() == [det(site, "cam-1")]
    assert other_gateway.topics() == [det(other, "cam-1")]
    assert spy.topics() == []  # a device reads nothing but its own commands


def test_only_the_gateway_commands_a_device(
    fog: Broker, site: str, user_factory: UserFactory
) -> None:
    camera = user_factory(fog, "cam-1")
    command = str(DeviceTopic(site, "cam-1", Channel.COMMAND))
    assert camera.subscribe(command).value == 1
    assert user_factory(fog, "cam-2").publish(command).value == NOT_AUTHORIZED
    assert user_factory(fog, "gw-1").publish(command, b"from-gw").value == 0
    wait_for(lambda: camera.messages, message="the command to reach cam-1")
    assert camera.messages == [(command, b"from-gw")]


def test_on_the_cloud_a_gateway_publishes_only_its_own_batches(
    evc_broker_factory: BrokerFactory, site: str, user_factory: UserFactory
) -> None:
    acl = render_cloud_acl(gateways={"gw-1": site, "gw-2": site}, workers=["worker-1"])
    cloud = evc_broker_factory("cloud", security=BrokerSecurity(users=PASSWORDS, acl=acl))
    worker = user_factory(cloud, "worker-1")
    # Read rules are checked against each message's topic, so they cover shared subscriptions.
    assert worker.subscribe(gateway_filter(Channel.BATCH, share_group="workers")).value == 1
    gateway = user_factory(cloud, "gw-1")
    assert gateway.subscribe(gateway_filter(Channel.BATCH, share_group="spy")).value == 1

    def batch(site_: str, gw: str) -> str:
        return str(GatewayTopic(site_, gw, Channel.BATCH))

    assert gateway.publish(batch(site, "gw-2")).value == NOT_AUTHORIZED  # another gateway
    assert gateway.publish(batch("elsewhere", "gw-1")).value == NOT_AUTHORIZED  # other site
    assert gateway.publish(batch(site, "gw-1")).value == 0
    wait_for(lambda: batch(site, "gw-1") in worker.topics(), message="gw-1's own batch")
    assert worker.topics() == [batch(site, "gw-1")]
    assert gateway.messages == []  # its shared subscription to every batch receives nothing
    command = str(GatewayTopic(site, "gw-1", Channel.COMMAND))
    assert gateway.publish(command).value == NOT_AUTHORIZED  # only workers command gateways
    assert not worker.publish(command).is_failure


def run_device(address: BrokerAddress, site: str, state_dir: Path, gateway: User) -> None:
    """Publish 5 frames with an evc.Device and wait until the gateway user has all 5."""
    with ExitStack() as stack:
        device = Device(
            device_id="cam-1",
            site=site,
            broker=address,
            state_dir=state_dir,
            heartbeat_interval_s=0,
            model_version="test-0",
        ).start()
        stack.callback(finish_within, device.close, "Device.close()")
        publish_frames(device, 5, np.random.default_rng(0), Published())
        topic = det(site, "cam-1")
        wait_for(lambda: gateway.topics().count(topic) == 5, message="5 detections at gateway")


def test_a_device_with_credentials_in_its_url_reaches_the_gateway(
    fog: Broker, site: str, user_factory: UserFactory, tmp_path: Path
) -> None:
    gateway = user_factory(fog, "gw-1")
    assert gateway.subscribe(device_filter(site)).value == 1
    assert isinstance(fog, MosquittoBroker)
    run_device(BrokerAddress.from_url(fog.url_for("cam-1")), site, tmp_path, gateway)


def test_tls_listener_with_a_test_ca(
    evc_broker_factory: BrokerFactory, site: str, user_factory: UserFactory, tmp_path: Path
) -> None:
    tls = TestCA.create(tmp_path / "pki").server_cert("fog")
    acl = render_fog_acl(site=site, gateway="gw-1")
    fog = evc_broker_factory("fog", security=BrokerSecurity(users=PASSWORDS, acl=acl, tls=tls))
    assert fog.url.startswith("mqtts://")
    gateway = user_factory(fog, "gw-1", ca=tls.ca_file)
    assert gateway.subscribe(device_filter(site)).value == 1
    assert isinstance(fog, MosquittoBroker)
    address = BrokerAddress.from_url(fog.url_for("cam-1"), ca_file=str(tls.ca_file))
    assert address.tls
    run_device(address, site, tmp_path / "device", gateway)
