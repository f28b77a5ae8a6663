"""``evc model deploy|rollout|abort|status``: what a site's devices should run, and what they run.

Each command reads the cloud worker's config (``--config cloud.yaml``) for the cloud broker, the
record store (device heartbeats) and the model registry; rollouts are advanced by the running
cloud worker (``models.rollouts: true``), these commands only start them and show them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from evc.cli.common import EXIT_OK, EXIT_USAGE, Groups, command, print_result
from evc.config import CloudConfig, load_config

if TYPE_CHECKING:  # imported by the handlers only: `evc --help` stays fast
    from evc.cloud.rollout import RolloutController


def add_commands(model: Groups) -> None:
    """Add ``deploy``, ``rollout`` and ``status`` to the ``evc model`` group."""
    deploy = command(
        model, "deploy", "Make a version the site's desired model at once (no stages).", _deploy
    )
    _target_options(deploy)
    rollout = command(
        model, "rollout", "Roll a version out to a site: canary group first, then all.",
        _rollout,
    )
    _target_options(rollout)
    rollout.add_argument(
        "--canary-group", required=True, help="Devices of this group (models.group) go first."
    )
    rollout.add_argument(
        "--promote-after", type=float, default=60.0, metavar="SECONDS",
        help="Promote once every canary ran the version healthily this long (default 60).",
    )
    abort = command(
        model, "abort", "Halt an active rollout: the site's default model is desired again.",
        _abort,
    )
    abort.add_argument("--config", "-c", required=True, help="The cloud worker's YAML config.")
    abort.add_argument("--id", type=int, required=True, dest="rollout_id", help="Rollout id.")
    abort.add_argument("--json", action="store_true", help="Print JSON for scripts.")
    status = command(
        model, "status", "Show rollouts, desired models and what each device runs.", _status
    )
    status.add_argument("--config", "-c", required=True, help="The cloud worker's YAML config.")
    status.add_argument("--site", help="Only this site.")
    status.add_argument("--json", action="store_true", help="Print JSON for scripts.")


def _target_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", required=True, help="The cloud worker's YAML config.")
    parser.add_argument("--site", required=True, help="The site.")
    parser.add_argument("--name", required=True, help="Model name in the registry.")
    parser.add_argument("--version", required=True, help="Model version in the registry.")
    parser.add_argument("--json", action="store_true", help="Print JSON for scripts.")


@contextmanager
def _controller(args: argparse.Namespace) -> Iterator[RolloutController | None]:
    from evc.cloud.models import RetainedPublisher, StoreReports
    from evc.cloud.registry import ModelRegistry
    from evc.cloud.rollout import RolloutController
    from evc.cloud.store import SqliteRecordStore

    config = load_config(args.config, CloudConfig)
    if config.models.registry is None:
        yield None
        return
    registry = ModelRegistry(config.models.registry)
    publisher = RetainedPublisher(address=config.cloud.address)
    store = SqliteRecordStore(config.store.path)
    controller = RolloutController(
        path=registry.root / "rollouts.db", registry=registry, publish=publisher,
        reports=StoreReports(store, window_s=config.models.report_window_s),
    )
    try:
        yield controller
    finally:
        controller.close()
        store.close()
        publisher.close()


def _no_registry(args: argparse.Namespace) -> int:
    print(f"evc: {args.config} sets no models.registry", file=sys.stderr, flush=True)
    return EXIT_USAGE


def _deploy(args: argparse.Namespace) -> int:
    with _controller(args) as controller:
        if controller is None:
            return _no_registry(args)
        signed = controller.set_default(site=args.site, name=args.name, version=args.version)
    print_result(
        {"site": args.site, "group": "all", "model": signed.manifest.label,
         "sha256": signed.manifest.sha256},
        as_json=args.json,
    )
    return EXIT_OK


def _rollout(args: argparse.Namespace) -> int:
    with _controller(args) as controller:
        if controller is None:
            return _no_registry(args)
        rollout = controller.start(
            site=args.site, name=args.name, version=args.version,
            canary_group=args.canary_group, promote_after_s=args.promote_after,
        )
    print_result(_rollout_row(asdict(rollout)), as_json=args.json)
    return EXIT_OK


def _abort(args: argparse.Namespace) -> int:
    with _controller(args) as controller:
        if controller is None:
            return _no_registry(args)
        rollout = controller.abort(args.rollout_id)
    print_result(_rollout_row(asdict(rollout)), as_json=args.json)
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    with _controller(args) as controller:
        if controller is None:
            return _no_registry(args)
        rollouts = controller.rollouts(args.site)
        sites = sorted({r.site for r in rollouts} | ({args.site} if args.site else set()))
        data: dict[str, Any] = {
            site: {
                "desired": {
                    group: signed.manifest.label
                    for group, signed in sorted(controller.desired(site).items())
                },
                "rollouts": {
                    str(r.id): _rollout_row(asdict(r)) for r in rollouts if r.site == site
                },
                "devices": {
                    report.device: {
                        "group": report.group, "model": report.model, "state": report.state,
                        "failed": report.failed, "failure": report.failure,
                    }
                    for report in controller.reports(site)
                },
            }
            for site in sites
        }
    print_result(data, as_json=args.json)
    return EXIT_OK


def _rollout_row(row: dict[str, Any]) -> dict[str, Any]:
    row.pop("previous", None)  # a whole signed manifest: noise in a status view
    row["stage"] = str(row["stage"])
    return row
