"""Real inference on the device tier: cameras -> ONNX detector -> gateway -> cloud store."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from contextlib import ExitStack, closing
from pathlib import Path
from typing import Any

import msgpack
import pytest
import yaml
from conftest import (
    cloud_config,
    gateway_config,
    run_evc,
    start_cloud,
    start_gateway,
    stored_keys,
    wait_for,
)

from evc.harness import Broker
from evc.synthetic.sample_model import sample_model_path
from evc.wire import Kind

SAMPLES = Path(__file__).parents[2] / "samples"


def _camera_config(path: Path, *, site: str, fog: Broker, state_dir: Path) -> Path:
    config = {
        "site": site,
        "device_id": "cam",
        "fog": {"url": fog.url},
        "state_dir": str(state_dir),
        "heartbeat_interval_s": 0.5,
        "detector": {"model": str(sample_model_path()), "intra_op_threads": 1},
        "publish": {"mode": "on_change", "keyframe_interval_s": 1.0},
        "simulate": {"devices": 4, "fps": 15, "duration_s": 4, "processes": 2, "seed": 5},
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def _heartbeats(store_path: Path, site: str) -> list[dict[str, Any]]:
    with closing(sqlite3.connect(store_path)) as db:
        rows = db.execute(
            "SELECT payload FROM records WHERE site = ? AND kind = ?", (site, int(Kind.HEARTBEAT))
        ).fetchall()
    return [msgpack.unpackb(payload)[6] for (payload,) in rows]


@pytest.mark.integration
@pytest.mark.slow
def test_simulated_cameras_with_inference_reach_the_cloud_exactly(
    evc_fog_broker: Broker, evc_cloud_broker: Broker, evc_topic_namespace: str, tmp_path: Path
) -> None:
    site = evc_topic_namespace
    store_path = tmp_path / "cloud" / "records.db"
    with ExitStack() as stack:
        start_cloud(stack, cloud_config(site=site, store_path=store_path, cloud=evc_cloud_broker))
        start_gateway(stack, gateway_config(
            site=site, state_dir=tmp_path / "gw", fog=evc_fog_broker, cloud=evc_cloud_broker
        ))
        config = _camera_config(tmp_path / "cameras.yaml", site=site, fog=evc_fog_broker,
                                state_dir=tmp_path / "devices")
        run = run_evc(["device", "simulate", "--config", str(config), "--json"], cwd=tmp_path,
                      timeout=120)
        assert run.returncode == 0, run.stderr
        result = json.loads(run.stdout)
        assert result["devices"] == 4
        assert result["unsent"] == 0
        assert result["published"] + result["suppressed"] == result["frames"]
        assert result["suppressed"] > 0, "on_change published every frame of a slow scene"
        wait_for(lambda: len(stored_keys(store_path, site)) >= result["published"], timeout=30,
                 message="every published frame in the cloud store")
        assert len(stored_keys(store_path, site)) == result["published"]
        wait_for(lambda: len(_heartbeats(store_path, site)) >= 4, timeout=10,
                 message="heartbeats in the cloud store")
    beats = [beat for beat in _heartbeats(store_path, site) if "inference_ms_p50" in beat]
    assert beats, "no heartbeat carried inference latency"
    for beat in beats:
        assert 0 < beat["inference_ms_p50"] <= beat["inference_ms_p99"]
        assert beat["fps"] > 0
        assert beat["rss_bytes"] > 10_000_000


@pytest.mark.integration
def test_camera_sample_app_runs_the_detector(evc_fog_broker: Broker, tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(SAMPLES / "camera_app.py"), evc_fog_broker.url, "120"],
        cwd=tmp_path, capture_output=True, text=True, timeout=90, check=False,
    )
    assert run.returncode == 0, run.stderr
    first = run.stdout.splitlines()[0]
    published, unchanged = (int(part.split()[0]) for part in first.split(": ")[1].split(", "))
    assert published + unchanged == 120
    assert published >= 1
    assert "inference_ms_p50" in run.stdout
