"""Real Mosquitto brokers on loopback, for tests and demos.

A :class:`MosquittoBroker` renders a tier's config template (``brokers/*.conf.template``) into
its own work directory, runs ``mosquitto -c`` as a child process and only reports itself started
once the broker answers an MQTT CONNECT. It can be stopped gracefully (persistence is saved),
killed, paused to simulate a hung link, and restarted on the same port with the same data.
"""

from __future__ import annotations

import abc
import os
import pwd
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Mapping
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from string import Template
from types import TracebackType
from typing import Literal, Self
from urllib.parse import quote

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from evc.errors import BrokerError
from evc.harness.security import PROBE_USER, BrokerSecurity, ClientCert, write_password_file

Tier = Literal["fog", "cloud"]

LOOPBACK = "127.0.0.1"
INSTALL_HINT = (
    "install Mosquitto 2.x (Debian/Ubuntu: apt-get install -y mosquitto mosquitto-clients) "
    "or start a Docker daemon and install evc[docker]"
)
_FALLBACK_BINARY = "/usr/sbin/mosquitto"
_START_TIMEOUT_SECONDS = 10.0
_STOP_TIMEOUT_SECONDS = 10.0
_POLL_SECONDS = 0.05
_PORT_ATTEMPTS = 3


def free_port(host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that nothing listens on right now.

    Another process may take it before it is used; :meth:`MosquittoBroker.start` retries with a
    fresh port when it chose the port itself.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """Return True if a listener could bind ``host:port`` now (as Mosquitto does, SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Mosquitto binds with SO_REUSEADDR, so sockets left in TIME_WAIT do not block it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def find_mosquitto() -> str | None:
    """Return the path of the ``mosquitto`` binary, or None if it is not installed."""
    # Debian installs it in /usr/sbin, which is not on the PATH of ordinary users.
    return shutil.which("mosquitto") or shutil.which(_FALLBACK_BINARY)


def templates_dir() -> Traversable:
    """Return the folder holding the ``<tier>.conf.template`` files.

    A wheel ships them inside the package as ``evc/_brokers``; an editable install (or a source
    checkout) reads them from the repository's ``brokers/`` folder next to the ``evc`` package.
    """
    packaged = resources.files("evc") / "_brokers"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "brokers"


def render_config(
    tier: Tier,
    *,
    port: int,
    data_dir: str,
    log_file: str,
    bind_address: str = LOOPBACK,
    user: str | None = None,
    secure_values: Mapping[str, str] | None = None,
) -> str:
    """Render the config template of ``tier``.

    Args:
        tier: Which template to use.
        port: Port of the MQTT listener.
        data_dir: Directory of the persistence database, as the broker sees it.
        log_file: Log file path, as the broker sees it.
        bind_address: Address of the listener; loopback unless inside a container.
        user: User the broker keeps when started as root; defaults to the effective user.
        secure_values: Render ``<tier>-secure.conf.template`` instead, with these extra values
            (password_file, acl_file, tls, cafile, certfile, keyfile, require_certificate,
            use_identity_as_username).

    Raises:
        BrokerError: The template is missing or has a placeholder this function does not fill.
    """
    name = f"{tier}-secure" if secure_values is not None else tier
    template = templates_dir() / f"{name}.conf.template"
    values = {
        **(secure_values or {}),
        "port": str(port),
        "bind_address": bind_address,
        "data_dir": data_dir.rstrip("/"),
        "log_file": log_file,
        "user": user or effective_user(),
    }
    try:
        return Template(template.read_text(encoding="utf-8")).substitute(values)
    except (OSError, KeyError, ValueError) as exc:
        raise BrokerError(f"cannot render broker config {template}: {exc!r}") from exc


def effective_user() -> str:
    """Return the name Mosquitto's ``user`` option must have so that it keeps our identity.

    Started as root, Mosquitto switches to the ``mosquitto`` user, which usually cannot write
    our work directory; persistence and logging then fail silently. ``user root`` keeps root.
    For any other user the option has no effect, so the value only needs to be a valid name.
    """
    if os.geteuid() == 0:
        return "root"
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:  # An arbitrary uid without a passwd entry, as in some containers.
        return "mosquitto"


def mqtt_handshake(
    host: str,
    port: int,
    *,
    timeout: float,
    credentials: tuple[str, str] | None = None,
    ca_file: Path | None = None,
    client_cert: ClientCert | None = None,
) -> bool:
    """Return True if an MQTT CONNECT to ``host:port`` gets a successful CONNACK in time.

    ``credentials`` (username, password), ``ca_file`` (TLS) and ``client_cert`` (mutual TLS,
    implies TLS with its CA) are for secure brokers.
    """
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"evc-harness-probe-{uuid.uuid4().hex[:12]}",
        clean_session=True,
    )
    if credentials is not None:
        client.username_pw_set(*credentials)
    if client_cert is not None:
        context = ssl.create_default_context(cafile=str(client_cert.ca_file))
        context.load_cert_chain(str(client_cert.cert_file), str(client_cert.key_file))
        client.tls_set_context(context)
    elif ca_file is not None:
        client.tls_set_context(ssl.create_default_context(cafile=str(ca_file)))
    client.connect_timeout = timeout
    deadline = time.monotonic() + timeout
    try:
        client.connect(host, port, keepalive=max(5, int(timeout) + 1))
        while not client.is_connected() and time.monotonic() < deadline:
            client.loop(timeout=_POLL_SECONDS)
        return client.is_connected()
    except OSError:
        return False
    finally:
        _close_probe(client)


def _close_probe(client: mqtt.Client) -> None:
    if client.is_connected():
        client.disconnect()
        client.loop(timeout=_POLL_SECONDS)  # Sends the DISCONNECT and closes the socket.
    # A socket left open is a ResourceWarning, and warnings are errors in our test suites.
    sock = client.socket()
    if sock is not None:
        sock.close()


def log_tail(path: Path, *, lines: int = 30) -> str:
    """Return the last ``lines`` lines of a log file, or a note that there is none."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return f"(no broker log at {path})"
    return "\n".join(text.splitlines()[-lines:])


class Broker(abc.ABC):
    """What every harness broker offers: a loopback MQTT endpoint with a controllable life.

    Subclasses run the broker (a local process or a container); this base class owns the work
    directory, the port and the context-manager protocol. Not re-entrant.
    """

    def __init__(self, *, tier: Tier, workdir: Path | None, port: int | None) -> None:
        self.tier: Tier = tier
        self._owns_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"evc-{tier}-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._auto_port = port is None
        self._port = free_port() if port is None else port
        self._ever_started = False
        self._closed = False

    @property
    def host(self) -> str:
        """Address clients connect to (always loopback)."""
        return LOOPBACK

    @property
    def port(self) -> int:
        """TCP port of the MQTT listener; fixed for the life of the object, across restarts."""
        return self._port

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``, the form EVC configs use."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        """The broker's log file: dropped messages and persistence errors are reported only here."""
        return self.workdir / "mosquitto.log"

    @property
    def config_path(self) -> Path:
        """The rendered configuration file."""
        return self.workdir / "mosquitto.conf"

    @property
    @abc.abstractmethod
    def running(self) -> bool:
        """True while the broker process exists (it may be paused)."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start the broker and return once it answers an MQTT CONNECT."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop gracefully (SIGTERM), so that the broker saves its persistence database."""

    @abc.abstractmethod
    def kill(self) -> None:
        """Kill at once (SIGKILL): what arrived since the last autosave is lost."""

    @abc.abstractmethod
    def pause(self) -> None:
        """Freeze the broker (SIGSTOP): connections stay open but nothing is answered."""

    @abc.abstractmethod
    def resume(self) -> None:
        """Unfreeze a paused broker (SIGCONT)."""

    def ping(self, *, timeout: float = 1.0) -> bool:
        """Return True if the broker answers an MQTT CONNECT within ``timeout`` seconds."""
        return self.running and self._handshake(timeout)

    def restart(self) -> None:
        """Stop gracefully if running, then start again on the same port with the same data."""
        if self.running:
            self.stop()
        self._wait_port_free()
        self.start()

    def close(self) -> None:
        """Stop the broker and delete the work directory if this object created it. Idempotent."""
        if self._closed:
            return
        try:
            if self.running:
                self.stop()
        finally:
            self._closed = True
            if self._owns_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def _wait_port_free(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT_SECONDS
        while not port_is_free(self.port):
            if time.monotonic() > deadline:
                raise BrokerError(f"port {self.port} is still in use; cannot restart the broker")
            time.sleep(_POLL_SECONDS)

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise BrokerError(self._failure("exited during startup"))
            if self._handshake(1.0):
                return
            time.sleep(_POLL_SECONDS)
        raise BrokerError(self._failure(f"did not answer MQTT within {timeout} s"))

    def _handshake(self, timeout: float) -> bool:
        return mqtt_handshake(self.host, self._port, timeout=timeout)

    def _failure(self, what: str) -> str:
        return (
            f"mosquitto ({self.tier}) on port {self._port} {what}; "
            f"config {self.config_path}, log {self.log_path}:\n{log_tail(self.log_path)}"
        )

    def _check_usable(self) -> None:
        if self._closed:
            raise BrokerError("the broker has been closed")
        if self.running:
            raise BrokerError(f"the broker on port {self.port} is already running")

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<{type(self).__name__} {self.tier} {self.url} {state}>"


class MosquittoBroker(Broker):
    """A Mosquitto process on loopback, configured from the tier's template.

    Example:
        >>> with MosquittoBroker(tier="fog") as broker:  # doctest: +SKIP
        ...     client.connect(broker.host, broker.port)

    Args:
        tier: ``"fog"`` or ``"cloud"``: which config template to render.
        workdir: Where config, log and persistence database live. A temporary directory, removed
            by :meth:`close`, if None; a directory you pass is kept.
        port: TCP port on 127.0.0.1; a free one if None.
        binary: Path of the ``mosquitto`` executable; looked up on PATH and in /usr/sbin if None.
        security: Users, ACL and optionally TLS: renders ``<tier>-secure.conf.template``
            (no anonymous clients). The default is the open loopback config of the tier.

    Raises:
        BrokerError: Mosquitto is not installed.
    """

    def __init__(
        self,
        *,
        tier: Tier = "fog",
        workdir: Path | None = None,
        port: int | None = None,
        binary: str | None = None,
        security: BrokerSecurity | None = None,
    ) -> None:
        resolved = binary or find_mosquitto()
        if resolved is None:
            raise BrokerError(f"mosquitto is not installed: {INSTALL_HINT}")
        self.binary = resolved
        super().__init__(tier=tier, workdir=workdir, port=port)
        self._process: subprocess.Popen[bytes] | None = None
        self._paused = False
        self.security = security
        self._probe_password = secrets.token_urlsafe(16)

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT``, or ``mqtts://`` when the broker serves TLS."""
        scheme = "mqtts" if self.security and self.security.tls else "mqtt"
        return f"{scheme}://{self.host}:{self.port}"

    def url_for(self, username: str) -> str:
        """The URL with ``username`` and its password in it, e.g. ``mqtt://cam-1:pw@host:port``.

        Raises:
            BrokerError: The broker is not secure or has no such user.
        """
        if self.security is None or username not in self.security.users:
            raise BrokerError(f"the broker on port {self.port} has no user {username!r}")
        scheme, rest = self.url.split("://", 1)
        password = self.security.users[username]
        return f"{scheme}://{quote(username, safe='')}:{quote(password, safe='')}@{rest}"

    @property
    def data_dir(self) -> Path:
        """Directory of the persistence database (``mosquitto.db``)."""
        return self.workdir / "data"

    @property
    def pid(self) -> int | None:
        """Process id of the running broker, or None."""
        return self._process.pid if self.running and self._process else None

    @property
    def running(self) -> bool:
        """True while the broker process exists (it may be paused)."""
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        """Start the broker and return once it answers an MQTT CONNECT.

        If this object chose the port and another process took it first, a fresh port is tried;
        after the first successful start the port never changes.

        Raises:
            BrokerError: The broker is already running, exited, or did not answer in time. The
                message ends with the tail of the broker log.
        """
        self._check_usable()
        attempts = _PORT_ATTEMPTS if self._auto_port and not self._ever_started else 1
        for attempt in range(1, attempts + 1):
            try:
                self._start_once()
            except BrokerError:
                if attempt == attempts or port_is_free(self._port):
                    raise
                self._port = free_port()  # Lost a race for the port: take another one.
            else:
                self._ever_started = True
                return

    def stop(self) -> None:
        """Stop gracefully (SIGTERM) so that the broker saves its persistence database.

        Raises:
            BrokerError: The broker did not exit in time; it is then killed, and its
                persistence database may be stale.
        """
        if not self.running or self._process is None:
            return
        self.resume()  # A stopped process would not handle SIGTERM until continued.
        self._process.terminate()
        try:
            self._process.wait(timeout=_STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired as exc:
            self.kill()
            raise BrokerError(
                f"mosquitto on port {self.port} ignored SIGTERM for {_STOP_TIMEOUT_SECONDS} s "
                f"and was killed\n{log_tail(self.log_path)}"
            ) from exc

    def kill(self) -> None:
        """Kill at once (SIGKILL): what arrived since the last autosave is lost."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._paused = False

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP) to simulate a hung link: sockets stay open, nothing moves."""
        self._signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Unfreeze a paused broker (SIGCONT). Does nothing if it is not paused."""
        if self._paused:
            self._signal(signal.SIGCONT)
            self._paused = False

    def _signal(self, signum: signal.Signals) -> None:
        if not self.running or self._process is None:
            raise BrokerError(f"mosquitto on port {self.port} is not running")
        self._process.send_signal(signum)

    def _start_once(self) -> None:
        self._write_config()
        with self.log_path.open("ab") as log:
            # Errors before the log file is opened (bad config, port taken) go to stderr.
            try:
                self._process = subprocess.Popen(
                    [self.binary, "-c", str(self.config_path)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            except OSError as exc:
                raise BrokerError(f"cannot run {self.binary}: {exc}; {INSTALL_HINT}") from exc
        try:
            self._wait_until_ready(_START_TIMEOUT_SECONDS)
        except BrokerError:
            self.kill()
            raise

    def _handshake(self, timeout: float) -> bool:
        if self.security is None:
            return super()._handshake(timeout)
        return mqtt_handshake(
            self.host,
            self._port,
            timeout=timeout,
            credentials=(PROBE_USER, self._probe_password),
            ca_file=self.security.tls.ca_file if self.security.tls else None,
            client_cert=self.security.probe_certificate,
        )

    def _write_config(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        text = render_config(
            self.tier,
            port=self._port,
            data_dir=str(self.data_dir),
            log_file=str(self.log_path),
            secure_values=self._write_security_files(),
        )
        self.config_path.write_text(text, encoding="utf-8")

    def _write_security_files(self) -> dict[str, str] | None:
        if self.security is None:
            return None
        users = {**self.security.users, PROBE_USER: self._probe_password}
        password_file = write_password_file(self.workdir / "passwd", users)
        acl_file = self.workdir / "acl"
        acl_file.write_text(self.security.acl, encoding="utf-8")
        tls = self.security.tls
        return {
            "password_file": str(password_file),
            "acl_file": str(acl_file),
            "tls": "" if tls else "#",
            "cafile": str(tls.ca_file) if tls else "",
            "certfile": str(tls.cert_file) if tls else "",
            "keyfile": str(tls.key_file) if tls else "",
            "require_certificate": _flag(self.security.require_client_certificate),
            "use_identity_as_username": _flag(self.security.use_identity_as_username),
        }


def _flag(value: bool) -> str:
    return "true" if value else "false"


def create_broker(
    tier: Tier = "fog", *, workdir: Path | None = None, port: int | None = None
) -> Broker:
    """Return a broker of ``tier`` that is not started yet, local if possible.

    A local ``mosquitto`` binary is preferred; without one, a Docker container of
    ``eclipse-mosquitto:2`` is used if a Docker daemon answers.

    Raises:
        BrokerError: Neither Mosquitto nor Docker is available; the message says how to install.
    """
    if find_mosquitto() is not None:
        return MosquittoBroker(tier=tier, workdir=workdir, port=port)
    # Imported here: it pulls in testcontainers, an optional dependency, and imports this module.
    from evc.harness.docker import DockerMosquittoBroker, docker_available  # noqa: PLC0415

    if docker_available():
        return DockerMosquittoBroker(tier=tier, workdir=workdir, port=port)
    raise BrokerError(f"neither mosquitto nor a Docker daemon is available: {INSTALL_HINT}")


def start_broker(
    tier: Tier = "fog", *, workdir: Path | None = None, port: int | None = None
) -> Broker:
    """Create a broker with :func:`create_broker` and start it; close it when done.

    Raises:
        BrokerError: No broker could be created or it did not start.
    """
    broker = create_broker(tier, workdir=workdir, port=port)
    try:
        broker.start()
    except BaseException:
        broker.close()
        raise
    return broker
