"""Pushed pipeline configs: parsing, validation with key paths, versions and persistence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from evc.config import GatewayConfig
from evc.gateway.commands import (
    MAX_COMMAND_BYTES,
    Accepted,
    PipelineCommands,
    Reply,
    parse_command,
)
from evc.gateway.pipeline import Pipeline
from evc.metrics import GatewayMetrics

GOOD = [{"type": "threshold", "default": 0.8}]
BAD_ZONE = [
    {"type": "threshold"},
    {"type": "zones", "mode": "drop", "devices": {"cam-1": [[[0, 0], [1, 1]]]}},
]


def _command(version: Any, pipeline: Any = GOOD, **extra: Any) -> bytes:
    return json.dumps({"version": version, "pipeline": pipeline, **extra}).encode()


class Installed:
    def __init__(self) -> None:
        self.pipelines: list[Pipeline | None] = []

    def __call__(self, pipeline: Pipeline | None) -> None:
        self.pipelines.append(pipeline)


def _commands(tmp_path: Path, installed: Installed) -> tuple[PipelineCommands, GatewayMetrics]:
    config = GatewayConfig(site="s1", gateway_id="gw-1", state_dir=tmp_path, pipeline=GOOD)
    metrics = GatewayMetrics()
    return PipelineCommands(config=config, metrics=metrics, install=installed), metrics


def _count(metrics: GatewayMetrics, result: str) -> float:
    value = metrics.registry.get_sample_value(
        "evc_gateway_config_updates_total", {"result": result}
    )
    return value or 0.0


def test_a_valid_command_parses() -> None:
    parsed = parse_command(_command(3, request="r-1"))

    assert isinstance(parsed, Accepted)
    assert parsed.desired.version == 3
    assert parsed.desired.request == "r-1"
    assert parsed.raw["pipeline"] == GOOD


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        pytest.param(_command(2, BAD_ZONE), "pipeline.1.zones.devices.cam-1.0", id="zone"),
        pytest.param(_command(2, [{"type": "nope"}]), "pipeline.0", id="unknown-operator"),
        pytest.param(_command("2"), "version", id="version-string"),
        pytest.param(_command(0), "version", id="version-zero"),
        pytest.param(_command(2, extra=1), "extra", id="unknown-key"),
        pytest.param(b'{"pipeline": []}', "version", id="no-version"),
        pytest.param(b"{not json", "", id="malformed"),
        pytest.param(b"[1, 2]", "", id="not-an-object"),
        pytest.param(b"\xff\xfe", "", id="not-utf8"),
        pytest.param(b" " * (MAX_COMMAND_BYTES + 1), "", id="oversized"),
    ],
)
def test_a_bad_command_is_rejected_with_its_key_path(payload: bytes, path: str) -> None:
    problems = parse_command(payload)

    assert isinstance(problems, list)
    assert path in [problem.path for problem in problems]


def test_a_newer_version_is_applied_persisted_and_loaded_again(tmp_path: Path) -> None:
    installed = Installed()
    commands, metrics = _commands(tmp_path, installed)
    assert commands.active_version == 0
    assert installed.pipelines == []  # nothing saved: the gateway keeps the YAML's pipeline

    reply = commands.handle(_command(2, request="r"))

    assert (reply.applied, reply.result, reply.active_version, reply.request) == (
        True, "applied", 2, "r"
    )
    assert isinstance(installed.pipelines[-1], Pipeline)
    assert json.loads(commands.state_path.read_text())["version"] == 2
    assert _count(metrics, "applied") == 1
    again = Installed()
    restarted, _ = _commands(tmp_path, again)
    assert restarted.active_version == 2
    assert isinstance(again.pipelines[-1], Pipeline)


def test_a_bad_command_keeps_the_running_pipeline(tmp_path: Path) -> None:
    installed = Installed()
    commands, metrics = _commands(tmp_path, installed)

    reply = commands.handle(_command(2, BAD_ZONE))

    assert (reply.version, reply.applied, reply.result, reply.active_version) == (
        2, False, "rejected", 0
    )
    assert reply.errors[0].path.startswith("pipeline.1")
    assert installed.pipelines == []
    assert not commands.state_path.exists()
    assert _count(metrics, "rejected") == 1


def test_stale_versions_are_acknowledged_not_reapplied(tmp_path: Path) -> None:
    installed = Installed()
    commands, metrics = _commands(tmp_path, installed)
    commands.handle(_command(3))

    same = commands.handle(_command(3))
    older = commands.handle(_command(2))

    assert (same.applied, same.result, same.errors) == (True, "stale", [])
    assert (older.applied, older.result, older.active_version) == (False, "stale", 3)
    assert older.errors[0].path == "version"
    assert len(installed.pipelines) == 1
    assert _count(metrics, "stale") == 2


def test_an_empty_pipeline_forwards_everything(tmp_path: Path) -> None:
    installed = Installed()
    commands, _ = _commands(tmp_path, installed)

    assert commands.handle(_command(2, [])).applied
    assert installed.pipelines == [None]


def test_a_corrupt_saved_config_falls_back_to_the_yaml(tmp_path: Path) -> None:
    (tmp_path / "gw-1.pipeline.json").write_text("{oops")
    installed = Installed()

    commands, _ = _commands(tmp_path, installed)

    assert commands.active_version == 0
    assert installed.pipelines == []


def test_a_reply_round_trips_through_json(tmp_path: Path) -> None:
    commands, _ = _commands(tmp_path, Installed())
    reply = commands.handle(_command(2, BAD_ZONE, request="x"))

    assert Reply.from_json(reply.to_json()) == reply
    assert set(json.loads(reply.to_json())) >= {"version", "applied", "errors", "active_version"}
