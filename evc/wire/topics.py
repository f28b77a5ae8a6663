"""The EVC topic namespace: the only place where topic strings are built and parsed.

Device messages live under ``evc/{site}/dev/{device}/{kind}``; gateway messages under
``evc/{site}/gw/{gateway}/{kind}``; the signed manifest of the model a group of a site's devices
should run under ``evc/{site}/model/{group}/desired`` (retained; group ``all`` is the site's
default). Names are restricted so that a segment can never smuggle a
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
    MODEL = "model"  # chunk requests of a model artifact, to the tier above
    CHUNK = "chunk"  # chunks of a model artifact, from the tier above
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


UPLINK_CHANNELS = (Channel.DETECTIONS, Channel.HEARTBEAT, Channel.STATE, Channel.SAMPLE)
ALL_DEVICES = "all"


@dataclass(frozen=True, slots=True)
class DesiredModelTopic:
    """Where the signed manifest of a group's desired model is retained:
    ``evc/{site}/model/{group}/desired``; group ``all`` holds the site's default."""

    site: str
    group: str = ALL_DEVICES

    def __post_init__(self) -> None:
        validate_name(self.site, what="site")
        validate_name(self.group, what="device group")

    def __str__(self) -> str:
        return f"{ROOT}/{self.site}/model/{self.group}/desired"

    @classmethod
    def parse(cls, topic: str) -> DesiredModelTopic:
        """Parse a desired-model topic; raise :class:`TopicError` for anything else."""
        parts = topic.split("/")
        if len(parts) != 5 or parts[0] != ROOT or parts[2] != "model" or parts[4] != "desired":
            raise TopicError(f"not a desired-model topic: {topic!r}")
        return cls(parts[1], parts[3])


def desired_model_filter(site: str | None = None) -> str:
    """Subscription filter for the desired-model manifests of every group of a site (or all)."""
    site_part = "+" if site is None else validate_name(site, what="site")
    return f"{ROOT}/{site_part}/model/+/desired"


def device_filter(site: str | None = None, channel: Channel | None = None) -> str:
    """Subscription filter for device messages of one site (or all) and one channel (or all)."""
    site_part = "+" if site is None else validate_name(site, what="site")
    channel_part = channel.value if channel else "+"
    return f"{ROOT}/{site_part}/dev/+/{channel_part}"


def gateway_filter(
    channel: Channel, *, share_group: str | None = None, site: str | None = None
) -> str:
    """Subscription filter for one channel of every gateway (of one site, or all), optionally
    as a shared subscription.

    A share group lets several cloud workers split the stream (MQTT 5 ``$share``).
    """
    site_part = "+" if site is None else validate_name(site, what="site")
    topic = f"{ROOT}/{site_part}/gw/+/{channel.value}"
    if share_group is not None:
        return f"$share/{validate_name(share_group, what='share group')}/{topic}"
    return topic
