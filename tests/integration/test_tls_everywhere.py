"""Mutual TLS on both hops: every client proves who it is with a certificate, not a password.

Both brokers require a client certificate signed by the deployment's CA and take its CN as the
username their ACL applies to (``use_identity_as_username``). A real Device, Gateway and
CloudIngest carry detections into the cloud store and a signed model down to a device that way;
clients without a certificate, with one from another CA, or claiming another identity get
nowhere.
"""

from __future__ import annotations

import ssl
import threading
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from conftest import (
    DEFAULT_TIMEOUT_S,
    Published,
    finish_within,
    publish_frames,
    received,
    start_cloud,
    start_gateway,
    wait_for,
    wait_until_stored,
)
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from evc.config import (
    BrokerConfig,
    CloudConfig,
    CloudIngestConfig,
    CloudModelsConfig,
    GatewayConfig,
    GatewayModelsConfig,
    OutboxConfig,
    StoreConfig,
)
from evc.device import Device
from evc.device.model_slot import ModelSlot
from evc.device.updates import ModelUpdater
from evc.harness import (
    BrokerSecurity,
    ClientCert,
    MosquittoBroker,
    TestCA,
    render_cloud_acl,
    render_fog_acl,
)
from evc.harness.pytest_plugin import BrokerFactory
from evc.models.signing import SigningKey, TrustedKeys, generate_keypair
from evc.mqtt.client import BrokerAddress, tls_context
from evc.synthetic.sample_model import sample_model_copy, sample_model_path
from evc.wire.topics import Channel, DeviceTopic, device_filter

pytestmark = pytest.mark.integration

NOT_AUTHORIZED = 0x87
GATEWAY = "gw-1"
FRAMES = 20
CAM_1_PASSWORD = "pw-cam-1"  # noqa: S105  # a throwaway broker's test user


@dataclass
class Pki:
    """The deployment's CA and one client certificate per identity (CN), issued on demand."""

    ca: TestCA
    certs: dict[str, ClientCert] = field(default_factory=dict)

    def cert(self, identity: str) -> ClientCert:
        # Issued once: re-issuing rewrites the files under a client that may be loading them.
        if identity not in self.certs:
            self.certs[identity] = self.ca.client_cert(identity)
        return self.certs[identity]

    def address(self, broker: MosquittoBroker, identity: str) -> BrokerAddress:
        cert = self.cert(identity)
        return BrokerAddress.from_url(
            broker.url,
            ca_file=str(cert.ca_file),
            cert_file=str(cert.cert_file),
            key_file=str(cert.key_file),
        )

    def config(self, broker: MosquittoBroker, identity: str) -> BrokerConfig:
        cert = self.cert(identity)
        return BrokerConfig(
            url=broker.url,
            ca_file=str(cert.ca_file),
            cert_file=str(cert.cert_file),
            key_file=str(cert.key_file),
        )


@dataclass
class Hierarchy:
    site: str
    worker: str
    pki: Pki
    fog: MosquittoBroker
    cloud: MosquittoBroker


def _mutual_tls(pki: Pki, name: str, acl: str) -> BrokerSecurity:
    return BrokerSecurity(
        # A password of its own, to show that without a certificate it opens nothing.
        users={"cam-1": CAM_1_PASSWORD},
        acl=acl,
        tls=pki.ca.server_cert(name),
        require_client_certificate=True,
        use_identity_as_username=True,
        probe_certificate=pki.ca.probe_cert(),
    )


@pytest.fixture
def hierarchy(
    evc_broker_factory: BrokerFactory, evc_topic_namespace: str, tmp_path: Path
) -> Hierarchy:
    site, worker = evc_topic_namespace, f"cloud-{evc_topic_namespace}"
    pki = Pki(TestCA.create(tmp_path / "pki"))
    fog_acl = render_fog_acl(site=site, gateway=GATEWAY)
    cloud_acl = render_cloud_acl(gateways={GATEWAY: site}, workers=[worker])
    fog = evc_broker_factory("fog", security=_mutual_tls(pki, "fog", fog_acl))
    cloud = evc_broker_factory("cloud", security=_mutual_tls(pki, "cloud", cloud_acl))
    assert isinstance(fog, MosquittoBroker)
    assert isinstance(cloud, MosquittoBroker)
    assert fog.url.startswith("mqtts://")
    assert cloud.url.startswith("mqtts://")
    return Hierarchy(site, worker, pki, fog, cloud)


# -- a raw MQTT 5 client over TLS ---------------------------------------------------------------


