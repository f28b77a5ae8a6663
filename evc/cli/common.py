"""What every ``evc`` subcommand module shares: exit codes, parser helpers, output.

A subcommand module (``evc/cli/model.py``, ...) exposes ``add_commands(groups)`` that adds its
command group with :func:`group` and :func:`command`; ``evc/cli/main.py`` calls it. Handlers
import their subsystem lazily so that ``evc --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any, TypeAlias

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
Handler = Callable[[argparse.Namespace], int]
Groups: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def group(groups: Groups, name: str, help_text: str) -> Groups:
    """Add a command group ``evc NAME ...`` and return where its commands go."""
    parser: argparse.ArgumentParser = groups.add_parser(
        name, help=help_text, description=help_text
    )
    commands: Groups = parser.add_subparsers(title="commands", metavar="COMMAND")
    return commands


def command(groups: Groups, name: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
    """Add one command that runs ``handler(args)`` and exits with what it returns."""
    parser: argparse.ArgumentParser = groups.add_parser(
        name, help=help_text, description=help_text
    )
    parser.set_defaults(handler=handler)
    return parser


def print_result(data: dict[str, Any], *, as_json: bool, indent: str = "") -> None:
    """Print ``data`` as indented ``key: value`` lines, or as JSON for scripts."""
    if as_json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str), flush=True)
        return
    for key, value in data.items():
        if isinstance(value, dict):
            print(f"{indent}{key}:" + ("" if value else " none"), flush=True)
            print_result(value, as_json=False, indent=indent + "  ")
        else:
            print(f"{indent}{key}: {value}", flush=True)
