"""Settings pushed to a device: frame policy, heartbeat interval and hard-example sampling.

The cloud publishes ``{"version": N, "settings": {...}, "request": "id"}`` retained on the
device's command topic ``evc/{site}/dev/{device}/cmd``; the site's gateway relays it to the fog
broker (:mod:`evc.gateway.downlink`). The device validates it with :class:`DeviceSettings` (the
same models as the device YAML), applies a newer valid version between two frames, saves it in
its state folder (so a reboot keeps it) and answers, retained, on ``.../reply`` with the applied
version, or with every error's key path while the old settings keep running. The reply format
is the gateway's (:class:`evc.gateway.commands.Reply`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import Field, ValidationError

from evc.config import PublishConfig, SamplingConfig, StrictModel
from evc.errors import EvcError
from evc.mqtt.client import BrokerAddress, connect_async, new_client
from evc.wire import Channel, DeviceTopic

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 64 * 1024


class DeviceCommandError(EvcError):
    """A pushed device setting was not answered, or could not be sent."""


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


def _reply(
    *, version: int | None, applied: bool, result: str, active: int,
    problems: list[dict[str, str]], request: str | None,
) -> bytes:
    return json.dumps({
        "version": version, "applied": applied, "result": result, "active_version": active,
        "errors": problems, "request": request,
    }).encode()


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
        self.results: dict[str, int] = {"applied": 0, "rejected": 0, "stale": 0}
        self.command_topic = str(DeviceTopic(site, device_id, Channel.COMMAND))
        self.reply_topic = str(DeviceTopic(site, device_id, Channel.COMMAND_REPLY))
        self.state_path = Path(state_dir) / f"{device_id}.settings.json"
        self.subscribed = threading.Event()
        self._client = new_client(client_id=f"evc-dev-{site}-{device_id}-cmd", address=address)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = lambda *_a: self.subscribed.set()
        self._client.on_message = self._on_message
        self._load()

    def _load(self) -> None:
        try:
            raw = self.state_path.read_bytes()
        except FileNotFoundError:
            return
        try:
            desired = DesiredSettings.model_validate_json(raw)
        except ValidationError as exc:
            log.warning("ignoring the saved settings %s: %s", self.state_path, exc)
            return
        self._apply(desired.settings)
        self.active_version = desired.version

    def handle(self, payload: bytes) -> bytes:
        """Validate a command, apply it if newer, and return the reply; never raises."""
        with self._lock:
            version, request = _version_of(payload)
            result, problems = self._handle(payload)
            self.results[result] += 1
            applied = result == "applied" or (result == "stale" and not problems)
            return _reply(
                version=version, applied=applied, result=result, active=self.active_version,
                problems=problems, request=request,
            )

    def _handle(self, payload: bytes) -> tuple[str, list[dict[str, str]]]:
        if len(payload) > MAX_COMMAND_BYTES:
            return "rejected", [{"path": "", "message": f"over {MAX_COMMAND_BYTES} bytes"}]
        try:
            desired = DesiredSettings.model_validate_json(payload)
        except ValidationError as exc:
            return "rejected", [
                {"path": ".".join(str(p) for p in error["loc"]), "message": error["msg"]}
                for error in exc.errors()
            ]
        if desired.version <= self.active_version:
            if desired.version == self.active_version:
                return "stale", []
            return "stale", [{"path": "version", "message": "older than the active version"}]
        try:
            self._apply(desired.settings)
            self._persist(payload)
        except (OSError, ValueError) as exc:
            return "rejected", [{"path": "", "message": f"cannot apply: {exc}"}]
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
        connect_async(self._client, self._address, persistent=True)
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(
        self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any
    ) -> None:
        if not reason.is_failure:
            client.subscribe(self.command_topic, qos=1)

    def _on_message(self, client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        if not message.payload:  # the retained command was cleared
            return
        try:
            reply = self.handle(bytes(message.payload))
        except Exception:  # a bug must not kill paho's network thread
            log.exception("handling a command on %s failed", message.topic)
            return
        client.publish(self.reply_topic, reply, qos=1, retain=True)


def _version_of(payload: bytes) -> tuple[int | None, str | None]:
    # Best effort, so that even a rejected command's reply names its version and request.
    try:
        raw = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, None
    if not isinstance(raw, dict):
        return None, None
    version, request = raw.get("version"), raw.get("request")
    return (
        version if type(version) is int else None,
        request if isinstance(request, str) and len(request) <= 64 else None,
    )


def push_device_settings(
    *, address: BrokerAddress, site: str, device: str, version: int,
    settings: dict[str, Any], timeout_s: float = 10.0,
) -> dict[str, Any]:
    """Publish a device's desired settings (retained, on the cloud broker, relayed by the site's
    gateway) and wait for the device's reply to it.

    Raises:
        DeviceCommandError: no reply within ``timeout_s``.
    """
    request = uuid.uuid4().hex
    command = str(DeviceTopic(site, device, Channel.COMMAND))
    reply_topic = str(DeviceTopic(site, device, Channel.COMMAND_REPLY))
    replies: list[dict[str, Any]] = []
    got, subscribed = threading.Event(), threading.Event()

    def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            reply = json.loads(message.payload)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return
        if isinstance(reply, dict) and reply.get("request") == request:
            replies.append(reply)
            got.set()

    client = new_client(client_id=f"evc-devcfg-{request[:12]}", address=address)
    client.on_connect = lambda c, *_a: c.subscribe(reply_topic, qos=1)
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_message = on_message
    connect_async(client, address)
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout_s
        if not subscribed.wait(timeout_s):
            raise DeviceCommandError(f"could not subscribe on {address} within {timeout_s:g} s")
        body = {"version": version, "settings": settings, "request": request}
        client.publish(command, json.dumps(body).encode(), qos=1, retain=True)
        if not got.wait(max(0.0, deadline - time.monotonic())):
            raise DeviceCommandError(
                f"device {site}/{device} did not reply within {timeout_s:g} s"
            )
        return replies[0]
    finally:
        client.disconnect()
        client.loop_stop()