class Peer:
    """A paho MQTT 5 client over TLS that records how its CONNECT and publishes were answered."""

    def __init__(
        self,
        broker: MosquittoBroker,
        context: ssl.SSLContext,
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.connack: ReasonCode | None = None
        self.error: BaseException | None = None
        self.pubacks: dict[int, ReasonCode] = {}
        self.subacks: set[int] = set()
        self.messages: list[str] = []
        self._answered = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"tls-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv5,
            # A refused client must not retry: loop_stop() would wait out its back-off.
            reconnect_on_failure=False,
        )
        self._client.tls_set_context(context)
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = lambda *_a: self._answered.set()
        self._client.on_publish = lambda _c, _u, mid, rc, _p: self.pubacks.__setitem__(mid, rc)
        self._client.on_subscribe = lambda _c, _u, mid, _rcs, _p: self.subacks.add(mid)
        self._client.on_message = lambda _c, _u, m: self.messages.append(m.topic)
        try:
            self._client.connect(broker.host, broker.port)
        except OSError as exc:  # ssl.SSLError included: a handshake refused under TLS 1.2
            self.error = exc
            return
        self._client.loop_start()
        # Under TLS 1.3 the broker refuses a client certificate after the client's side of the
        # handshake is done; the refusal then arrives as a lost connection, not at connect().
        self._answered.wait(DEFAULT_TIMEOUT_S)

    @property
    def connected(self) -> bool:
        """True if the broker accepted the CONNECT (it may have hung up since)."""
        return self.connack is not None and not self.connack.is_failure

    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        self.connack = rc
        self._answered.set()

    def publish(self, topic: str) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK's reason code."""
        info = self._client.publish(topic, b"x", qos=1)
        return wait_for(lambda: self.pubacks.get(info.mid), message=f"PUBACK for {topic}")

    @property
    def online(self) -> bool:
        """True while the connection is open."""
        return self._client.is_connected()

    def subscribe(self, topic: str) -> None:
        """Subscribe at QoS 1 and return once the SUBACK arrived."""
        _rc, mid = self._client.subscribe(topic, qos=1)
        wait_for(lambda: mid in self.subacks, message=f"SUBACK for {topic}")

    def close(self) -> None:
        if self._client.is_connected():
            self._client.disconnect()
        self._client.loop_stop()
        sock = self._client.socket()
        if sock is not None:  # an open socket is a ResourceWarning, and warnings are errors
            sock.close()


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    made: list[Peer] = []
    yield made
    for peer in reversed(made):
        peer.close()


def _context(ca_file: Path, cert: ClientCert | None = None) -> ssl.SSLContext:
    address = BrokerAddress(
        host="127.0.0.1",
        tls=True,
        ca_file=str(ca_file),
        cert_file=str(cert.cert_file) if cert else None,
        key_file=str(cert.key_file) if cert else None,
    )
    return tls_context(address)


def _det(site: str, device: str) -> str:
    return str(DeviceTopic(site, device, Channel.DETECTIONS))


# -- the tests -----------------------------------------------------------------------------------


def test_detections_cross_both_hops_over_mutual_tls(hierarchy: Hierarchy, tmp_path: Path) -> None:
    h = hierarchy
    store_path = tmp_path / "cloud" / "records.db"
    published = Published()
    with ExitStack() as stack:
        ingest = start_cloud(
            stack,
            CloudConfig(
                cloud=h.pki.config(h.cloud, h.worker),
                ingest=CloudIngestConfig(worker_id=h.worker),
                store=StoreConfig(path=store_path),
            ),
        )
        gateway = start_gateway(
            stack,
            GatewayConfig(
                site=h.site,
                gateway_id=GATEWAY,
                state_dir=tmp_path / "gw",
                fog=h.pki.config(h.fog, GATEWAY),
                cloud=h.pki.config(h.cloud, GATEWAY),
                outbox=OutboxConfig(path=tmp_path / "gw" / "outbox.db"),
            ),
        )
        device = Device(
            device_id="cam-1",
            site=h.site,
            broker=h.pki.address(h.fog, "cam-1"),
            state_dir=tmp_path / "dev",
            heartbeat_interval_s=0,
            model_version="test-0",
        ).start()
        stack.callback(finish_within, device.close, "Device.close()")
        # The device's birth at the gateway proves the gateway's subscription is live.
        wait_for(lambda: received(gateway, "state") >= 1, message="the device's birth")
        publish_frames(device, FRAMES, np.random.default_rng(0), published)

        wait_until_stored(store_path, h.site, published.keys, timeout=20, gateway=gateway)
        assert ingest.consumer.connected.is_set()
        assert gateway.uplink.connected.is_set()


def test_without_a_certificate_of_the_ca_nobody_connects(
    hierarchy: Hierarchy, peers: list[Peer], tmp_path: Path
) -> None:
    h = hierarchy
    ca_file = h.pki.ca.ca_file
    stranger = TestCA.create(tmp_path / "stranger").client_cert("cam-1")
    for broker in (h.fog, h.cloud):
        attempts = {
            # The right password is no substitute for a certificate.
            "no certificate": Peer(
                broker, _context(ca_file), username="cam-1", password=CAM_1_PASSWORD
            ),
            "another CA": Peer(broker, _context(ca_file, stranger)),
            "the deployment's CA": Peer(broker, _context(ca_file, h.pki.cert("cam-1"))),
        }
        peers.extend(attempts.values())
        outcome = {what: peer.connected for what, peer in attempts.items()}
        assert outcome == {
            "no certificate": False,
            "another CA": False,
            "the deployment's CA": True,
        }, broker
        # Refused in the TLS handshake: no CONNACK at all, not even a refusing one.
        assert attempts["no certificate"].connack is None
        assert attempts["another CA"].connack is None


