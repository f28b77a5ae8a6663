"""``evc model keygen|publish|list`` over a real registry and the sample model."""

from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path

import pytest

from evc.cli.common import EXIT_OK
from evc.cli.model import add_commands
from evc.cloud.registry import ModelRegistry, RegistryError
from evc.models.signing import KeyFileError, TrustedKeys
from evc.synthetic.sample_model import sample_model_path


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    groups = parser.add_subparsers()
    add_commands(groups)
    args = parser.parse_args(list(argv))
    result: int = args.handler(args)
    return result


def keygen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    assert run("model", "keygen", "--out", str(tmp_path / "keys"), "--json") == EXIT_OK
    printed: dict[str, str] = json.loads(capsys.readouterr().out)
    return printed


def publish(tmp_path: Path, *extra: str) -> int:
    return run(
        "model", "publish", "--registry", str(tmp_path / "registry"),
        "--key", str(tmp_path / "keys" / "evc-model.key"), "--name", "shapes",
        "--file", str(sample_model_path()), *extra,
    )


def test_keygen_writes_a_key_pair_and_prints_its_id(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    printed = keygen(tmp_path, capsys)
    private, public = Path(printed["private_key"]), Path(printed["public_key"])
    assert (private, public) == (tmp_path / "keys/evc-model.key", tmp_path / "keys/evc-model.pub")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert TrustedKeys.load([public]).key_ids == {printed["key_id"]}

    assert run("model", "keygen", "--out", str(tmp_path), "--name", "ops") == EXIT_OK
    out = capsys.readouterr().out
    assert "key_id: " in out
    assert f"private_key: {tmp_path / 'ops.key'}" in out


def test_keygen_refuses_to_overwrite_a_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = keygen(tmp_path, capsys)
    before = Path(first["private_key"]).read_bytes()
    with pytest.raises(KeyFileError) as caught:  # evc's main() prints it and exits 1
        run("model", "keygen", "--out", str(tmp_path / "keys"))
    assert caught.value.reason == "exists"
    assert Path(first["private_key"]).read_bytes() == before


def test_publish_then_list(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_id = keygen(tmp_path, capsys)["key_id"]
    assert publish(tmp_path, "--version", "1", "--chunk-size", "100000", "--json") == EXIT_OK
    published = json.loads(capsys.readouterr().out)
    signed = ModelRegistry(tmp_path / "registry").get("shapes", "1")
    assert published == {
        "name": "shapes", "version": "1", "sha256": signed.manifest.sha256,
        "size": sample_model_path().stat().st_size, "chunks": 9, "key_id": key_id,
    }
    assert publish(tmp_path, "--version", "2") == EXIT_OK
    assert "chunks: 13" in capsys.readouterr().out  # 64 KiB by default

    assert run("model", "list", "--registry", str(tmp_path / "registry"), "--json") == EXIT_OK
    listed = json.loads(capsys.readouterr().out)
    assert [(row["name"], row["version"]) for row in listed] == [("shapes", "1"), ("shapes", "2")]
    assert listed[0]["sha256"] == signed.manifest.sha256
    assert {row["key_id"] for row in listed} == {key_id}

    assert run("model", "list", "--registry", str(tmp_path / "registry")) == EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "version", "size", "sha256", "created", "key", "id"]
    assert lines[1].split()[:4] == [
        "shapes", "1", str(sample_model_path().stat().st_size), signed.manifest.sha256[:12]
    ]
    assert lines[1].split()[-1] == key_id
    assert len(lines) == 3


def test_publishing_a_version_twice_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keygen(tmp_path, capsys)
    assert publish(tmp_path, "--version", "1") == EXIT_OK
    with pytest.raises(RegistryError) as caught:
        publish(tmp_path, "--version", "1")
    assert caught.value.reason == "exists"


def test_list_filters_by_name_and_says_when_empty(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keygen(tmp_path, capsys)
    assert publish(tmp_path, "--version", "1") == EXIT_OK
    capsys.readouterr()
    registry = str(tmp_path / "registry")
    assert run("model", "list", "--registry", registry, "--name", "people") == EXIT_OK
    assert capsys.readouterr().out == "no models\n"
    assert run("model", "list", "--registry", registry, "--name", "people", "--json") == EXIT_OK
    assert json.loads(capsys.readouterr().out) == []


def test_list_of_a_missing_registry_fails(tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as caught:
        run("model", "list", "--registry", str(tmp_path / "typo"))
    assert caught.value.reason == "missing"


@pytest.mark.parametrize("size", ["0", "-1", "lots"])
def test_a_bad_chunk_size_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], size: str
) -> None:
    with pytest.raises(SystemExit) as caught:
        publish(tmp_path, "--version", "1", "--chunk-size", size)
    assert caught.value.code == 2
    assert "--chunk-size" in capsys.readouterr().err
