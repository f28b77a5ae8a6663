"""``evc dataset``: the cloud's hard examples, counted or exported for labelling and training.

``evc dataset stats`` counts the SAMPLE records of a store by site, device, reason and model
version, and how many a labeller can label; ``evc dataset export`` labels them and writes COCO
or YOLO with PNG images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from evc.cli.common import EXIT_FAILURE, EXIT_OK, Groups, command, group, print_result
from evc.synthetic import CLASS_NAMES

if TYPE_CHECKING:
    from evc.cloud.dataset import Dataset

LABELLER_NAMES = ("synthetic-truth", "predictions")


def add_commands(groups: Groups) -> None:
    """Add ``evc dataset export`` and ``evc dataset stats``."""
    dataset = group(groups, "dataset", "Count and export the hard examples devices uploaded.")
    export = command(
        dataset, "export", "Label the store's samples and export them as COCO or YOLO.", _export
    )
    _common_options(export)
    export.add_argument("--out", type=Path, required=True, help="Directory to write into.")
    export.add_argument(
        "--format", choices=("coco", "yolo"), required=True, help="Export layout."
    )
    stats = command(dataset, "stats", "Count the store's samples.", _stats)
    _common_options(stats)


def _common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--store", type=Path, required=True, help="The cloud's SQLite store.")
    parser.add_argument("--site", help="Only this site's samples (default: every site).")
    parser.add_argument(
        "--labeller", choices=LABELLER_NAMES, default="synthetic-truth",
        help="Where labels come from: the synthetic scene's ground truth carried in the "
        "sample, or the device's own predictions (pseudo-labels).",
    )
    parser.add_argument(
        "--min-score", type=float, default=0.5,
        help="Lowest prediction score the predictions labeller keeps.",
    )
    parser.add_argument(
        "--classes", default=",".join(CLASS_NAMES),
        help="Class names in class-id order, comma-separated.",
    )
    parser.add_argument("--json", action="store_true", help="Print JSON for scripts.")


def _load(args: argparse.Namespace) -> Dataset | None:
    """The store's samples labelled by the chosen labeller, or None (said on stderr) if there
    is no store."""
    # Imported here so that `evc --help` does not load numpy and the store.
    from evc.cloud.dataset import Dataset
    from evc.cloud.labelling import PredictionLabeller, SyntheticTruthLabeller
    from evc.cloud.store import SqliteRecordStore

    if not args.store.is_file():
        # Opening a missing path would create an empty store and report nothing.
        print(f"evc: no store at {args.store}", file=sys.stderr)
        return None
    store = SqliteRecordStore(args.store)
    try:
        dataset = Dataset.from_store(store, site=args.site)
    finally:
        store.close()
    if args.labeller == "predictions":
        return dataset.label(PredictionLabeller(min_score=args.min_score))
    return dataset.label(SyntheticTruthLabeller())


def _stats(args: argparse.Namespace) -> int:
    dataset = _load(args)
    if dataset is None:
        return EXIT_FAILURE
    stats = dataset.stats()
    print_result(
        {
            "samples": stats.items,
            "labelled": stats.labelled,
            "unlabelled": stats.items - stats.labelled,
            "labeller": args.labeller,
            "whole_frames": stats.whole_frames,
            "undecodable": dataset.skipped,
            "by_site": stats.by_site,
            "by_device": stats.by_device,
            "by_reason": stats.by_reason,
            "by_model": stats.by_model,
        },
        as_json=args.json,
    )
    return EXIT_OK


def _export(args: argparse.Namespace) -> int:
    from evc.cloud.export import export  # lazy, see _load

    dataset = _load(args)
    if dataset is None:
        return EXIT_FAILURE
    names = [name.strip() for name in args.classes.split(",") if name.strip()]
    result = export(dataset, args.out, format=args.format, class_names=names)
    print_result(
        {
            "format": result.format,
            "directory": str(result.directory),
            "images": result.images,
            "annotations": result.annotations,
            "skipped_unlabelled": result.skipped_unlabelled,
            "labeller": args.labeller,
        },
        as_json=args.json,
    )
    return EXIT_OK