def test_the_certificate_not_the_username_is_the_identity(
    hierarchy: Hierarchy, peers: list[Peer]
) -> None:
    h = hierarchy
    ca_file = h.pki.ca.ca_file

    def peer(broker: MosquittoBroker, cert: str, **credentials: str) -> Peer:
        made = Peer(broker, _context(ca_file, h.pki.cert(cert)), **credentials)
        peers.append(made)
        assert made.connected, f"{cert} on {broker}"
        return made

    gateway = peer(h.fog, GATEWAY)
    # cam-1's certificate with the gateway's name (and a password) in its MQTT username.
    spy = peer(h.fog, "cam-1", username=GATEWAY, password=CAM_1_PASSWORD)
    for reader in (gateway, spy):
        reader.subscribe(device_filter(h.site))

    # cam-1's certificate cannot speak for cam-2, nor command a device as the gateway could.
    impostor = peer(h.fog, "cam-1", username="cam-2")
    assert impostor.publish(_det(h.site, "cam-2")).value == NOT_AUTHORIZED
    commander = peer(h.fog, "cam-1", username=GATEWAY)
    command = str(DeviceTopic(h.site, "cam-2", Channel.COMMAND))
    assert commander.publish(command).value == NOT_AUTHORIZED
    # Mosquitto 2.0 also hangs up on a client after refusing its publish.
    wait_for(lambda: not impostor.online, message="the broker to close the impostor's connection")
    # On the cloud a device certificate speaks for no gateway either.
    batch = f"evc/{h.site}/gw/{GATEWAY}/batch"
    assert peer(h.cloud, "cam-1", username=GATEWAY).publish(batch).value == NOT_AUTHORIZED

    assert peer(h.fog, "cam-1").publish(_det(h.site, "cam-1")).value == 0  # its own topic
    wait_for(lambda: _det(h.site, "cam-1") in gateway.messages, message="cam-1's detection")
    assert gateway.messages == [_det(h.site, "cam-1")]
    assert spy.messages == []  # reading every device's traffic is the gateway's right alone


def test_a_signed_model_reaches_a_device_over_mutual_tls(
    hierarchy: Hierarchy, tmp_path: Path
) -> None:
    h = hierarchy
    keys = generate_keypair(tmp_path / "keys")
    key = SigningKey.load(keys.private_path)
    with ExitStack() as stack:
        ingest = start_cloud(
            stack,
            CloudConfig(
                cloud=h.pki.config(h.cloud, h.worker),
                ingest=CloudIngestConfig(worker_id=h.worker),
                store=StoreConfig(path=tmp_path / "cloud.db"),
                models=CloudModelsConfig(registry=tmp_path / "registry", tick_s=0.2),
            ),
        )
        assert ingest.models is not None
        assert ingest.models.controller is not None
        registry = ingest.models.registry
        registry.publish(name="shapes", version="1", artifact=sample_model_path(), key=key)
        v2 = registry.publish(
            name="shapes",
            version="2",
            key=key,
            artifact=sample_model_copy(tmp_path / "v2.onnx", version="2"),
        )
        gateway = start_gateway(
            stack,
            GatewayConfig(
                site=h.site,
                gateway_id=GATEWAY,
                state_dir=tmp_path / "gw",
                fog=h.pki.config(h.fog, GATEWAY),
                cloud=h.pki.config(h.cloud, GATEWAY),
                outbox=OutboxConfig(path=tmp_path / "gw" / "outbox.db"),
                models=GatewayModelsConfig(trusted_keys=[keys.public_path]),
            ),
        )
        assert gateway.models is not None
        slot = ModelSlot(models_dir=tmp_path / "cam-1" / "models", initial=sample_model_path())
        updater = ModelUpdater(
            site=h.site,
            device_id="cam-1",
            address=h.pki.address(h.fog, "cam-1"),
            slot=slot,
            trusted=TrustedKeys.load([keys.public_path]),
            folder=tmp_path / "cam-1" / "dl",
        ).start()
        stack.callback(finish_within, updater.stop, "ModelUpdater.stop()")

        ingest.models.controller.set_default(site=h.site, name="shapes", version="2")

        wait_for(lambda: slot.status().version == "2", message=lambda: str(slot.status()))
        assert updater.refused == {}
        # One copy crossed the cloud hop, and the device got it from the gateway's cache.
        assert ingest.models.server.bytes_served == v2.manifest.size
        assert gateway.models.server.bytes_served == v2.manifest.size
