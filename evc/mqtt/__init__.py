"""MQTT transport shared by the tiers: clients, commit-then-ack consumers, outbox forwarders."""

from evc.mqtt.client import BrokerAddress, Will, new_client
from evc.mqtt.consumer import CommitThenAckConsumer
from evc.mqtt.forwarder import BatchPacker, OneToOnePacker, OutboxForwarder

__all__ = [
    "BatchPacker",
    "BrokerAddress",
    "CommitThenAckConsumer",
    "OneToOnePacker",
    "OutboxForwarder",
    "Will",
    "new_client",
]
