"""A harness broker in a Docker container, for machines without a local Mosquitto.

:class:`DockerMosquittoBroker` has the interface of :class:`~evc.harness.broker.MosquittoBroker`
and renders the same tier templates, but runs ``eclipse-mosquitto:2`` through testcontainers
(install ``evc[docker]``). Caveats, honestly stated: this path is not exercised by EVC's own CI,
which has a local Mosquitto; the first start pulls the image; pause and resume use Docker's
cgroup freezer rather than SIGSTOP; the persistence database lives inside the container, so it
survives :meth:`restart` (the same container is started again) but not :meth:`close`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from evc.errors import BrokerError
from evc.harness.broker import LOOPBACK, Broker, Tier, render_config

if TYPE_CHECKING:
    from testcontainers.core.container import DockerContainer

IMAGE = "eclipse-mosquitto:2"

_CONTAINER_PORT = 1883
_CONFIG_IN_CONTAINER = "/mosquitto/config/mosquitto.conf"
_LOG_DIR_IN_CONTAINER = "/mosquitto/log"
# Generous: the first start may pull the image.
_START_TIMEOUT_SECONDS = 120.0
_STOP_TIMEOUT_SECONDS = 10


def docker_available() -> bool:
    """Return True if testcontainers is installed and a Docker daemon answers."""
    try:
        from testcontainers.core.docker_client import DockerClient  # noqa: PLC0415

        client = DockerClient()
        client.client.ping()
        client.client.close()
    # Any failure (package missing, no socket, daemon refusing) means "no Docker for us".
    except Exception:
        return False
    return True


class DockerMosquittoBroker(Broker):
    """Mosquitto in an ``eclipse-mosquitto:2`` container, published on 127.0.0.1 only.

    Args:
        tier: ``"fog"`` or ``"cloud"``: which config template to render.
        workdir: Where the rendered config and the log live; a temporary directory if None.
        port: Host port on 127.0.0.1; a free one if None.
        image: The Mosquitto image to run.
    """

    def __init__(
        self,
        *,
        tier: Tier = "fog",
        workdir: Path | None = None,
        port: int | None = None,
        image: str = IMAGE,
    ) -> None:
        super().__init__(tier=tier, workdir=workdir, port=port)
        self.image = image
        self._container: DockerContainer | None = None

    @property
    def log_path(self) -> Path:
        """The broker's log file, written by the container through a bind mount."""
        return self.workdir / "log" / "mosquitto.log"

    @property
    def running(self) -> bool:
        """True while the container runs (it may be paused)."""
        if self._container is None:
            return False
        self._container.reload()  # The status is cached from the last inspection.
        return self._container.status in ("running", "paused")

    def start(self) -> None:
        """Start the container (creating it the first time) and wait for an MQTT CONNECT.

        Raises:
            BrokerError: The container did not start or the broker did not answer in time.
        """
        self._check_usable()
        try:
            if self._container is None:
                self._container = self._create()
            else:
                self._container.get_wrapped_container().start()
        except Exception as exc:  # testcontainers and docker raise many unrelated types.
            raise BrokerError(self._failure(f"container failed to start: {exc!r}")) from exc
        self._wait_until_ready(_START_TIMEOUT_SECONDS)

    def stop(self) -> None:
        """Stop the container gracefully (SIGTERM, SIGKILL after 10 s); the data is kept."""
        if self._container is not None and self.running:
            self.resume()
            self._container.get_wrapped_container().stop(timeout=_STOP_TIMEOUT_SECONDS)

    def kill(self) -> None:
        """Kill the container (SIGKILL); what arrived since the last autosave is lost."""
        if self._container is not None and self.running:
            self._container.get_wrapped_container().kill()

    def pause(self) -> None:
        """Freeze the container: connections stay open but nothing is answered."""
        if self._container is None or not self.running:
            raise BrokerError(f"the container on port {self.port} is not running")
        self._container.get_wrapped_container().pause()

    def resume(self) -> None:
        """Unfreeze a paused container. Does nothing if it is not paused."""
        if self._container is not None and self.running and self._container.status == "paused":
            self._container.get_wrapped_container().unpause()

    def close(self) -> None:
        """Stop and remove the container, then delete the work directory if it is ours."""
        try:
            super().close()
        finally:
            if self._container is not None:
                self._container.stop()
                self._container = None

    def _create(self) -> DockerContainer:
        from testcontainers.core.container import DockerContainer  # noqa: PLC0415

        log_dir = self.log_path.parent
        log_dir.mkdir(parents=True, exist_ok=True)
        # The image's mosquitto user (uid 1883) must be able to write the log through the mount.
        log_dir.chmod(0o777)
        self.config_path.write_text(self._render(), encoding="utf-8")
        container = (
            DockerContainer(self.image)
            .with_volume_mapping(str(self.config_path), _CONFIG_IN_CONTAINER, "ro")
            .with_volume_mapping(str(log_dir), _LOG_DIR_IN_CONTAINER, "rw")
        )
        # Publish on host loopback only, as the config allows anonymous clients. with_bind_ports
        # would publish on every interface; docker accepts an (address, port) pair, which
        # testcontainers passes through unchanged although its attribute is typed for ints.
        container.ports[f"{_CONTAINER_PORT}/tcp"] = (LOOPBACK, self.port)  # type: ignore[assignment]
        return container.start()

    def _render(self) -> str:
        return render_config(
            self.tier,
            port=_CONTAINER_PORT,
            data_dir="/mosquitto/data",
            log_file=f"{_LOG_DIR_IN_CONTAINER}/mosquitto.log",
            # Inside the container only; the host side is bound to loopback above.
            bind_address="0.0.0.0",  # noqa: S104
            user="mosquitto",
        )
