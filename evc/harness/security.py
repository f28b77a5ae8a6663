"""Passwords, ACLs and TLS for brokers that are not open to everyone (PRODUCT.md guarantee 8).

The ACL rules live in ``brokers/*.acl.template``; this module only fills them in, so that the
brokers the tests start and the files ``brokers/make-users.sh`` writes for production are the
same rules.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from string import Template
from types import MappingProxyType

from evc.errors import BrokerError
from evc.wire.topics import validate_name

# The user a harness broker's own readiness probe connects as; the ACLs grant it nothing.
PROBE_USER = "evc-harness-probe"
_HASHER = "mosquitto_passwd"
_FALLBACK_HASHER = "/usr/bin/mosquitto_passwd"


@dataclass(frozen=True, slots=True)
class TlsFiles:
    """PEM files of a broker's TLS listener: the CA that signed it, its certificate and key."""

    ca_file: Path
    cert_file: Path
    key_file: Path


@dataclass(frozen=True, slots=True)
class ClientCert:
    """PEM files a client proves its identity with (mutual TLS), and the CA it trusts."""

    cert_file: Path
    key_file: Path
    ca_file: Path


@dataclass(frozen=True, slots=True)
class BrokerSecurity:
    """What turns a harness broker into a secure one: users, their ACL and optionally TLS.

    Attributes:
        users: username -> password; every client must be one of them (unless the certificate
            is the identity, see ``use_identity_as_username``).
        acl: the ACL file's text, e.g. from :func:`render_fog_acl` or :func:`render_cloud_acl`.
        tls: serve MQTT over TLS with these files (``mqtts://``); plain TCP if None.
        require_client_certificate: mutual TLS: a client without a certificate signed by
            ``tls.ca_file`` is refused during the TLS handshake (Mosquitto
            ``require_certificate``).
        use_identity_as_username: the client certificate's CN is the username the ACL applies
            to, and MQTT usernames and passwords are ignored (Mosquitto
            ``use_identity_as_username``).
        probe_certificate: the client certificate the harness checks the broker's readiness
            with; required with ``require_client_certificate`` (``TestCA.probe_cert()``).

    Raises:
        BrokerError: client certificates are required without TLS or without a probe
            certificate, or the identity is taken from certificates that are not required.
    """

    users: Mapping[str, str]
    acl: str
    tls: TlsFiles | None = None
    require_client_certificate: bool = False
    use_identity_as_username: bool = False
    probe_certificate: ClientCert | None = None

    def __post_init__(self) -> None:
        # A caller mutating its dict later must not change a running broker's idea of its users.
        object.__setattr__(self, "users", MappingProxyType(dict(self.users)))
        if self.require_client_certificate and self.tls is None:
            raise BrokerError("require_client_certificate needs tls")
        if self.require_client_certificate and self.probe_certificate is None:
            raise BrokerError(
                "require_client_certificate needs a probe_certificate (TestCA.probe_cert())"
            )
        if self.use_identity_as_username and not self.require_client_certificate:
            raise BrokerError("use_identity_as_username needs require_client_certificate")


def render_fog_acl(*, site: str, gateway: str) -> str:
    """ACL of a site's fog broker: devices publish only under their own id; the gateway reads all.

    Raises:
        TopicError: ``site`` or ``gateway`` is not a valid name.
    """
    values = {
        "site": validate_name(site, what="site"),
        "gateway": validate_name(gateway, what="gateway id"),
    }
    return _render("fog.acl.template", values)


def render_cloud_acl(*, gateways: Mapping[str, str], workers: Iterable[str] = ()) -> str:
    """ACL of the cloud broker: each gateway (id -> its site) publishes only its own topics.

    Raises:
        TopicError: a gateway, site or worker is not a valid name.
    """
    blocks = [
        _render(
            "cloud-gateway.acl.template",
            {
                "site": validate_name(site, what="site"),
                "gateway": validate_name(gateway, what="gateway id"),
            },
        )
        for gateway, site in gateways.items()
    ]
    blocks += [
        _render("cloud-worker.acl.template", {"worker": validate_name(worker, what="worker id")})
        for worker in workers
    ]
    return "\n".join(blocks)


def write_password_file(path: Path, users: Mapping[str, str], *, binary: str | None = None) -> Path:
    """Write a Mosquitto password file with a salted hash of every user's password.

    The plain text is written with mode 0600 and hashed in place by ``mosquitto_passwd -U``, so
    no password appears on a command line (where ``ps`` would show it).

    Raises:
        BrokerError: ``mosquitto_passwd`` is missing or failed, or a username contains ``:``.
    """
    tool = binary or shutil.which(_HASHER) or shutil.which(_FALLBACK_HASHER)
    if tool is None:
        raise BrokerError("mosquitto_passwd is not installed (apt-get install -y mosquitto)")
    if any(":" in name or "\n" in name + secret for name, secret in users.items()):
        raise BrokerError("usernames must not contain ':' and passwords no line breaks")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.writelines(f"{name}:{secret}\n" for name, secret in users.items())
    result = subprocess.run([tool, "-U", str(path)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BrokerError(f"mosquitto_passwd -U {path} failed: {result.stdout}{result.stderr}")
    return path


def _render(name: str, values: Mapping[str, str]) -> str:
    # Imported here: broker.py imports this module for BrokerSecurity.
    from evc.harness.broker import templates_dir  # noqa: PLC0415

    template = templates_dir() / name
    try:
        return Template(template.read_text(encoding="utf-8")).substitute(values)
    except (OSError, KeyError, ValueError) as exc:
        raise BrokerError(f"cannot render {template}: {exc!r}") from exc
