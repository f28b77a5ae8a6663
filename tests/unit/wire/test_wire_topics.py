"""Unit tests of the topic namespace: building, parsing, name validation and filters."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from evc.errors import TopicError, WireError
from evc.wire import Channel, DeviceTopic, GatewayTopic, device_filter, gateway_filter
from evc.wire.topics import validate_name

INVALID_NAMES = [
    "",
    "+",
    "#",
    "a/b",
    "/",
    "cam+1",
    "cam#",
    "x" * 65,
    "-leading-dash",
    ".leading-dot",
    "_leading-underscore",
    "has space",
    "tab\there",
    "caméra",
    "$SYS",
    "a\x00b",
]


@pytest.mark.parametrize("channel", list(Channel))
def test_device_topic_round_trips_through_its_string(channel: Channel) -> None:
    topic = DeviceTopic("site-1", "cam-0001", channel)

    assert str(topic) == f"evc/site-1/dev/cam-0001/{channel.value}"
    assert DeviceTopic.parse(str(topic)) == topic


@pytest.mark.parametrize("channel", list(Channel))
def test_gateway_topic_round_trips_through_its_string(channel: Channel) -> None:
    topic = GatewayTopic("site_2", "gw.A", channel)

    assert str(topic) == f"evc/site_2/gw/gw.A/{channel.value}"
    assert GatewayTopic.parse(str(topic)) == topic


def test_parsed_channel_is_a_channel_member() -> None:
    assert DeviceTopic.parse("evc/s/dev/d/hb").channel is Channel.HEARTBEAT


def test_names_of_one_and_sixty_four_characters_are_valid() -> None:
    assert validate_name("a") == "a"
    assert validate_name("A" * 64) == "A" * 64


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_device_id_raises_topic_error(name: str) -> None:
    with pytest.raises(TopicError) as caught:
        DeviceTopic("site", name, Channel.DETECTIONS)

    assert caught.value.reason == "topic"
    assert isinstance(caught.value, WireError)


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_site_raises_topic_error(name: str) -> None:
    with pytest.raises(TopicError):
        GatewayTopic(name, "gw", Channel.BATCH)


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_gateway_id_raises_topic_error(name: str) -> None:
    with pytest.raises(TopicError):
        GatewayTopic("site", name, Channel.BATCH)


@pytest.mark.parametrize("name", [None, 5, b"cam"])
def test_non_string_name_raises_topic_error(name: Any) -> None:
    with pytest.raises(TopicError):
        validate_name(name)


@pytest.mark.parametrize("name", ["cam\n", "site-1\n"])
def test_name_with_trailing_newline_is_invalid(name: str) -> None:
    """``re.match`` with ``$`` accepts a trailing newline; names must match in full."""
    with pytest.raises(TopicError):
        validate_name(name)


@pytest.mark.parametrize(
    "topic",
    [
        "",
        "evc",
        "evc/s/dev/d",
        "evc/s/dev/d/det/extra",
        "evc/s/dev/d/det/",
        "/evc/s/dev/d/det",
        "EVC/s/dev/d/det",
        "other/s/dev/d/det",
        "evc/s/gw/d/det",
        "evc/s/dev/d/video",
        "evc/s/dev/d/DET",
        "evc/+/dev/d/det",
        "evc/s/dev/#/det",
        "evc//dev/d/det",
        "evc/s/dev//det",
        "evc/s/dev/+/+",
    ],
)
def test_parse_rejects_anything_but_a_device_topic(topic: str) -> None:
    with pytest.raises(TopicError):
        DeviceTopic.parse(topic)


@pytest.mark.parametrize(
    "topic",
    [
        "evc/s/dev/g/batch",
        "evc/s/gw/g",
        "evc/s/gw/g/batch/x",
        "evc/s/gw/g/nope",
        "evc/+/gw/+/batch",
        "$share/grp/evc/s/gw/g/batch",
    ],
)
def test_parse_rejects_anything_but_a_gateway_topic(topic: str) -> None:
    with pytest.raises(TopicError):
        GatewayTopic.parse(topic)


def test_topics_are_frozen_value_types() -> None:
    topic = DeviceTopic("s", "d", Channel.STATE)

    assert topic == DeviceTopic("s", "d", Channel.STATE)
    assert hash(topic) == hash(DeviceTopic("s", "d", Channel.STATE))
    with pytest.raises(AttributeError):
        topic.site = "other"  # type: ignore[misc]


# -- subscription filters ----------------------------------------------------------------------


def test_device_filter_defaults_to_every_site_and_channel() -> None:
    assert device_filter() == "evc/+/dev/+/+"


def test_device_filter_narrows_to_one_site_and_channel() -> None:
    assert device_filter("site-1", Channel.DETECTIONS) == "evc/site-1/dev/+/det"
    assert device_filter(channel=Channel.HEARTBEAT) == "evc/+/dev/+/hb"


@pytest.mark.parametrize("site", ["+", "#", "a/b", "x" * 65])
def test_device_filter_rejects_invalid_site(site: str) -> None:
    with pytest.raises(TopicError):
        device_filter(site)


def test_device_filter_matches_topics_it_was_built_for() -> None:
    levels = device_filter("s", Channel.STATE).split("/")
    topic = str(DeviceTopic("s", "cam-9", Channel.STATE)).split("/")

    assert len(levels) == len(topic)
    assert all(f in ("+", t) for f, t in zip(levels, topic, strict=True))


def test_gateway_filter_without_share_group() -> None:
    assert gateway_filter(Channel.BATCH) == "evc/+/gw/+/batch"


def test_gateway_filter_with_share_group_is_a_shared_subscription() -> None:
    assert gateway_filter(Channel.BATCH, share_group="cloud-ingest") == (
        "$share/cloud-ingest/evc/+/gw/+/batch"
    )


@pytest.mark.parametrize("group", ["+", "#", "a/b", "x" * 65, "has space"])
def test_gateway_filter_rejects_invalid_share_group(group: str) -> None:
    with pytest.raises(TopicError):
        gateway_filter(Channel.STATE, share_group=group)


@pytest.mark.parametrize(
    "build",
    [
        lambda: device_filter(""),
        lambda: gateway_filter(Channel.BATCH, share_group=""),
    ],
    ids=["empty-site", "empty-share-group"],
)
def test_empty_name_in_a_filter_is_rejected_not_widened(build: Callable[[], str]) -> None:
    """An empty site from config must not silently subscribe to every site (or no share)."""
    with pytest.raises(TopicError):
        build()
