"""Rollout inputs from the store: the latest heartbeat of each device that follows model
updates, minus the departed (dead or silent) and the gateways."""

from __future__ import annotations

import time
from pathlib import Path

from evc.cloud.models import StoreReports
from evc.cloud.store import IncomingRecord, SqliteRecordStore
from evc.wire import Kind, encode_map

SITE = "depot"


def _record(device: str, seq: int, kind: Kind, ts_ms: int, **fields: object) -> IncomingRecord:
    payload = encode_map(kind, origin=device, epoch=1, seq=seq, ts_ms=ts_ms, fields=fields)  # type: ignore[arg-type]
    return IncomingRecord(
        site=SITE, origin=device, epoch=1, seq=seq, kind=int(kind), ts_ms=ts_ms,
        stored_ms=ts_ms, gateway="gw-1", detections=0, payload=payload,
    )


def test_latest_heartbeat_per_device_and_dead_devices_left_out(tmp_path: Path) -> None:
    now = int(time.time() * 1000)
    store = SqliteRecordStore(tmp_path / "cloud.db")
    store.insert([
        _record("cam-1", 1, Kind.HEARTBEAT, now - 3000, model="1", group="canary"),
        _record("cam-1", 2, Kind.HEARTBEAT, now - 1000, model="2", model_sha256="ab",
                model_state="probation", group="canary"),
        _record("cam-2", 1, Kind.HEARTBEAT, now - 2000, model="1", model_sha256="cd"),
        _record("cam-2", 2, Kind.STATE, now - 1500, state="offline"),  # gone since
        _record("cam-3", 1, Kind.STATE, now - 5000, state="offline"),  # an older death...
        _record("cam-3", 2, Kind.STATE, now - 4000, state="online"),  # ... then back
        _record("cam-3", 3, Kind.HEARTBEAT, now - 500, model="1", model_sha256="cd",
                model_state="rolled_back", model_failed="2", model_failed_sha256="ab",
                model_failure="probation_error"),
        _record("cam-5", 1, Kind.HEARTBEAT, now - 500, model="fixed"),  # follows no updates
        _record("cam-4", 1, Kind.HEARTBEAT, now - 600_000, model="1", model_sha256="cd"),
        _record("gw-1", 1, Kind.HEARTBEAT, now - 100, outbox_records=3),  # the gateway itself
    ])

    reports = {r.device: r for r in StoreReports(store, window_s=300)(SITE)}

    assert sorted(reports) == ["cam-1", "cam-3"]
    cam1 = reports["cam-1"]
    assert (cam1.model, cam1.sha256, cam1.state, cam1.group) == ("2", "ab", "probation", "canary")
    cam3 = reports["cam-3"]
    assert cam3.group == "all"
    assert (cam3.failed, cam3.failed_sha256, cam3.failure) == ("2", "ab", "probation_error")
    assert cam1.failed_sha256 is None
    store.close()
