"""The Dockerfile's structure, checked statically; a real build only where a Docker daemon runs."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """Return (INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def test_every_stage_is_named_and_the_build_is_multi_stage() -> None:
    froms = [args.split() for name, args in _instructions() if name == "FROM"]

    assert len(froms) >= 2
    assert all(len(words) == 3 and words[1].upper() == "AS" for words in froms), froms


def test_runtime_copies_only_from_the_builder_by_name() -> None:
    names = {args.split()[2] for name, args in _instructions() if name == "FROM"}
    runtime = _stages()[-1]
    sources = [
        word.split("=", 1)[1]
        for name, args in runtime
        if name in {"COPY", "RUN"}
        for word in args.replace(",", " ").split()
        if word.startswith(("--from=", "from="))
    ]

    assert sources, "the runtime stage must take the wheels from the builder stage"
    assert set(sources) <= names


def test_runtime_installs_the_wheel_not_the_source_tree() -> None:
    runtime_runs = " ".join(args for name, args in _stages()[-1] if name == "RUN")
    builder_runs = " ".join(args for name, args in _stages()[0] if name == "RUN")

    assert "pip wheel" in builder_runs
    assert "--no-index" in runtime_runs
    assert "COPY evc " not in " ".join(f"{n} {a}" for n, a in _stages()[-1])


def test_runs_as_a_non_root_user_before_the_entrypoint() -> None:
    runtime = _stages()[-1]
    names = [name for name, _ in runtime]
    users = [args.split(":")[0] for name, args in runtime if name == "USER"]

    assert users, "the runtime stage must switch to an unprivileged user"
    assert users[-1] not in {"root", "0"}
    assert names.index("USER") < names.index("ENTRYPOINT")


def test_entrypoint_is_the_evc_command_in_exec_form() -> None:
    entrypoint = [args for name, args in _stages()[-1] if name == "ENTRYPOINT"]

    assert entrypoint == ['["evc"]']


def test_data_lives_in_var_lib_evc() -> None:
    runtime = _stages()[-1]

    assert ("VOLUME", '["/var/lib/evc"]') in runtime
    assert ("WORKDIR", "/var/lib/evc") in runtime


def test_no_add_and_no_remote_sources() -> None:
    for name, args in _instructions():
        assert name != "ADD", "use COPY: ADD fetches URLs and unpacks archives implicitly"
        assert "://" not in args or name in {"RUN", "ARG"}, f"{name} {args}"


def test_copied_paths_exist() -> None:
    for name, args in _instructions():
        if name != "COPY" or "--from" in args:
            continue
        *sources, _ = (word for word in shlex.split(args) if not word.startswith("--"))
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such path"


def test_healthcheck_runs_the_probe_the_image_ships() -> None:
    checks = [args for name, args in _stages()[-1] if name == "HEALTHCHECK"]
    copies = " ".join(args for name, args in _stages()[-1] if name == "COPY")

    assert len(checks) == 1
    assert "/usr/share/evc/healthcheck.py" in checks[0]
    assert "deploy/docker/healthcheck.py /usr/share/evc/healthcheck.py" in copies


def _docker_daemon() -> str | None:
    docker = shutil.which("docker")
    if docker is None:
        return "the docker client is not installed"
    info = subprocess.run([docker, "info"], capture_output=True, text=True, timeout=30, check=False)
    return None if info.returncode == 0 else "no Docker daemon answers `docker info`"


@pytest.mark.slow
def test_image_builds_and_runs_as_evc() -> None:
    reason = _docker_daemon()
    if reason is not None:
        pytest.skip(f"optional: building the image needs a Docker daemon ({reason})")
    tag = "evc:test-build"
    subprocess.run(["docker", "build", "-t", tag, str(ROOT)], check=True, timeout=1800)
    try:
        whoami = subprocess.run(
            ["docker", "run", "--rm", "--entrypoint", "id", tag, "-un"],
            capture_output=True, text=True, check=True, timeout=120,
        )
        version = subprocess.run(
            ["docker", "run", "--rm", tag, "--version"],
            capture_output=True, text=True, check=True, timeout=120,
        )
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False, timeout=120)
    assert whoami.stdout.strip() == "evc"
    assert version.stdout.startswith("evc ")
