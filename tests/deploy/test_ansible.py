"""The fog box playbook: ansible-playbook --syntax-check, ansible-lint, and a valid gateway.yaml."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from evc.config import GatewayConfig

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / "gateways" / "ansible"
ROLE = ANSIBLE / "roles" / "evc"
INVENTORY = ANSIBLE / "inventory.example.yml"
INSTALL = "install the dev extra: pip install -e '.[dev]' (ansible-core and ansible-lint)"


def _tool(name: str) -> str:
    # Next to the interpreter first: the venv's bin folder need not be on PATH.
    path = Path(sys.executable).with_name(name)
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is missing; {INSTALL}"
    return found


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "ANSIBLE_NOCOLOR": "1",
        "NO_COLOR": "1",
    }
    return subprocess.run(
        command, cwd=ANSIBLE, env=env, capture_output=True, text=True, timeout=240, check=False
    )


def test_playbook_syntax_check() -> None:
    result = _run(
        _tool("ansible-playbook"), "--syntax-check", "-i", str(INVENTORY), "playbook.yml"
    )

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.slow
def test_ansible_lint_production_profile() -> None:
    result = _run(_tool("ansible-lint"), "--nocolor", "--offline", "--profile", "production", ".")

    assert result.returncode == 0, result.stdout + result.stderr


def _hosts() -> dict[str, dict[str, Any]]:
    inventory = yaml.safe_load(INVENTORY.read_text())["fog"]
    return {name: {**inventory["vars"], **host} for name, host in inventory["hosts"].items()}


def _render_gateway_yaml(host_vars: dict[str, Any]) -> str:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    values = {**defaults, **host_vars, "playbook_dir": str(ANSIBLE)}
    environment = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False)  # noqa: S701
    # Defaults may refer to other variables, as Ansible resolves them lazily.
    for _ in range(3):
        values = {
            key: environment.from_string(value).render(values) if isinstance(value, str) else value
            for key, value in values.items()
        }
    template = (ROLE / "templates" / "gateway.yaml.j2").read_text()
    return environment.from_string(template).render(values)


@pytest.mark.parametrize("host", sorted(_hosts()))
def test_installed_gateway_yaml_validates_as_a_gateway_config(host: str) -> None:
    host_vars = _hosts()[host]

    config = GatewayConfig.model_validate(yaml.safe_load(_render_gateway_yaml(host_vars)))

    assert config.site == host_vars["evc_site"]
    assert config.gateway_id == host_vars["evc_gateway_id"]
    assert str(config.outbox.path).startswith("/var/lib/evc/")


def test_playbook_installs_the_repository_unit_and_renders_the_fog_template() -> None:
    tasks = yaml.safe_load((ROLE / "tasks" / "main.yml").read_text())
    sources = [task.get("ansible.builtin.copy", {}).get("src", "") for task in tasks]
    render = next(task for task in tasks if "ansible.builtin.command" in task)

    assert any(src.endswith("/gateways/evc-gateway.service") for src in sources)
    assert "render_config" in render["ansible.builtin.command"]["argv"][2]
    assert render["vars"]["evc_broker_values"]["tier"] == "fog"
    assert (ROOT / "gateways" / "evc-gateway.service").is_file()
