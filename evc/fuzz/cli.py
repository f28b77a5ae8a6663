"""``python -m evc.fuzz``: the seeded long run, a corpus for libFuzzer, or an atheris run."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

from evc.fuzz.atheris_entry import run_atheris, write_corpus
from evc.fuzz.contract import TARGETS
from evc.fuzz.driver import run

# What `--help` says the command is; the package docstring opens with the same line.
DESCRIPTION = "Fuzz targets for every decoder and ingress of EVC, and a seeded long-run driver."


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m evc.fuzz``: exit 0 with no crash, 1 with one, 2 on a usage error."""
    parser = argparse.ArgumentParser(prog="python -m evc.fuzz", description=DESCRIPTION)
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs over all targets")
    parser.add_argument("--seed", type=int, default=0, help="seed of the input generator")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated targets")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--write-corpus", type=Path, metavar="DIR",
                        help="write generated seed inputs for --atheris to DIR and exit")
    parser.add_argument("--atheris", action="store_true",
                        help="coverage-guided run with atheris; later arguments go to libFuzzer")
    args, rest = parser.parse_known_args(argv)
    if args.atheris:
        return run_atheris(rest)
    if rest:
        parser.error(f"unknown arguments: {rest}")
    if args.write_corpus:
        print(f"wrote {write_corpus(args.write_corpus, seed=args.seed)} inputs")
        return 0
    names = [n for n in args.targets.split(",") if n]
    unknown = sorted(set(names) - set(TARGETS))
    if unknown or args.inputs < 0:
        parser.error(f"unknown targets {unknown}; choose from {', '.join(TARGETS)}")
    report = run(inputs=args.inputs, seed=args.seed, targets=names)
    print(json.dumps(report.to_json(), indent=2) if args.json else report.summary())
    return 1 if report.crash_count else 0
