"""The decoder and command targets, and :func:`fuzz_targets`, every target ready to run."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from evc.device.commands import DeviceCommands
from evc.errors import EvcError
from evc.fuzz.contract import (
    MAX_BATCH_BYTES,
    MAX_RECORD_BYTES,
    SITE,
    InvariantError,
    Target,
    fuzz_signing_key,
    reason_of,
)
from evc.fuzz.ingress import AdmitTarget, CloudIngestTarget
from evc.gateway.commands import parse_command
from evc.gateway.pipeline import build_pipeline
from evc.models.signing import SignedManifest, TrustedKeys
from evc.mqtt.client import BrokerAddress
from evc.mqtt.command import Problem
from evc.wire import (
    Kind,
    alerts_from,
    batch_from,
    decode,
    detections_from,
    events_from,
    map_from,
    sample_from,
    summaries_from,
    validate_record,
)
from evc.wire.delivery import chunk_from, chunk_request_from

_UNPACK: dict[Kind, Callable[[Any], object]] = {
    Kind.DETECTIONS: detections_from, Kind.EVENT: events_from, Kind.HEARTBEAT: map_from,
    Kind.STATE: map_from, Kind.SUMMARY: summaries_from, Kind.ALERT: alerts_from,
}


def record_target(data: bytes) -> str | None:
    """``validate_record``, then the full decoder of the record's kind (SAMPLE regions
    decompressed), as the gateway and the cloud apply them."""
    try:
        envelope = validate_record(data, max_bytes=MAX_RECORD_BYTES)
    except EvcError as exc:
        return reason_of(exc)
    if envelope.kind is Kind.SAMPLE:
        try:
            sample_from(envelope)  # the one documented late check: regions that do not inflate
        except EvcError as exc:
            return reason_of(exc)
        return None
    try:
        _UNPACK[envelope.kind](envelope)
    except EvcError as exc:
        raise InvariantError(f"validate_record accepted what {envelope.kind.name} refuses") from exc
    return None


def batch_target(data: bytes) -> str | None:
    """``decode`` and ``batch_from`` of an uplink batch, plain or zstd."""
    try:
        batch_from(decode(data, max_bytes=MAX_BATCH_BYTES), max_bytes=MAX_BATCH_BYTES)
    except EvcError as exc:
        return reason_of(exc)
    return None


def chunk_request_target(data: bytes) -> str | None:
    """``chunk_request_from``."""
    try:
        chunk_request_from(data)
    except EvcError as exc:
        return reason_of(exc)
    return None


def chunk_target(data: bytes) -> str | None:
    """``chunk_from`` (a chunk or a refusal)."""
    try:
        chunk_from(data)
    except EvcError as exc:
        return reason_of(exc)
    return None


class ManifestTarget:
    """``SignedManifest.parse`` and ``TrustedKeys.verify`` against the fuzz key."""

    def __init__(self) -> None:
        self.keys = TrustedKeys(keys=[fuzz_signing_key().public_key])

    def __call__(self, data: bytes) -> str | None:
        try:
            self.keys.verify(SignedManifest.parse(data))
        except EvcError as exc:
            return reason_of(exc)
        return None


def _command_reason(problems: Sequence[Problem]) -> str:
    message = problems[0].message if problems else ""
    if problems and problems[0].path == "":
        for prefix, reason in (("command is", "oversized"), ("not JSON", "not_json"),
                               ("the command must", "not_object")):
            if message.startswith(prefix):
                return reason
    return "invalid"


def gateway_command_target(data: bytes) -> str | None:
    """``parse_command``, then ``build_pipeline`` as the gateway's command handler does."""
    parsed = parse_command(data)
    if isinstance(parsed, list):
        return _command_reason(parsed)
    try:
        build_pipeline(parsed.desired.pipeline)
    except ValueError:  # PipelineCommands.handle answers these as "cannot apply"
        return "apply"
    return None


class DeviceCommandTarget:
    """``DeviceCommands.handle`` (validation, version check, apply, save, reply)."""

    def __init__(self, state_dir: Path) -> None:
        self.commands = DeviceCommands(
            site=SITE, device_id="cam-1", address=BrokerAddress(host="localhost", port=1),
            state_dir=state_dir, apply=lambda _settings: None,
        )

    def __call__(self, data: bytes) -> str | None:
        reply = self.commands.handle(data)
        if reply.result == "applied":
            return None
        if reply.result == "stale":
            return "stale"
        message = reply.errors[0].message if reply.errors else ""
        if message.startswith("over "):
            return "oversized"
        if message.startswith("cannot apply"):
            return "apply"
        if reply.errors and reply.errors[0].path == "":
            return "not_json" if "JSON" in message or "EOF" in message else "not_object"
        return "invalid"


@contextmanager
def fuzz_targets() -> Iterator[dict[str, Target]]:
    """Every target, fresh, with a temporary state folder for the device command handler."""
    with tempfile.TemporaryDirectory(prefix="evc-fuzz-") as state_dir:
        yield {
            "record": record_target, "batch": batch_target,
            "chunk_request": chunk_request_target, "chunk": chunk_target,
            "manifest": ManifestTarget(), "gateway_command": gateway_command_target,
            "device_command": DeviceCommandTarget(Path(state_dir)),
            "admit": AdmitTarget(), "cloud_ingest": CloudIngestTarget(),
        }
