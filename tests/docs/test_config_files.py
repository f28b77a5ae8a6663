"""Every example config validates (library and CLI); a broken one exits 2 naming the key path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from evc.config import CloudConfig, DeviceConfig, GatewayConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted([*ROOT.glob("configs/*.yaml"), *ROOT.glob("configs/*.yml")])
MODELS: dict[str, type[BaseModel]] = {
    "gateway": GatewayConfig,
    "cloud": CloudConfig,
    "device": DeviceConfig,
}
COMMANDS = {
    "gateway": ["gateway", "run"],
    "cloud": ["cloud", "run"],
    "device": ["device", "simulate"],
}
EXIT_USAGE = 2


def _role(path: Path) -> str:
    roles = [role for role in MODELS if path.name.startswith(role)]
    assert roles, f"{path.name} must start with one of {sorted(MODELS)} so its model is known"
    return roles[0]


def _evc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # A fresh interpreter runs `python -m evc` exactly as a user would.
    return subprocess.run(
        [sys.executable, "-m", "evc", *args],
        cwd=cwd, capture_output=True, text=True, timeout=60, check=False,
    )


def test_configs_folder_has_an_example_for_every_role() -> None:
    assert {_role(path) for path in CONFIGS} == set(MODELS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_validates_against_its_model(path: Path) -> None:
    model = MODELS[_role(path)]

    assert isinstance(load_config(path, model), model)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_validate_config_exits_zero_for_example_config(path: Path, tmp_path: Path) -> None:
    result = _evc(*COMMANDS[_role(path)], "--config", str(path), "--validate-config", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert "valid" in result.stdout
    assert not list(tmp_path.iterdir()), "validating a config must not create files"


def _set(data: dict[str, Any], key_path: str, value: Any) -> None:
    *parents, last = key_path.split(".")
    for part in parents:
        data = data.setdefault(part, {})
    data[last] = value


BROKEN = [
    ("gateway", "outbox.max_bytes", "lots"),
    ("gateway", "forward.max_inflite", 4),  # a typo: unknown keys are errors
    ("gateway", "outbox.drop_policy", "drop_everything"),
    ("cloud", "ingest.max_batch", 0),
    ("cloud", "ingest.share_group", "no/slashes"),
    ("device", "simulate.fps", -1),
    ("device", "fog.url", "http://fog:1883"),
]


@pytest.mark.parametrize(("role", "key_path", "value"), BROKEN)
def test_broken_config_exits_2_and_names_the_key_path(
    role: str, key_path: str, value: Any, tmp_path: Path
) -> None:
    example = next(path for path in CONFIGS if _role(path) == role)
    data = yaml.safe_load(example.read_text())
    _set(data, key_path, value)
    broken = tmp_path / f"{role}-broken.yaml"
    broken.write_text(yaml.safe_dump(data))

    result = _evc(*COMMANDS[role], "--config", str(broken), "--validate-config", cwd=tmp_path)

    assert result.returncode == EXIT_USAGE
    assert f"{key_path}:" in result.stderr


def test_missing_required_key_exits_2_and_names_it(tmp_path: Path) -> None:
    broken = tmp_path / "gateway.yaml"
    broken.write_text("gateway_id: gw-1\n")

    result = _evc("gateway", "run", "--config", str(broken), "--validate-config", cwd=tmp_path)

    assert result.returncode == EXIT_USAGE
    assert "site:" in result.stderr
