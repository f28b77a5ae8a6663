"""Remote reconfiguration: the cloud pushes a gateway's pipeline on its command topic.

The desired config is a retained JSON message on ``evc/{site}/gw/{gateway}/cmd`` (on the cloud
broker), ``{"version": 2, "pipeline": [...], "request": "optional id"}``. The gateway validates
it with the same models as its YAML ``pipeline:``; a newer valid version is built and swapped
in between two intake batches, persisted to ``state_dir/<gateway_id>.pipeline.json`` (which then
overrides the YAML's pipeline at every start) and acknowledged. An invalid one is rejected with
every error's key path, and the running pipeline stays. Every command gets a retained JSON reply
on ``evc/{site}/gw/{gateway}/reply``.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError, field_validator

from evc.config import GatewayConfig, StrictModel
from evc.gateway.pipeline import OperatorConfig, Pipeline, build_pipeline
from evc.metrics import GatewayMetrics
from evc.mqtt.client import BrokerAddress
from evc.mqtt.command import (
    CommandListener,
    Problem,
    Reply,
    problems_of,
    push_command,
    version_of,
)
from evc.wire import Channel, GatewayTopic

log = logging.getLogger(__name__)

MAX_COMMAND_BYTES = 256 * 1024
Install = Callable[[Pipeline | None], None]


class DesiredPipeline(StrictModel):
    """A pipeline config pushed by the cloud."""

    version: int = Field(..., ge=1, strict=True, description="Increases with every push.")
    pipeline: list[Any] = Field(..., description="Operators, as in a gateway's YAML.")
    request: str | None = Field(
        None, max_length=64, description="An id the reply echoes, to match it to its push."
    )

    @field_validator("pipeline", mode="before")
    @classmethod
    def _operators(cls, value: Any) -> Any:
        # The very validator of the YAML `pipeline:`, so both accept and reject the same.
        return GatewayConfig._operators(value)


@dataclass(frozen=True, slots=True)
class Accepted:
    """A command that validated."""

    desired: DesiredPipeline
    raw: dict[str, Any]


def parse_command(payload: bytes) -> Accepted | list[Problem]:
    """Parse and validate a command payload; the problems, with key paths, if it is bad."""
    if len(payload) > MAX_COMMAND_BYTES:
        return [Problem("", f"command is {len(payload)} bytes; the limit is {MAX_COMMAND_BYTES}")]
    try:
        raw = json.loads(payload)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return [Problem("", f"not JSON: {exc}")]
    if not isinstance(raw, dict):
        return [Problem("", "the command must be a JSON object")]
    try:
        return Accepted(DesiredPipeline.model_validate(raw), raw)
    except ValidationError as exc:
        return problems_of(exc)


class PipelineCommands:
    """Applies pushed pipeline configs to a gateway, and answers each.

    Args:
        config: the gateway's config (site, ids, state folder, cloud broker).
        metrics: counts updates by result.
        install: makes a pipeline (None: forward everything) the gateway's running one.
    """

    def __init__(
        self, *, config: GatewayConfig, metrics: GatewayMetrics, install: Install
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._install = install
        self._lock = threading.Lock()
        self.active_version = 0  # 0: the YAML's pipeline
        self.state_path = Path(config.state_dir) / f"{config.gateway_id}.pipeline.json"
        self.command_topic = str(GatewayTopic(config.site, config.gateway_id, Channel.COMMAND))
        self.reply_topic = str(
            GatewayTopic(config.site, config.gateway_id, Channel.COMMAND_REPLY)
        )
        self.listener = CommandListener(
            address=config.cloud.address,
            client_id=f"evc-gw-{config.site}-{config.gateway_id}-cmd",
            command_topic=self.command_topic, reply_topic=self.reply_topic, handle=self.handle,
        )
        self._load()

    def _load(self) -> None:
        if not self.state_path.exists():
            return
        try:
            parsed = parse_command(self.state_path.read_bytes())
        except OSError as exc:
            log.warning("cannot read %s, running the YAML pipeline: %s", self.state_path, exc)
            return
        if isinstance(parsed, list):  # e.g. an operator this build no longer has
            log.warning("ignoring the saved pipeline %s: %s", self.state_path, parsed)
            return
        self._apply(parsed.desired)
        log.info("running the pushed pipeline version %d", self.active_version)

    def _apply(self, desired: DesiredPipeline) -> None:
        operators: list[OperatorConfig] = desired.pipeline
        pipeline = build_pipeline(operators, listener=self._metrics.pipeline) if operators else None
        self._install(pipeline)
        self.active_version = desired.version

    def _persist(self, raw: dict[str, Any]) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.state_path.with_suffix(".tmp")
        with temporary.open("w", encoding="utf-8") as file:
            json.dump(raw, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.state_path)

    def handle(self, payload: bytes) -> Reply:
        """Validate a command and apply it if it is newer; never raises on bad input."""
        with self._lock:
            reply = self._handle(payload)
        self._metrics.config_updates.labels(reply.result).inc()
        return reply

    def _handle(self, payload: bytes) -> Reply:
        version, request = version_of(payload)
        parsed = parse_command(payload)
        if isinstance(parsed, list):
            return Reply(version, False, "rejected", self.active_version, parsed, request)
        desired = parsed.desired
        if desired.version <= self.active_version:
            problems = [] if desired.version == self.active_version else [Problem(
                "version", f"older than the active version {self.active_version}; not applied"
            )]
            current = desired.version == self.active_version
            return Reply(desired.version, current, "stale", self.active_version, problems, request)
        try:
            pipeline = build_pipeline(desired.pipeline, listener=self._metrics.pipeline)
            self._persist(parsed.raw)
        except (OSError, ValueError) as exc:
            problems = [Problem("", f"cannot apply: {exc}")]
            return Reply(desired.version, False, "rejected", self.active_version, problems, request)
        self._install(pipeline if desired.pipeline else None)
        self.active_version = desired.version
        log.info("applied the pushed pipeline version %d", desired.version)
        return Reply(desired.version, True, "applied", self.active_version, [], request)

    # -- the MQTT side -----------------------------------------------------------------------

    def start(self) -> None:
        """Connect to the cloud broker and take commands."""
        self.listener.start()

    def stop(self) -> None:
        """Disconnect."""
        self.listener.stop()

    @property
    def subscribed(self) -> threading.Event:
        """Set once the command topic is subscribed."""
        return self.listener.subscribed


def push_pipeline(
    *,
    address: BrokerAddress,
    site: str,
    gateway: str,
    version: int,
    pipeline: list[Any],
    timeout_s: float = 10.0,
) -> Reply:
    """Publish a desired pipeline (retained) and wait for the gateway's reply to it.

    Raises:
        CommandError: no reply within ``timeout_s``.
    """
    return push_command(
        address=address, command_topic=str(GatewayTopic(site, gateway, Channel.COMMAND)),
        reply_topic=str(GatewayTopic(site, gateway, Channel.COMMAND_REPLY)),
        body={"version": version, "pipeline": pipeline}, target=f"gateway {site}/{gateway}",
        timeout_s=timeout_s,
    )
