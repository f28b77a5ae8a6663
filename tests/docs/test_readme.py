"""The README documents every CLI command, and starts with the two set-up commands."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from evc.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
SETUP_COMMANDS = {"make demo", "make test"}
SHELL_FENCES = {"", "sh", "bash", "shell", "console", "zsh", "shell-session"}
EXECUTABLES = {
    "make", "evc", "python", "python3", "pip", "pip3", "pytest", "ruff", "mypy", "docker",
    "mosquitto", "mosquitto_pub", "mosquitto_sub", "git", "uv", "sudo", "apt-get", "brew",
    "curl", "systemctl",
}


def _commands(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], str | None, argparse.ArgumentParser]]:
    """Every command of the tree as (words, help text, parser); groups and leaves alike."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, sub in action.choices.items():
            yield (*prefix, name), helps.get(name), sub
            yield from _commands(sub, (*prefix, name))


def _is_group(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


COMMANDS = list(_commands(build_parser()))
LEAVES = [(words, sub) for words, _, sub in COMMANDS if not _is_group(sub)]


def _readme() -> str:
    assert README.exists(), "README.md is missing"
    return README.read_text()


def _as_command(text: str) -> str | None:
    """``text`` normalised if it is a shell command line, None if it is not one."""
    line = text.split(" #", 1)[0].strip().removeprefix("$ ").strip()
    words = line.split()
    # One word is a name (`evc`, `make`), not a command someone is told to run.
    if len(words) < 2:
        return None
    if words[0] in EXECUTABLES or words[0].startswith((".venv/", "./")):
        return " ".join(words)
    return None


def readme_commands(text: str) -> list[str]:
    """Shell commands of a Markdown text in order: lines of shell fences, inline code spans."""
    found: list[str] = []
    fence: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else stripped[3:].strip().lower()
            continue
        if fence is not None:
            candidates = [line] if fence in SHELL_FENCES else []
        else:
            candidates = re.findall(r"(?<!`)`([^`]+)`(?!`)", line)
        found.extend(c for c in map(_as_command, candidates) if c)
    return found


def test_parser_walk_finds_the_commands() -> None:
    words = {" ".join(words) for words, _ in LEAVES}

    assert {"gateway run", "cloud run", "device simulate", "demo"} <= words


@pytest.mark.parametrize(
    ("words", "help_text"),
    [pytest.param(words, help_text, id=" ".join(words)) for words, help_text, _ in COMMANDS],
)
def test_every_command_and_group_has_help_text(words: tuple[str, ...], help_text: str) -> None:
    assert help_text, f"evc {' '.join(words)} has no help text"
    assert help_text.strip(), f"evc {' '.join(words)} has blank help text"


@pytest.mark.parametrize(
    ("words", "sub"), [pytest.param(words, sub, id=" ".join(words)) for words, sub in LEAVES]
)
def test_every_option_has_help_text(words: tuple[str, ...], sub: argparse.ArgumentParser) -> None:
    missing = [
        action.option_strings[0]
        for action in sub._actions
        if action.option_strings and not (action.help and action.help.strip())
    ]

    assert not missing, f"evc {' '.join(words)}: options without help: {missing}"


@pytest.mark.parametrize(
    "words", [words for words, _ in LEAVES], ids=" ".join
)
def test_every_command_appears_in_the_readme(words: tuple[str, ...]) -> None:
    command = "evc " + " ".join(words)

    assert re.search(rf"(?<![\w-]){re.escape(command)}(?![\w-])", _readme()), (
        f"`{command}` is not documented in README.md"
    )


def test_readme_starts_with_the_two_set_up_commands() -> None:
    commands = readme_commands(_readme())

    assert set(commands[:2]) == SETUP_COMMANDS, (
        f"the first commands in README.md must be `make demo` and `make test`, got {commands[:3]}"
    )


def test_command_finder_reads_fences_and_inline_code() -> None:
    text = (
        "Run `evc` like this:\n\n```sh\n$ make demo   # all of it\nmake test\n```\n"
        "```python\nevc = 1\n```\nthen `evc gateway run --config x.yaml`.\n"
    )

    assert readme_commands(text) == ["make demo", "make test", "evc gateway run --config x.yaml"]
