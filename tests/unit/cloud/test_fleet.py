"""The fleet view: the store's devices and gateways tables, fleet_status, `evc status`, and the
gateway's per-device gauges that tell the same story."""

from __future__ import annotations

import argparse
import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml

from evc.cli.status import add_commands
from evc.cloud import IncomingRecord, SqliteRecordStore, StoreError
from evc.cloud.fleet import fleet_status
from evc.metrics import GatewayMetrics
from evc.outbox import now_ms
from evc.wire import Kind, encode_map

NOW = 1_800_000_000_000
EPOCH = 1_700_000_000


def report(
    kind: Kind, seq: int, fields: dict[str, Any], *, device: str = "cam-1", ts_ms: int = NOW,
    epoch: int = EPOCH, gateway: str = "gw-1", site: str = "s",
) -> IncomingRecord:
    payload = encode_map(kind, origin=device, epoch=epoch, seq=seq, ts_ms=ts_ms, fields=fields)
    return IncomingRecord(
        site=site, origin=device, epoch=epoch, seq=seq, kind=int(kind), ts_ms=ts_ms,
        stored_ms=ts_ms + 5, gateway=gateway, detections=0, payload=payload,
    )


def beat(seq: int, ts_ms: int = NOW, **fields: Any) -> IncomingRecord:
    fields.setdefault("model", "m-1")
    return report(Kind.HEARTBEAT, seq, fields, ts_ms=ts_ms)


def state(seq: int, value: str, ts_ms: int = NOW, **kw: Any) -> IncomingRecord:
    return report(Kind.STATE, seq, {"state": value, "model": "m-1"}, ts_ms=ts_ms, **kw)


@pytest.fixture
def store(tmp_path: Path) -> SqliteRecordStore:
    return SqliteRecordStore(tmp_path / "records.db")


# -- the devices table ---------------------------------------------------------------------------


def test_the_newest_heartbeat_wins_and_a_redelivered_old_one_changes_nothing(
    store: SqliteRecordStore,
) -> None:
    store.insert([state(1, "online", NOW - 9000), beat(2, NOW - 5000, inference_ms_p50=4.0)])
    store.insert([beat(3, NOW, inference_ms_p50=7.5, fps=9.0, buffered=2)])
    result = store.insert([beat(2, NOW - 5000, inference_ms_p50=4.0)])  # redelivered
    assert result.duplicates == 1
    [row] = store.devices()
    assert (row.site, row.device, row.gateway) == ("s", "cam-1", "gw-1")
    assert (row.last_seen_ms, row.heartbeat_ms, row.online) == (NOW, NOW, True)
    assert row.heartbeat["inference_ms_p50"] == 7.5
    assert row.heartbeat["buffered"] == 2


def test_an_older_record_arriving_first_in_a_batch_is_overtaken_by_the_newer(
    store: SqliteRecordStore,
) -> None:
    # Workers split the stream, so order across batches is not kept; within one, any order.
    store.insert([beat(5, NOW, fps=5.0), beat(4, NOW - 1000, fps=4.0)])
    assert store.devices()[0].heartbeat["fps"] == 5.0


def test_a_last_will_after_its_birth_marks_the_device_offline(store: SqliteRecordStore) -> None:
    # The Last Will is stamped when the connection opens, before the birth: ts_ms says the
    # death is older, (epoch, seq) says it is newer, and the key decides.
    store.insert([state(1, "online", NOW), state(2, "offline", NOW - 10)])
    [row] = store.devices()
    assert row.online is False
    assert row.state["state"] == "offline"
    store.insert([state(1, "online", NOW)])  # the retained birth, delivered again
    assert store.devices()[0].online is False
    store.insert([state(1, "online", NOW + 60_000, epoch=EPOCH + 1)])  # a new boot
    assert store.devices()[0].online is True


def test_views_do_not_move_when_the_insert_fails(store: SqliteRecordStore) -> None:
    bad = IncomingRecord(
        site="s", origin="cam-2", epoch=2**63, seq=1, kind=1, ts_ms=1, stored_ms=1,
        gateway="gw-1", detections=0, payload=b"x",
    )
    with pytest.raises(StoreError):
        store.insert([beat(1), bad])
    assert store.devices() == []
    assert store.gateways() == []


def test_a_record_that_is_not_a_field_map_is_stored_and_skipped_by_the_views(
    store: SqliteRecordStore,
) -> None:
    junk = IncomingRecord(
        site="s", origin="cam-1", epoch=1, seq=1, kind=int(Kind.HEARTBEAT), ts_ms=1,
        stored_ms=1, gateway="gw-1", detections=0, payload=b"not msgpack",
    )
    assert store.insert([junk]).stored == 1
    assert store.devices() == []
    assert [g.gateway for g in store.gateways()] == ["gw-1"]


