"""``evc model train``: one turn of the learning loop from the cloud store's hard examples.

Labels the site's samples, fine-tunes the base version, scores the candidate on held-out frames
and publishes it (signed) only if it passes the gate. Exit 0 when published, 1 when the gate
refused it (the report says why).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from evc.cli.common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, Groups, command, print_result
from evc.config import CloudConfig, load_config


def add_commands(model: Groups) -> None:
    """Add ``train`` to the ``evc model`` group."""
    train = command(
        model, "train", "Fine-tune a model on the hard examples in the cloud store; publish it "
        "if it passes the held-out gate.", _train,
    )
    train.add_argument("--config", "-c", required=True, help="The cloud worker's YAML config.")
    train.add_argument("--site", help="Only this site's samples (default: every site).")
    train.add_argument("--name", required=True, help="Model name in the registry.")
    train.add_argument("--base-version", required=True, help="The version to fine-tune.")
    train.add_argument("--version", required=True, help="Version of the new model.")
    train.add_argument("--key", type=Path, required=True, help="Private key file (.key).")
    train.add_argument(
        "--labeller", choices=("synthetic-truth", "predictions"), default="synthetic-truth",
        help="synthetic-truth: the synthetic scene's ground truth (simulated cameras only); "
        "predictions: the devices' own predictions (default synthetic-truth).",
    )
    train.add_argument(
        "--budget", type=float, default=90.0, metavar="SECONDS",
        help="Training time budget (default 90).",
    )
    train.add_argument(
        "--work", type=Path, default=Path("var/training"), help="Folder for the candidate."
    )
    train.add_argument("--json", action="store_true", help="Print JSON for scripts.")


def _train(args: argparse.Namespace) -> int:
    from evc.cloud.labelling import LABELLERS
    from evc.cloud.learning import retrain_and_publish
    from evc.cloud.registry import ModelRegistry
    from evc.cloud.store import SqliteRecordStore
    from evc.models.signing import SigningKey

    config = load_config(args.config, CloudConfig)
    if config.models.registry is None:
        print(f"evc: {args.config} sets no models.registry", file=sys.stderr, flush=True)
        return EXIT_USAGE
    store = SqliteRecordStore(config.store.path)
    try:
        result = retrain_and_publish(
            store=store, registry=ModelRegistry(config.models.registry),
            key=SigningKey.load(args.key), name=args.name, base_version=args.base_version,
            version=args.version, labeller=LABELLERS[args.labeller](), budget_s=args.budget,
            work=args.work, site=args.site,
        )
    finally:
        store.close()
    print_result(result.summary(), as_json=args.json)
    return EXIT_OK if result.published else EXIT_FAILURE
