"""A throwaway certificate authority for TLS and mutual TLS between test brokers and clients.

Production certificates come from the operator's own CA; tests and demos need one that exists
only for the length of a run. :class:`TestCA` makes a P-256 CA (the curve every OpenSSL build
that Mosquitto links against accepts) and issues short-lived server and client certificates as
PEM files. The CA key is kept in memory only: nothing on disk can sign another certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from evc.errors import BrokerError
from evc.harness.security import PROBE_USER, ClientCert, TlsFiles

DEFAULT_HOSTS = ("127.0.0.1", "localhost")
DEFAULT_VALIDITY = dt.timedelta(days=1)
# Certificates start a little in the past so that a clock a few seconds behind still accepts them.
_BACKDATE = dt.timedelta(minutes=5)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class TestCA:
    """A CA whose certificates live in one directory and expire after ``validity``.

    Example:
        >>> ca = TestCA.create(tmp_path / "pki")  # doctest: +SKIP
        >>> tls = ca.server_cert("fog")  # for BrokerSecurity(tls=...)
        >>> cam = ca.client_cert("cam-1")  # CN = cam-1, the username with use_identity_as_username

    Use :meth:`create`; the constructor takes an existing key and certificate.
    """

    # Its name starts with "Test", and pytest would otherwise try to collect it as a test class.
    __test__ = False

    def __init__(
        self,
        *,
        directory: Path,
        key: ec.EllipticCurvePrivateKey,
        certificate: x509.Certificate,
        validity: dt.timedelta = DEFAULT_VALIDITY,
    ) -> None:
        self.directory = directory
        self.certificate = certificate
        self.validity = validity
        self._key = key

    @classmethod
    def create(
        cls,
        directory: Path,
        *,
        name: str = "evc test CA",
        validity: dt.timedelta = DEFAULT_VALIDITY,
    ) -> TestCA:
        """Make a new CA and write its certificate to ``directory/ca.pem`` (created if missing).

        Raises:
            BrokerError: The directory cannot be written.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        subject = _name(name)
        now = dt.datetime.now(dt.UTC)
        certificate = (
            _builder(subject, subject, key.public_key(), now, validity)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        ca = cls(directory=directory, key=key, certificate=certificate, validity=validity)
        _write(ca.ca_file, certificate.public_bytes(serialization.Encoding.PEM))
        return ca

    @property
    def ca_file(self) -> Path:
        """PEM file of the CA certificate: what clients and brokers verify the other side with."""
        return self.directory / "ca.pem"

    def server_cert(self, name: str, hosts: Iterable[str] = DEFAULT_HOSTS) -> TlsFiles:
        """Issue a broker certificate valid for ``hosts`` (IP addresses or DNS names).

        Args:
            name: The certificate's CN and the stem of its files (``server-<name>.pem``/``.key``).
            hosts: What clients connect to; each becomes a subjectAltName, which is what TLS
                clients check (the CN is ignored for host names).

        Raises:
            BrokerError: ``name`` is not a plain file-safe name, ``hosts`` is empty, or the files
                cannot be written.
        """
        names = [_alt_name(host) for host in hosts]
        if not names:
            raise BrokerError("a server certificate needs at least one host")
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._leaf(_checked(name), key, ExtendedKeyUsageOID.SERVER_AUTH)
        certificate = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert_file, key_file = self._write_pair(f"server-{name}", certificate, key)
        return TlsFiles(ca_file=self.ca_file, cert_file=cert_file, key_file=key_file)

    def client_cert(self, common_name: str) -> ClientCert:
        """Issue a client certificate whose CN is ``common_name``.

        With ``use_identity_as_username`` the broker takes the CN as the MQTT username, so the
        CN is the identity the ACL applies to: a device id, gateway id or worker id.

        Raises:
            BrokerError: ``common_name`` is not a plain file-safe name, or the files cannot be
                written.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._leaf(_checked(common_name), key, ExtendedKeyUsageOID.CLIENT_AUTH)
        cert_file, key_file = self._write_pair(f"client-{common_name}", builder, key)
        return ClientCert(cert_file=cert_file, key_file=key_file, ca_file=self.ca_file)

    def probe_cert(self) -> ClientCert:
        """The client certificate a harness broker checks its own readiness with.

        Pass it as ``BrokerSecurity(probe_certificate=...)`` when client certificates are
        required; its CN is the harness's probe user, to which the ACLs grant nothing.
        """
        return self.client_cert(PROBE_USER)

    def _leaf(
        self, common_name: str, key: ec.EllipticCurvePrivateKey, usage: x509.ObjectIdentifier
    ) -> x509.CertificateBuilder:
        now = dt.datetime.now(dt.UTC)
        ca_key = self._key.public_key()
        return (
            _builder(
                _name(common_name), self.certificate.subject, key.public_key(), now, self.validity
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key), False)
        )

    def _write_pair(
        self, stem: str, builder: x509.CertificateBuilder, key: ec.EllipticCurvePrivateKey
    ) -> tuple[Path, Path]:
        certificate = builder.sign(self._key, hashes.SHA256())
        cert_file, key_file = self.directory / f"{stem}.pem", self.directory / f"{stem}.key"
        _write(cert_file, certificate.public_bytes(serialization.Encoding.PEM))
        _write(key_file, _private_pem(key), private=True)
        return cert_file, key_file


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: dt.datetime,
    validity: dt.timedelta,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + validity)
    )


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alt_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _checked(name: str) -> str:
    # Names become file names too: no separators, no dot files, nothing a shell would expand.
    if not _SAFE_NAME.match(name):
        raise BrokerError(
            f"certificate name {name!r} must be 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, private: bool = False) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Private keys are created 0600 from the start, never readable by others even briefly.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as file:
            file.write(data)
    except OSError as exc:
        raise BrokerError(f"cannot write {path}: {exc}") from exc
