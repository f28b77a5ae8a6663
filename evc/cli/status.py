"""``evc status``: the fleet (sites -> gateways -> devices) from the cloud record store."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from evc.cli.common import EXIT_OK, Groups, command

if TYPE_CHECKING:
    from evc.cloud.fleet import DeviceStatus, FleetStatus, GatewayStatus

_COLUMNS = (
    "SITE", "GATEWAY", "DEVICE", "STATE", "LAST SEEN", "MODEL", "MODEL STATE", "GROUP",
    "P50 MS", "FPS", "BUFFERED",
)


def add_commands(groups: Groups) -> None:
    """Add ``evc status``."""
    status = command(
        groups, "status", "Show sites, gateways and devices: online state, model, latency.",
        _status,
    )
    status.add_argument("--config", "-c", type=Path, required=True, help="Cloud YAML config file.")
    status.add_argument("--site", help="Only this site.")
    status.add_argument(
        "--stale-after", type=float, default=None, metavar="SECONDS",
        help="A device silent for longer is shown as stale (default 60).",
    )
    status.add_argument("--json", action="store_true", help="Print JSON for scripts.")


def _status(args: argparse.Namespace) -> int:
    from evc.cloud import SqliteRecordStore
    from evc.cloud.fleet import DEFAULT_STALE_AFTER_S, fleet_status
    from evc.config import CloudConfig, load_config
    from evc.errors import EvcError

    config = load_config(args.config, CloudConfig)
    if not config.store.path.exists():
        raise EvcError(f"no record store at {config.store.path}")
    stale = DEFAULT_STALE_AFTER_S if args.stale_after is None else args.stale_after
    store = SqliteRecordStore(config.store.path)
    try:
        fleet = fleet_status(store, site=args.site, stale_after_s=stale)
    finally:
        store.close()
    if args.json:
        print(json.dumps(fleet.to_dict(), indent=2, sort_keys=True), flush=True)
    else:
        print(render(fleet), flush=True)
    return EXIT_OK


def render(fleet: FleetStatus) -> str:
    """The fleet as an aligned text table, one line per device, then a line per gateway."""
    rows = [
        _device_row(site.site, gateway, device)
        for site in fleet.sites for gateway in site.gateways for device in gateway.devices
    ]
    if not rows:
        return "no devices heard from yet"
    widths = [max(len(row[i]) for row in [_COLUMNS, *rows]) for i in range(len(_COLUMNS))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in [_COLUMNS, *rows]]
    lines.append("")
    lines.extend(
        _gateway_line(site.site, gateway) for site in fleet.sites for gateway in site.gateways
    )
    return "\n".join(lines)


def _device_row(site: str, gateway: GatewayStatus, device: DeviceStatus) -> tuple[str, ...]:
    return (
        site, gateway.gateway, device.device, device.state, _age(device.last_seen_age_s),
        device.model or "-", device.model_state or "-", device.group or "-",
        _number(device.inference_ms_p50), _number(device.fps),
        "-" if device.buffered is None else str(device.buffered),
    )


def _gateway_line(site: str, gateway: GatewayStatus) -> str:
    batch = "never" if gateway.last_batch_age_s is None else _age(gateway.last_batch_age_s)
    outbox = "not reported yet" if gateway.outbox_records is None else (
        f"{gateway.outbox_records} records, oldest {_age(gateway.backlog_age_s or 0.0)}"
    )
    return (
        f"{site}/{gateway.gateway}: {gateway.online_devices}/{len(gateway.devices)} devices "
        f"online, last records stored {batch}, outbox {outbox}"
    )


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"
