"""``evc model``: signing keys and the cloud model registry.

``keygen`` writes an Ed25519 key pair, ``publish`` signs a model into a registry, ``list`` shows
what a registry holds. Errors of the library (an existing key, a version already published, a
file that is not a model) propagate as :class:`~evc.errors.EvcError` and ``evc`` exits with 1.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evc.cli import learning, rollout
from evc.cli.common import EXIT_OK, Groups, command, group, print_result
from evc.models.manifest import DEFAULT_CHUNK_BYTES

if TYPE_CHECKING:
    from evc.models.signing import SignedManifest

_DIGEST_PREFIX = 12
_LIST_COLUMNS = ("name", "version", "size", "sha256", "created", "key_id")


def add_commands(groups: Groups) -> None:
    """Add ``evc model keygen|publish|list|deploy|rollout|status``."""
    model = group(groups, "model", "Sign models and manage the cloud model registry.")
    keygen = command(model, "keygen", "Write a new Ed25519 signing key pair.", _keygen)
    keygen.add_argument("--out", type=Path, required=True, help="Directory for the key files.")
    keygen.add_argument(
        "--name", default="evc-model", help="Key file name, without suffix (default evc-model)."
    )
    keygen.add_argument("--json", action="store_true", help="Print JSON for scripts.")

    publish = command(model, "publish", "Sign a model and store it in a registry.", _publish)
    _registry_option(publish)
    publish.add_argument("--key", type=Path, required=True, help="Private key file (.key).")
    publish.add_argument("--name", required=True, help="Model name, e.g. shapes.")
    publish.add_argument("--version", required=True, help="Model version, e.g. 2.")
    publish.add_argument("--file", type=Path, required=True, help="The ONNX model file.")
    publish.add_argument(
        "--chunk-size", type=_positive_int, default=DEFAULT_CHUNK_BYTES, metavar="BYTES",
        help=f"Bytes per transfer chunk (default {DEFAULT_CHUNK_BYTES}).",
    )
    publish.add_argument("--json", action="store_true", help="Print JSON for scripts.")

    listing = command(model, "list", "List the models a registry holds.", _list)
    _registry_option(listing)
    listing.add_argument("--name", help="Only versions of this model.")
    listing.add_argument("--json", action="store_true", help="Print a JSON list for scripts.")
    rollout.add_commands(model)
    learning.add_commands(model)


def _registry_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", type=Path, required=True, help="Registry directory.")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from exc
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


# -- handlers ----------------------------------------------------------------------------------


def _keygen(args: argparse.Namespace) -> int:
    from evc.models.signing import generate_keypair  # keeps `evc --help` fast

    pair = generate_keypair(args.out, name=args.name)
    print_result(
        {
            "key_id": pair.key_id,
            "private_key": str(pair.private_path),
            "public_key": str(pair.public_path),
        },
        as_json=args.json,
    )
    return EXIT_OK


def _publish(args: argparse.Namespace) -> int:
    # Lazy: the registry loads ONNX Runtime to read the model.
    from evc.cloud.registry import ModelRegistry
    from evc.models.signing import SigningKey

    key = SigningKey.load(args.key)
    signed = ModelRegistry(args.registry).publish(
        name=args.name, version=args.version, artifact=args.file, key=key,
        chunk_size=args.chunk_size,
    )
    manifest = signed.manifest
    print_result(
        {
            "name": manifest.name,
            "version": manifest.version,
            "sha256": manifest.sha256,
            "size": manifest.size,
            "chunks": manifest.chunk_count,
            "key_id": signed.key_id,
        },
        as_json=args.json,
    )
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    from evc.cloud.registry import ModelRegistry, RegistryError

    # A mistyped path would otherwise look like an empty registry.
    if not args.registry.is_dir():
        raise RegistryError(f"no registry at {args.registry}", reason="missing")
    rows = [_row(signed) for signed in ModelRegistry(args.registry).versions(args.name)]
    if args.json:
        print(json.dumps(rows, indent=2), flush=True)
    elif not rows:
        print("no models", flush=True)
    else:
        _print_table(rows)
    return EXIT_OK


def _row(signed: SignedManifest) -> dict[str, Any]:
    manifest = signed.manifest
    created = datetime.fromtimestamp(manifest.created_ms / 1000, tz=UTC)
    return {
        "name": manifest.name,
        "version": manifest.version,
        "size": manifest.size,
        "sha256": manifest.sha256,
        "created": created.isoformat(timespec="seconds"),
        "key_id": signed.key_id,
    }


def _print_table(rows: list[dict[str, Any]]) -> None:
    header = [column.replace("_", " ") for column in _LIST_COLUMNS]
    cells = [[_cell(row, column) for column in _LIST_COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in [header, *cells]) for i in range(len(header))]
    for line in [header, *cells]:
        padded = (text.ljust(width) for text, width in zip(line, widths, strict=True))
        print("  ".join(padded).rstrip(), flush=True)


def _cell(row: dict[str, Any], column: str) -> str:
    text = str(row[column])
    # A prefix tells versions apart at a glance; --json prints the whole digest.
    return text[:_DIGEST_PREFIX] if column == "sha256" else text
