"""Retained JSON commands and their replies: how the cloud sets a gateway's or a device's config.

The cloud publishes ``{"version": N, ..., "request": "id"}`` retained on the target's ``cmd``
topic; the target validates it, applies it if it is newer than its active version, and publishes
a retained :class:`Reply` on its ``reply`` topic that echoes ``request``. JSON, so that operators
can write a command by hand. This module holds what both targets and the pushing side share; what
a command may contain is the target's business (``evc.gateway.commands``,
``evc.device.commands``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import ValidationError

from evc.errors import EvcError
from evc.mqtt.client import BrokerAddress, connect_async, new_client

log = logging.getLogger(__name__)

Result = Literal["applied", "rejected", "stale"]
MAX_REQUEST_CHARS = 64


class CommandError(EvcError):
    """A pushed command was not answered, or could not be sent."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason a command was rejected, at a dotted key path."""

    path: str
    message: str


@dataclass(frozen=True, slots=True)
class Reply:
    """A target's answer to one command."""

    version: int | None
    applied: bool
    result: Result
    active_version: int
    errors: list[Problem] = field(default_factory=list)
    request: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_json(cls, payload: bytes) -> Reply:
        """Parse a reply; raise :class:`CommandError` if it is not one."""
        try:
            data = json.loads(payload)
            data["errors"] = [Problem(**error) for error in data.get("errors", [])]
            return cls(**data)
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise CommandError(f"not a command reply: {payload[:100]!r}") from exc


def problems_of(exc: ValidationError, *, prefix: str = "") -> list[Problem]:
    """Every error of a pydantic validation, at its dotted key path."""
    return [
        Problem(prefix + ".".join(str(part) for part in error["loc"]), error["msg"])
        for error in exc.errors()
    ]


def version_of(payload: bytes) -> tuple[int | None, str | None]:
    """The command's ``version`` and ``request``, best effort: so that even the reply to a
    rejected command names what it answers."""
    try:
        raw = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None, None
    if not isinstance(raw, dict):
        return None, None
    version, request = raw.get("version"), raw.get("request")
    return (
        version if type(version) is int else None,
        request if isinstance(request, str) and len(request) <= MAX_REQUEST_CHARS else None,
    )


def push_command(
    *, address: BrokerAddress, command_topic: str, reply_topic: str, body: dict[str, Any],
    target: str, timeout_s: float = 10.0,
) -> Reply:
    """Publish ``body`` (retained, with a fresh ``request`` id) and wait for the reply to it.

    Raises:
        CommandError: no reply within ``timeout_s``.
    """
    request = uuid.uuid4().hex
    replies: list[Reply] = []
    got, subscribed = threading.Event(), threading.Event()

    def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        try:
            reply = Reply.from_json(bytes(message.payload))
        except CommandError:
            return
        if reply.request == request:  # not an older retained reply
            replies.append(reply)
            got.set()

    client = new_client(client_id=f"evc-cmd-{request[:12]}", address=address)
    client.on_connect = lambda c, *_a: c.subscribe(reply_topic, qos=1)
    client.on_subscribe = lambda *_a: subscribed.set()
    client.on_message = on_message
    connect_async(client, address)
    client.loop_start()
    try:
        deadline = time.monotonic() + timeout_s
        if not subscribed.wait(timeout_s):
            raise CommandError(f"could not subscribe on {address} within {timeout_s:g} s")
        payload = json.dumps({**body, "request": request}).encode()
        client.publish(command_topic, payload, qos=1, retain=True)
        if not got.wait(max(0.0, deadline - time.monotonic())):
            raise CommandError(f"{target} did not reply within {timeout_s:g} s")
        return replies[0]
    finally:
        client.disconnect()
        client.loop_stop()


class CommandListener:
    """The target's MQTT side: takes retained commands on one topic and publishes each reply,
    retained, on another.

    Args:
        address: the broker the commands arrive on.
        client_id: stable, so the broker keeps the session (commands pushed while away).
        command_topic: where commands arrive.
        reply_topic: where replies go.
        handle: validates and applies one command; must not raise on bad input.
    """

    def __init__(
        self, *, address: BrokerAddress, client_id: str, command_topic: str, reply_topic: str,
        handle: Callable[[bytes], Reply],
    ) -> None:
        self._address = address
        self._client_id = client_id
        self.command_topic = command_topic
        self.reply_topic = reply_topic
        self._handle = handle
        self.subscribed = threading.Event()
        self._client: mqtt.Client | None = None  # made by start(): paho opens sockets at once

    def start(self) -> None:
        """Connect and take commands (the retained one arrives at once)."""
        client = new_client(client_id=self._client_id, address=self._address)
        client.on_connect = self._on_connect
        client.on_subscribe = lambda *_a: self.subscribed.set()
        client.on_message = self._on_message
        connect_async(client, self._address, persistent=True)
        client.loop_start()
        self._client = client

    def stop(self) -> None:
        """Disconnect."""
        client, self._client = self._client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def _on_connect(
        self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any
    ) -> None:
        if not reason.is_failure:
            client.subscribe(self.command_topic, qos=1)

    def _on_message(self, client: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        if not message.payload:  # the retained command was cleared
            return
        try:
            reply = self._handle(bytes(message.payload))
        except Exception:  # a bug must not kill paho's network thread
            log.exception("handling a command on %s failed", message.topic)
            return
        client.publish(self.reply_topic, reply.to_json(), qos=1, retain=True)
