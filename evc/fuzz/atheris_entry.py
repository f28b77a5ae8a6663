"""Coverage-guided fuzzing with atheris (optional), and the generated corpus it starts from."""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path

from evc.fuzz.contract import TARGETS, check
from evc.fuzz.inputs import Inputs
from evc.fuzz.targets import fuzz_targets


def write_corpus(directory: Path, *, seed: int = 0, per_target: int = 64) -> int:
    """Write generated inputs as files for libFuzzer (the first byte picks the target)."""
    directory.mkdir(parents=True, exist_ok=True)
    made = Inputs(seed)
    count = 0
    for number, name in enumerate(TARGETS):
        for i in range(per_target):
            data = bytes([number]) + made.make(name)
            (directory / f"{name}-{i:04d}").write_bytes(data)
            count += 1
    return count


def run_atheris(libfuzzer_args: list[str]) -> int:
    """Coverage-guided fuzzing of every target with atheris (an optional dependency)."""
    try:
        atheris = importlib.import_module("atheris")
    except ImportError:
        print("atheris is not installed: pip install atheris", file=sys.stderr)
        return 2
    stack = fuzz_targets()
    live = stack.__enter__()

    def one(data: bytes) -> None:
        if data:
            name = TARGETS[data[0] % len(TARGETS)]
            check(live[name], name, data[1:])

    logging.disable(logging.CRITICAL)
    atheris.instrument_all()
    atheris.Setup([sys.argv[0], *libfuzzer_args], one)
    atheris.Fuzz()
    return 0
