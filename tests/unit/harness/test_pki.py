"""The harness's throwaway CA: what it issues is accepted by OpenSSL for the role it is for."""

from __future__ import annotations

import datetime as dt
import re
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydantic import ValidationError

from evc.config import BrokerConfig
from evc.errors import BrokerError, ConfigError
from evc.harness import PROBE_USER, TestCA
from evc.mqtt.client import BrokerAddress, tls_context


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA.create(tmp_path / "pki")


def _load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _common_name(cert: x509.Certificate) -> str:
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> str | None:
    """Run a TLS handshake over a socket pair; return the client CN the server saw, if any."""
    left, right = socket.socketpair()
    seen: list[str | None] = []
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            with server.wrap_socket(right, server_side=True) as tls:
                peer = tls.getpeercert()
                subject = dict(pair[0] for pair in peer["subject"]) if peer else {}
                seen.append(subject.get("commonName"))
                tls.sendall(tls.recv(1))  # an echo, so that the client's read ends cleanly
        except (ssl.SSLError, OSError) as exc:
            errors.append(exc)

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(left, server_hostname="127.0.0.1") as tls:
            tls.do_handshake()
            tls.sendall(b"x")  # TLS 1.3 reports a refused client certificate only after this
            tls.recv(1)
    finally:
        thread.join(timeout=10)
        right.close()
    if errors:
        raise errors[0]
    return seen[0]


def _server_context(ca: TestCA, *, require_client: bool) -> ssl.SSLContext:
    files = ca.server_cert("fog")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert_file, files.key_file)
    context.load_verify_locations(ca.ca_file)
    context.verify_mode = ssl.CERT_REQUIRED if require_client else ssl.CERT_NONE
    return context


def test_a_server_certificate_names_its_hosts_and_is_only_for_servers(ca: TestCA) -> None:
    files = ca.server_cert("fog", hosts=("127.0.0.1", "fog.local"))
    cert = _load(files.cert_file)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert names.get_values_for_type(x509.DNSName) == ["fog.local"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert files.ca_file == ca.ca_file
    assert cert.issuer == _load(ca.ca_file).subject


def test_certificates_are_short_lived_and_keys_private(tmp_path: Path) -> None:
    ca = TestCA.create(tmp_path, validity=dt.timedelta(hours=2))
    client = ca.client_cert("cam-1")
    cert = _load(client.cert_file)
    lifetime = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=1) < lifetime <= dt.timedelta(hours=2)
    assert cert.not_valid_before_utc < dt.datetime.now(dt.UTC)
    assert stat.S_IMODE(client.key_file.stat().st_mode) == 0o600
    # The CA's own key is never written: nothing on disk can issue more certificates.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ca.pem",
        "client-cam-1.key",
        "client-cam-1.pem",
    ]


def test_mutual_tls_handshake_carries_the_client_common_name(ca: TestCA) -> None:
    client = ca.client_cert("cam-1")
    address = BrokerAddress(
        host="127.0.0.1",
        port=8883,
        tls=True,
        ca_file=str(client.ca_file),
        cert_file=str(client.cert_file),
        key_file=str(client.key_file),
    )
    seen = _handshake(_server_context(ca, require_client=True), tls_context(address))
    assert seen == "cam-1"
    assert _common_name(_load(ca.probe_cert().cert_file)) == PROBE_USER


def test_a_client_certificate_from_another_ca_is_refused(ca: TestCA, tmp_path: Path) -> None:
    stranger = TestCA.create(tmp_path / "other").client_cert("cam-1")
    address = BrokerAddress(
        host="127.0.0.1",
        port=8883,
        tls=True,
        ca_file=str(ca.ca_file),
        cert_file=str(stranger.cert_file),
        key_file=str(stranger.key_file),
    )
    with pytest.raises((ssl.SSLError, OSError)):
        _handshake(_server_context(ca, require_client=True), tls_context(address))


def test_a_client_refuses_a_server_of_another_ca(ca: TestCA, tmp_path: Path) -> None:
    other = TestCA.create(tmp_path / "other")
    address = BrokerAddress(host="127.0.0.1", port=8883, tls=True, ca_file=str(other.ca_file))
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(_server_context(ca, require_client=False), tls_context(address))


def test_unreadable_or_mismatched_client_files_are_config_errors(
    ca: TestCA, tmp_path: Path
) -> None:
    one, two = ca.client_cert("cam-1"), ca.client_cert("cam-2")
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match=re.escape(missing)) as raised:
        tls_context(BrokerAddress(host="h", tls=True, ca_file=str(ca.ca_file), cert_file=missing))
    assert raised.value.path == missing
    mismatched = BrokerAddress(
        host="h",
        tls=True,
        ca_file=str(ca.ca_file),
        cert_file=str(one.cert_file),
        key_file=str(two.key_file),
    )
    with pytest.raises(ConfigError, match=re.escape(str(one.cert_file))):
        tls_context(mismatched)


def test_a_client_certificate_needs_tls_and_a_key_needs_a_certificate() -> None:
    with pytest.raises(ConfigError, match="needs TLS"):
        BrokerAddress.from_url("mqtt://127.0.0.1:1883", cert_file="c.pem")
    with pytest.raises(ConfigError, match="without a cert_file"):
        BrokerAddress.from_url("mqtts://127.0.0.1:8883", key_file="k.pem")
    address = BrokerAddress.from_url("mqtts://h:8883", cert_file="c.pem", key_file="k.pem")
    assert (address.cert_file, address.key_file) == ("c.pem", "k.pem")


@pytest.mark.parametrize("name", ["", "../escape", "a/b", ".hidden", "x" * 65])
def test_names_that_are_not_plain_file_names_are_refused(ca: TestCA, name: str) -> None:
    with pytest.raises(BrokerError, match="certificate name"):
        ca.client_cert(name)


def test_a_broker_config_with_a_client_certificate_must_use_mqtts() -> None:
    with pytest.raises(ValidationError, match="needs TLS"):
        BrokerConfig(url="mqtt://127.0.0.1:1883", cert_file="c.pem", key_file="k.pem")
    config = BrokerConfig(url="mqtts://fog:8883", ca_file="ca.pem", cert_file="c.pem")
    assert config.address.cert_file == "c.pem"
    assert config.address.key_file is None