def test_gateways_are_known_by_the_records_they_forward(store: SqliteRecordStore) -> None:
    store.insert([beat(1, NOW - 1000), report(Kind.HEARTBEAT, 1, {}, site="t", gateway="gw-9")])
    store.insert([beat(2, NOW)])
    store.insert([beat(1, NOW - 1000)])  # redelivered: the newest arrival stays
    rows = {(g.site, g.gateway): g for g in store.gateways()}
    assert rows.keys() == {("s", "gw-1"), ("t", "gw-9")}
    assert (rows["s", "gw-1"].last_record_ms, rows["s", "gw-1"].last_stored_ms) == (NOW, NOW + 5)
    assert [g.gateway for g in store.gateways(site="t")] == ["gw-9"]


def test_a_store_from_before_the_views_fills_them_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = SqliteRecordStore(path)
    store.insert([state(1, "online", NOW - 2000), beat(2, NOW - 1000), beat(3, NOW, fps=3.0)])
    store.close()
    with closing(sqlite3.connect(path)) as db:
        db.execute("DROP TABLE devices")
        db.execute("DROP TABLE gateways")
        db.commit()
    reopened = SqliteRecordStore(path)
    [row] = reopened.devices()
    assert (row.online, row.heartbeat["fps"], row.last_seen_ms) == (True, 3.0, NOW)
    assert [g.last_stored_ms for g in reopened.gateways()] == [NOW + 5]


# -- fleet_status ------------------------------------------------------------------------------


def _fleet(store: SqliteRecordStore) -> None:
    """cam-1 serving and fresh, cam-2 closed, cam-3 silent, cam-4 at another gateway."""
    store.insert([
        state(1, "online", NOW - 3000),
        beat(2, NOW - 2000, model_state="serving", group="all", inference_ms_p50=8.5, fps=9.5,
             buffered=0),
        report(Kind.HEARTBEAT, 2, {"model": "m-2"}, device="cam-2", ts_ms=NOW - 4000),
        report(Kind.STATE, 3, {"state": "offline", "model": "m-2"}, device="cam-2",
               ts_ms=NOW - 1000),
        report(Kind.HEARTBEAT, 1, {"model": "m-1"}, device="cam-3", ts_ms=NOW - 600_000),
        report(Kind.STATE, 1, {"state": "online", "model": "m-3"}, device="cam-4",
               gateway="gw-2", ts_ms=NOW),
    ])


def test_fleet_status_groups_sites_gateways_and_devices(store: SqliteRecordStore) -> None:
    _fleet(store)
    fleet = fleet_status(store, stale_after_s=60, now=NOW)
    [site] = fleet.sites
    assert site.site == "s"
    assert [g.gateway for g in site.gateways] == ["gw-1", "gw-2"]
    devices = {d.device: d for d in fleet.devices()}
    assert {name: d.state for name, d in devices.items()} == {
        "cam-1": "online", "cam-2": "offline", "cam-3": "stale", "cam-4": "online"
    }
    cam1 = devices["cam-1"]
    assert (cam1.model, cam1.model_state, cam1.group) == ("m-1", "serving", "all")
    assert (cam1.inference_ms_p50, cam1.fps, cam1.buffered) == (8.5, 9.5, 0)
    assert (cam1.heartbeat_age_s, cam1.last_seen_age_s) == (2.0, 2.0)
    assert devices["cam-4"].model == "m-3"  # no heartbeat yet: the birth's model
    assert devices["cam-4"].heartbeat_age_s is None
    assert site.gateways[0].online_devices == 1
    assert site.gateways[0].outbox_records is None  # gateways do not report it upstream


def test_fleet_status_of_one_site_and_of_an_empty_store(store: SqliteRecordStore) -> None:
    _fleet(store)
    store.insert([report(Kind.HEARTBEAT, 1, {"model": "x"}, site="t", device="cam-9")])
    assert [s.site for s in fleet_status(store, now=NOW).sites] == ["s", "t"]
    assert [d.device for d in fleet_status(store, site="t", now=NOW).devices()] == ["cam-9"]
    assert fleet_status(store, site="nowhere").sites == ()


def test_fleet_status_as_json(store: SqliteRecordStore) -> None:
    _fleet(store)
    data = json.loads(json.dumps(fleet_status(store, now=NOW).to_dict()))
    gateway = data["sites"][0]["gateways"][0]
    assert gateway["online_devices"] == 1
    assert gateway["devices"][0]["state"] == "online"


# -- evc status --------------------------------------------------------------------------------


