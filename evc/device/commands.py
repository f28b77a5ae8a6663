"""Settings pushed to a device: frame policy, heartbeat interval and hard-example sampling.

The cloud publishes ``{"version": N, "settings": {...}, "request": "id"}`` retained on the
device's command topic ``evc/{site}/dev/{device}/cmd``; the site's gateway relays it to the fog
broker (:mod:`evc.gateway.downlink`). The device validates it with :class:`DeviceSettings` (the
same models as the device YAML), applies a newer valid version between two frames, saves it in
its state folder (so a reboot keeps it) and answers, retained, on ``.../reply`` with the applied
version, or with every error's key path while the old settings keep running. The reply format
is the gateway's (:class:`evc.mqtt.command.Reply`).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from evc.config import PublishConfig, SamplingConfig, StrictModel
from evc.mqtt.client import BrokerAddress
from evc.mqtt.command import (
    CommandListener,
    Problem,
    Reply,
    Result,
    problems_of,
    push_command,
    version_of,
)
from evc.wire import Channel, DeviceTopic

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 64 * 1024


class DeviceSettings(StrictModel):
    """What the cloud may change on a running device; absent sections stay as they are."""

    publish: PublishConfig | None = Field(None, description="Frame policy.")
    heartbeat_interval_s: float | None = Field(
        None, gt=0, le=3600, description="Seconds between heartbeats."
    )
    sampling: SamplingConfig | None = Field(None, description="Hard-example sampling.")


class DesiredSettings(StrictModel):
    """A pushed command."""

    version: int = Field(..., ge=1, strict=True, description="Increases with every push.")
    settings: DeviceSettings = Field(..., description="The settings to apply.")
    request: str | None = Field(
        None, max_length=64, description="An id the reply echoes, to match it to its push."
    )


class DeviceCommands:
    """Takes pushed settings for one device and applies them through ``apply``.

    Args:
        site: the device's site.
        device_id: the device.
        address: the site's fog broker.
        state_dir: where the applied settings are saved.
        apply: makes the settings the device's running ones (called between frames).
    """

    def __init__(
        self, *, site: str, device_id: str, address: BrokerAddress, state_dir: Path,
        apply: Callable[[DeviceSettings], None],
    ) -> None:
        self._address = address
        self._apply = apply
        self._lock = threading.Lock()
        self.active_version = 0
        self.results: dict[Result, int] = {"applied": 0, "rejected": 0, "stale": 0}
        self.command_topic = str(DeviceTopic(site, device_id, Channel.COMMAND))
        self.reply_topic = str(DeviceTopic(site, device_id, Channel.COMMAND_REPLY))
        self.state_path = Path(state_dir) / f"{device_id}.settings.json"
        self.listener = CommandListener(
            address=address, client_id=f"evc-dev-{site}-{device_id}-cmd",
            command_topic=self.command_topic, reply_topic=self.reply_topic, handle=self.handle,
        )
        self._load()

    def _load(self) -> None:
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:  # unreadable: start on the configured settings, say why
            log.warning("cannot read the saved settings %s: %s", self.state_path, exc)
            return
        try:
            desired = DesiredSettings.model_validate_json(raw)
        except ValidationError as exc:
            log.warning("ignoring the saved settings %s: %s", self.state_path, exc)
            return
        self._apply(desired.settings)
        self.active_version = desired.version

    def handle(self, payload: bytes) -> Reply:
        """Validate a command, apply it if newer, and return the reply; never raises."""
        with self._lock:  # paho's thread and a direct caller must not interleave
            version, request = version_of(payload)
            result, problems = self._handle(payload)
            self.results[result] += 1
            applied = result == "applied" or (result == "stale" and not problems)
            return Reply(version, applied, result, self.active_version, problems, request)

    def _handle(self, payload: bytes) -> tuple[Result, list[Problem]]:
        if len(payload) > MAX_COMMAND_BYTES:
            return "rejected", [Problem("", f"over {MAX_COMMAND_BYTES} bytes")]
        try:
            desired = DesiredSettings.model_validate_json(payload)
        except ValidationError as exc:
            return "rejected", problems_of(exc)
        if desired.version <= self.active_version:
            if desired.version == self.active_version:
                return "stale", []
            return "stale", [Problem("version", "older than the active version; not applied")]
        try:
            # Saved first: settings that run must be the ones a reboot restores.
            self._persist(payload)
            self._apply(desired.settings)
        except (OSError, ValueError) as exc:
            return "rejected", [Problem("", f"cannot apply: {exc}")]
        self.active_version = desired.version
        return "applied", []

    def _persist(self, payload: bytes) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.state_path.with_suffix(".tmp")
        with temporary.open("wb") as file:
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.state_path)

    # -- the MQTT side -------------------------------------------------------------------------

    def start(self) -> None:
        """Connect to the fog broker and take commands."""
        self.listener.start()

    def stop(self) -> None:
        """Disconnect."""
        self.listener.stop()


def push_device_settings(
    *, address: BrokerAddress, site: str, device: str, version: int,
    settings: dict[str, Any], timeout_s: float = 10.0,
) -> Reply:
    """Publish a device's desired settings (retained, on the cloud broker, relayed by the site's
    gateway) and wait for the device's reply to it.

    Raises:
        CommandError: no reply within ``timeout_s``.
    """
    return push_command(
        address=address, command_topic=str(DeviceTopic(site, device, Channel.COMMAND)),
        reply_topic=str(DeviceTopic(site, device, Channel.COMMAND_REPLY)),
        body={"version": version, "settings": settings}, target=f"device {site}/{device}",
        timeout_s=timeout_s,
    )
