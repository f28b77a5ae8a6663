"""Fuzz targets for every decoder and ingress of EVC, and a seeded long-run driver.

Run ``python -m evc.fuzz --inputs 1000000 [--seed N] [--json]``; ``docs/FUZZING.md`` says what
each target covers, how inputs are made and what the last long run measured.

The package, one concept a module:

- :mod:`~evc.fuzz.contract`: what a target is, what counts as a crash, the shared setting;
- :mod:`~evc.fuzz.targets`: the decoder and command targets, and :func:`fuzz_targets`;
- :mod:`~evc.fuzz.ingress`: the gateway and cloud ingress targets, which keep state;
- :mod:`~evc.fuzz.seeds`: valid messages made by the encoders;
- :mod:`~evc.fuzz.mutate`: byte, msgpack, zstd and JSON-tree mutators;
- :mod:`~evc.fuzz.inputs`: one input generator per target, all from one seed;
- :mod:`~evc.fuzz.report` and :mod:`~evc.fuzz.driver`: the run loop and what it counts;
- :mod:`~evc.fuzz.atheris_entry`: the optional coverage-guided entry and its corpus;
- :mod:`~evc.fuzz.cli`: ``python -m evc.fuzz``.
"""

from evc.fuzz.atheris_entry import run_atheris, write_corpus
from evc.fuzz.cli import main
from evc.fuzz.contract import (
    DEVICES,
    KNOWN_REASONS,
    MAX_BATCH_BYTES,
    MAX_RECORD_BYTES,
    PIPELINE,
    SITE,
    TARGETS,
    InvariantError,
    Target,
    check,
    fuzz_signing_key,
    pack_message,
    unpack_message,
)
from evc.fuzz.driver import run
from evc.fuzz.ingress import AdmitTarget, CloudIngestTarget
from evc.fuzz.inputs import Inputs
from evc.fuzz.mutate import Bombs, Mutator, replace_at, tree_paths
from evc.fuzz.report import Crash, Report, TargetStats
from evc.fuzz.seeds import (
    batch_seeds,
    chunk_request_seeds,
    chunk_seeds,
    device_command_seeds,
    gateway_command_seeds,
    manifest_for,
    manifest_seeds,
    record_seeds,
)
from evc.fuzz.targets import (
    DeviceCommandTarget,
    ManifestTarget,
    batch_target,
    chunk_request_target,
    chunk_target,
    fuzz_targets,
    gateway_command_target,
    record_target,
)

__all__ = [
    "DEVICES",
    "KNOWN_REASONS",
    "MAX_BATCH_BYTES",
    "MAX_RECORD_BYTES",
    "PIPELINE",
    "SITE",
    "TARGETS",
    "AdmitTarget",
    "Bombs",
    "CloudIngestTarget",
    "Crash",
    "DeviceCommandTarget",
    "Inputs",
    "InvariantError",
    "ManifestTarget",
    "Mutator",
    "Report",
    "Target",
    "TargetStats",
    "batch_seeds",
    "batch_target",
    "check",
    "chunk_request_seeds",
    "chunk_request_target",
    "chunk_seeds",
    "chunk_target",
    "device_command_seeds",
    "fuzz_signing_key",
    "fuzz_targets",
    "gateway_command_seeds",
    "gateway_command_target",
    "main",
    "manifest_for",
    "manifest_seeds",
    "pack_message",
    "record_seeds",
    "record_target",
    "replace_at",
    "run",
    "run_atheris",
    "tree_paths",
    "unpack_message",
    "write_corpus",
]