def run_status(tmp_path: Path, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    config = tmp_path / "cloud.yaml"
    config.write_text(yaml.safe_dump({"store": {"path": str(tmp_path / "records.db")}}))
    args = parser.parse_args(["status", "--config", str(config), *argv])
    result: int = args.handler(args)
    return result


def test_evc_status_prints_a_table_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = SqliteRecordStore(tmp_path / "records.db")
    now = now_ms()
    store.insert([state(1, "online", now), beat(2, now, model_state="serving", fps=9.5)])
    store.insert([report(Kind.STATE, 1, {"state": "offline", "model": "m-2"}, device="cam-2",
                         ts_ms=now)])
    store.close()
    assert run_status(tmp_path) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["SITE", "GATEWAY", "DEVICE", "STATE"]
    assert lines[1].split()[:4] == ["s", "gw-1", "cam-1", "online"]
    assert "serving" in lines[1].split()
    assert lines[2].split()[:4] == ["s", "gw-1", "cam-2", "offline"]
    assert "s/gw-1: 1/2 devices online" in lines[-1]
    assert "outbox not reported" in lines[-1]
    assert run_status(tmp_path, "--json", "--site", "s") == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["device"] for d in data["sites"][0]["gateways"][0]["devices"]] == ["cam-1", "cam-2"]


def test_evc_status_of_an_empty_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    SqliteRecordStore(tmp_path / "records.db").close()
    assert run_status(tmp_path) == 0
    assert capsys.readouterr().out.strip() == "no devices heard from yet"


# -- the gateway's per-device gauges -----------------------------------------------------------


def gauge(metrics: GatewayMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_gateway_device_gauges_follow_heartbeats_and_states() -> None:
    metrics = GatewayMetrics()
    devices = metrics.devices
    now = now_ms()
    devices.observe("cam-1", heartbeat=False, epoch=1, seq=1, ts_ms=now,
                    fields={"state": "online", "model": "m-1"})
    devices.observe("cam-1", heartbeat=True, epoch=1, seq=2, ts_ms=now, fields={
        "model": "m-1", "model_state": "serving", "inference_ms_p50": 12.5, "fps": 8.0})
    devices.observe("cam-1", heartbeat=True, epoch=1, seq=1, ts_ms=now - 9000,
                    fields={"model": "m-0", "fps": 1.0})  # older: ignored
    assert gauge(metrics, "evc_gateway_device_inference_p50_seconds", device="cam-1") == 0.0125
    assert gauge(metrics, "evc_gateway_device_frames_per_second", device="cam-1") == 8.0
    assert gauge(metrics, "evc_gateway_device_last_heartbeat_timestamp_seconds",
                 device="cam-1") == now / 1000
    info = "evc_gateway_device_model_info"
    assert gauge(metrics, info, device="cam-1", model="m-1", state="serving") == 1
    devices.observe("cam-1", heartbeat=True, epoch=1, seq=3, ts_ms=now,
                    fields={"model": "m-2", "model_state": "probation"})
    assert gauge(metrics, info, device="cam-1", model="m-1", state="serving") is None
    assert gauge(metrics, info, device="cam-1", model="m-2", state="probation") == 1
    devices.observe("cam-2", heartbeat=False, epoch=1, seq=1, ts_ms=now, fields={"state": "online"})
    assert gauge(metrics, "evc_gateway_devices", state="online") == 2
    devices.observe("cam-2", heartbeat=False, epoch=1, seq=2, ts_ms=now,
                    fields={"state": "offline"})
    assert gauge(metrics, "evc_gateway_devices", state="online") == 1
    assert gauge(metrics, "evc_gateway_devices", state="offline") == 1


def test_gateway_forgets_devices_silent_too_long_and_beyond_the_cap() -> None:
    metrics = GatewayMetrics()
    devices = metrics.devices
    devices.forget_after_s, devices.max_devices = 3600, 2
    now = now_ms()
    for i, age_s in enumerate((7200, 30, 20, 10)):  # cam-0 silent for 2 h; cap 2 of the rest
        devices.observe(f"cam-{i}", heartbeat=True, epoch=1, seq=1, ts_ms=now - age_s * 1000,
                        fields={"model": "m", "fps": 1.0})
    assert gauge(metrics, "evc_gateway_devices", state="offline") == 0  # a scrape sweeps
    heard = "evc_gateway_device_last_heartbeat_timestamp_seconds"
    assert [gauge(metrics, heard, device=f"cam-{i}") is not None for i in range(4)] == [
        False, False, True, True
    ]
    assert gauge(metrics, "evc_gateway_device_model_info", device="cam-1", model="m",
                 state="unknown") is None
    assert gauge(metrics, "evc_gateway_devices", state="online") == 2


def test_a_gateways_own_heartbeat_gives_its_outbox_depth_not_a_device(
    store: SqliteRecordStore,
) -> None:
    store.insert([
        beat(1),
        report(Kind.HEARTBEAT, 7, {"outbox_records": 1200, "backlog_age_s": 42.5},
               device="gw-1", gateway="gw-1"),
        report(Kind.HEARTBEAT, 5, {"outbox_records": 9, "backlog_age_s": 1.0},
               device="gw-1", gateway="gw-1"),  # older, arriving later: ignored
    ])

    (gateway,) = fleet_status(store, now=NOW).sites[0].gateways

    assert [d.device for d in gateway.devices] == ["cam-1"]  # the gateway is not a device
    assert (gateway.outbox_records, gateway.backlog_age_s) == (1200, 42.5)
