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
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from evc.errors import EvcError
from evc.mqtt.client import BrokerAddress, connect_async, new_client

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
