"""The committed JSON Schemas match the config models, and every example config passes them."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from evc.config_schema import SUFFIX, render, schemas, write_schemas

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DIR = ROOT / "configs" / "schema"
CONFIGS = sorted([*ROOT.glob("configs/*.yaml"), *ROOT.glob("configs/*.yml")])
REGENERATE = "regenerate them with: python -m evc.config_schema configs/schema"


def _role(path: Path) -> str:
    roles = [role for role in schemas() if path.name.startswith(role)]
    assert roles, f"{path.name} must start with one of {sorted(schemas())}"
    return roles[0]


def test_every_role_has_a_committed_schema() -> None:
    committed = {path.name.removesuffix(SUFFIX) for path in SCHEMA_DIR.glob(f"*{SUFFIX}")}

    assert committed == set(schemas()), REGENERATE


@pytest.mark.parametrize("role", sorted(schemas()))
def test_committed_schema_equals_the_generated_one(role: str) -> None:
    committed = (SCHEMA_DIR / f"{role}{SUFFIX}").read_text(encoding="utf-8")

    stale = f"configs/schema/{role}{SUFFIX} is stale; {REGENERATE}"
    assert committed == render(schemas()[role]), stale


@pytest.mark.parametrize("role", sorted(schemas()))
def test_schema_is_a_valid_draft_2020_12_schema(role: str) -> None:
    jsonschema.Draft202012Validator.check_schema(schemas()[role])


def test_write_schemas_writes_one_file_per_role(tmp_path: Path) -> None:
    written = write_schemas(tmp_path / "out")

    assert [path.name for path in written] == [f"{role}{SUFFIX}" for role in schemas()]
    assert json.loads(written[0].read_text())["$schema"].endswith("2020-12/schema")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_validates_against_its_schema(path: Path) -> None:
    schema = json.loads((SCHEMA_DIR / f"{_role(path)}{SUFFIX}").read_text(encoding="utf-8"))

    jsonschema.Draft202012Validator(schema).validate(yaml.safe_load(path.read_text()))


def test_schema_rejects_an_unknown_key() -> None:
    validator = jsonschema.Draft202012Validator(schemas()["cloud"])

    errors = list(validator.iter_errors({"ingest": {"max_bach": 5}}))

    assert [list(error.absolute_path) for error in errors] == [["ingest"]]
    assert "max_bach" in errors[0].message
