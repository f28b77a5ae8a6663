"""Commands for devices, relayed through the gateway: cloud broker -> fog broker, and replies back.

Devices only reach their site's fog broker, so the cloud pushes a device's desired settings as a
retained message on ``evc/{site}/dev/{device}/cmd`` on the *cloud* broker; the gateway copies it,
retained, to the same topic on the fog broker, where the device takes it. The device's retained
reply on ``evc/{site}/dev/{device}/reply`` travels the other way. Both are retained on both
brokers, so a device or gateway that was away catches up on reconnect, and an empty message (a
cleared command) is relayed too.
"""

from __future__ import annotations

import logging
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.reasoncodes import ReasonCode

from evc.errors import TopicError
from evc.metrics import GatewayMetrics
from evc.mqtt.client import BrokerAddress, connect_async, new_client
from evc.wire import Channel, DeviceTopic, device_filter

log = logging.getLogger(__name__)

MAX_RELAYED_BYTES = 256 * 1024


class DownlinkRelay:
    """Copies device commands down and device replies up, retained.

    Args:
        site: the gateway's site; messages of other sites are never relayed.
        gateway_id: for the client ids.
        fog: the site's broker, where devices are.
        cloud: the cloud broker.
        metrics: counts relayed and refused messages.
    """

    def __init__(
        self, *, site: str, gateway_id: str, fog: BrokerAddress, cloud: BrokerAddress,
        metrics: GatewayMetrics,
    ) -> None:
        self._site = site
        self._metrics = metrics
        self._fog, self._cloud = fog, cloud
        self._down = self._client(f"evc-gw-{site}-{gateway_id}-down", cloud, Channel.COMMAND)
        self._up = self._client(f"evc-gw-{site}-{gateway_id}-up-reply", fog, Channel.COMMAND_REPLY)
        self._down.on_message = self._relay_to(self._up, Channel.COMMAND, "down")
        self._up.on_message = self._relay_to(self._down, Channel.COMMAND_REPLY, "up")

    def _client(self, client_id: str, address: BrokerAddress, channel: Channel) -> mqtt.Client:
        client = new_client(client_id=client_id, address=address)
        topic = device_filter(self._site, channel)

        def on_connect(
            c: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any
        ) -> None:
            if not reason.is_failure:
                c.subscribe(topic, qos=1)

        client.on_connect = on_connect
        return client

    def _relay_to(self, target: mqtt.Client, channel: Channel, direction: str) -> Any:
        def on_message(_c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
            try:
                topic = DeviceTopic.parse(message.topic)
                if topic.site != self._site or topic.channel is not channel:
                    raise TopicError(f"not a {channel.value} topic of site {self._site}")
                if len(message.payload) > MAX_RELAYED_BYTES:
                    raise TopicError(f"{len(message.payload)} bytes exceed {MAX_RELAYED_BYTES}")
            except TopicError as exc:
                self._metrics.downlink_refused.labels(direction).inc()
                log.warning("not relaying %s: %s", message.topic, exc)
                return
            # Retained on the far side too: whoever connects later still finds the latest.
            target.publish(str(topic), bytes(message.payload), qos=1, retain=True)
            self._metrics.downlink_relayed.labels(direction).inc()

        return on_message

    def start(self) -> None:
        """Connect to both brokers; retained commands and replies are relayed at once."""
        for client, address in ((self._up, self._fog), (self._down, self._cloud)):
            connect_async(client, address, persistent=True)
            client.loop_start()

    def stop(self) -> None:
        """Disconnect from both brokers."""
        for client in (self._down, self._up):
            client.disconnect()
            client.loop_stop()
            # Each client's callback holds the other: break the cycle so that paho's own
            # clean-up closes its sockets when the relay goes, not a later garbage collection.
            client.on_message = None
