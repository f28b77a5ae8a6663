"""The EVC topic namespace: the only place where topic strings are built and parsed.

Device messages live under ``evc/{site}/dev/{device}/{kind}``; gateway messages under
``evc/{site}/gw/{gateway}/{kind}``. Names are restricted so that a segment can never smuggle a
wildcard or a level separator into a topic.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from evc.errors import TopicError

ROOT = "evc"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class Channel(StrEnum):
    """The last topic level: what kind of message travels on the topic."""

    DETECTIONS = "det"
    HEARTBEAT = "hb"
    STATE = "state"
    SAMPLE = "sample"
    MODEL = "model"
    COMMAND = "cmd"
    COMMAND_REPLY = "reply"
    BATCH = "batch"


def validate_name(name: str, *, what: str = "name") -> str:
    """Return ``name`` if it may be used as a site, device or gateway id, else raise."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise TopicError(
            f"invalid {what} {name!r}: use 1-64 characters from [A-Za-z0-9_.-], "
            "starting with a letter or digit"
        )
    return name


def _channel(value: str) -> Channel:
    try:
        return Channel(value)
    except ValueError as exc:
        raise TopicError(f"unknown channel {value!r}") from exc


@dataclass(frozen=True, slots=True)
class DeviceTopic:
    """A topic that a device publishes on: ``evc/{site}/dev/{device}/{channel}``."""

    site: str
    device: str
    channel: Channel

    def __post_init__(self) -> None:
        validate_name(self.site, what="site")
        validate_name(self.device, what="device id")

    def __str__(self) -> str:
        return f"{ROOT}/{self.site}/dev/{self.device}/{self.channel.value}"

    @classmethod
    def parse(cls, topic: str) -> DeviceTopic:
        """Parse a device topic; raise :class:`TopicError` for anything else."""
        parts = topic.split("/")
        if len(parts) != 5 or parts[0] != ROOT or parts[2] != "dev":
            raise TopicError(f"not a device topic: {topic!r}")
        return cls(parts[1], parts[3], _channel(parts[4]))


@dataclass(frozen=True, slots=True)
class GatewayTopic:
    """A topic that a gateway publishes on: ``evc/{site}/gw/{gateway}/{channel}``."""

    site: str
    gateway: str
    channel: Channel

    def __post_init__(self) -> None:
        validate_name(self.site, what="site")
        validate_name(self.gateway, what="gateway id")

    def __str__(self) -> str:
        return f"{ROOT}/{self.site}/gw/{self.gateway}/{self.channel.value}"

    @classmethod
    def parse(cls, topic: str) -> GatewayTopic:
        """Parse a gateway topic; raise :class:`TopicError` for anything else."""
        parts = topic.split("/")
        if len(parts) != 5 or parts[0] != ROOT or parts[2] != "gw":
            raise TopicError(f"not a gateway topic: {topic!r}")
        return cls(parts[1], parts[3], _channel(parts[4]))


def device_filter(site: str | None = None, channel: Channel | None = None) -> str:
    """Subscription filter for device messages of one site (or all) and one channel (or all)."""
    site_part = "+" if site is None else validate_name(site, what="site")
    channel_part = channel.value if channel else "+"
    return f"{ROOT}/{site_part}/dev/+/{channel_part}"


def gateway_filter(channel: Channel, *, share_group: str | None = None) -> str:
    """Subscription filter for one channel of every gateway, optionally as a shared subscription.

    A share group lets several cloud workers split the stream (MQTT 5 ``$share``).
    """
    topic = f"{ROOT}/+/gw/+/{channel.value}"
    if share_group is not None:
        return f"$share/{validate_name(share_group, what='share group')}/{topic}"
    return topic
