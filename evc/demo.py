"""``evc demo``: the whole hierarchy on this machine, with a cloud outage and a learning loop.

Starts a fog and a cloud Mosquitto (through the harness), a cloud ingest worker with a model
registry, a gateway that relays models and simulated cameras that run the sample ONNX detector
on synthetic frames and publish only what changed; cuts the cloud broker for a few seconds while
the cameras keep publishing, and summarises what was seen, published, stored, deduplicated and
lost (which must be 0). Then the learning loop (:mod:`evc.learning_demo`): the scene shifts,
cameras sample hard examples, the cloud trains v2 and rolls it out through the fog, canary first.
"""

from __future__ import annotations

import json
import logging
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.logging import RichHandler
from rich.table import Table

from evc.cli.status import render
from evc.cloud import CloudIngest
from evc.cloud.fleet import fleet_status
from evc.cloud.store import SqliteRecordStore
from evc.config import (
    BrokerConfig,
    CloudConfig,
    CloudModelsConfig,
    DetectorConfig,
    DeviceConfig,
    GatewayConfig,
    GatewayModelsConfig,
    MetricsConfig,
    OutboxConfig,
    PublishConfig,
    SimulationConfig,
    StoreConfig,
)
from evc.device import PublishMode
from evc.device.simulate import SimulationResult, simulate
from evc.gateway import Gateway
from evc.harness import MosquittoBroker
from evc.learning_demo import LoopError, LoopSettings, run_learning_loop
from evc.metrics import MetricsServer
from evc.models.signing import SigningKey, generate_keypair
from evc.synthetic.sample_model import sample_model_path
from evc.wire import Kind

SITE = "demo-site"
DEFAULT_LOOP = LoopSettings()


@dataclass
class _Stack:
    fog: MosquittoBroker
    cloud_broker: MosquittoBroker
    cloud: CloudIngest
    gateway: Gateway
    key: SigningKey
    public_key: Path

    @property
    def store(self) -> SqliteRecordStore:
        """The cloud worker's record store (the demo always uses SQLite)."""
        assert isinstance(self.cloud.store, SqliteRecordStore)
        return self.cloud.store


def run_demo(
    *,
    devices: int = 4,
    fps: float = 20.0,
    duration_s: float = 15.0,
    outage_s: float | None = None,
    as_json: bool = False,
    stop: threading.Event | None = None,
    loop: LoopSettings | None = DEFAULT_LOOP,
) -> int:
    """Run the demo; return 0 if nothing was lost and the learning loop (unless ``loop`` is
    None) completed."""
    console = Console(stderr=True)
    logging.basicConfig(
        level=logging.WARNING, format="%(name)s: %(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )
    # The demo cuts the cloud broker on purpose and says so in its progress line; the clients'
    # reconnect warnings would only look like a failure.
    logging.getLogger("evc.mqtt").setLevel(logging.ERROR)
    stop = stop or threading.Event()
    outage = outage_s if outage_s is not None else max(1.0, duration_s / 4)
    with tempfile.TemporaryDirectory(prefix="evc-demo-") as tmp:
        work = Path(tmp)
        with console.status("starting brokers, cloud ingest and gateway"):
            stack = _start(work)
        console.print(
            f"metrics: gateway {_metrics_url(stack.gateway.metrics_server)}, "
            f"cloud {_metrics_url(stack.cloud.metrics_server)}"
        )
        try:
            summary = _run(
                stack, work, console, stop,
                devices=devices, fps=fps, duration_s=duration_s, outage_s=outage,
            )
            fleets = [fleet_status(stack.store)]
            if loop is not None and not stop.is_set():
                summary["learning_loop"] = _learn(
                    stack, work, console, stop, settings=loop,
                    while_running=lambda: fleets.append(fleet_status(stack.store)),
                )
            fleet = fleets[-1]
        finally:
            stack.gateway.stop()
            stack.cloud.stop()
            stack.cloud_broker.close()
            stack.fog.close()
    if as_json:
        print(json.dumps({**summary, "fleet": fleet.to_dict()}, indent=2))
    else:
        console.print("[bold]fleet[/] (`evc status`)\n" + render(fleet), soft_wrap=True)
        _print_summary(console, summary)
    learned = summary.get("learning_loop", {}).get("published") is not None or loop is None
    return 0 if summary["lost"] == 0 and learned else 1


def _metrics_url(server: MetricsServer | None) -> str:
    return "off" if server is None else f"http://127.0.0.1:{server.port}/metrics"


def _learn(
    stack: _Stack, work: Path, console: Console, stop: threading.Event, *,
    settings: LoopSettings, while_running: Callable[[], object],
) -> dict[str, Any]:
    console.print("[bold]learning loop[/]: the scene shifts; cameras sample hard examples")
    try:
        return run_learning_loop(
            work=work, site=SITE, fog_url=stack.fog.url, cloud=stack.cloud,
            gateway=stack.gateway, key=stack.key, public_key=stack.public_key,
            settings=settings, progress=lambda text: console.print(f"  {text}"), stop=stop,
            while_running=while_running,
        )
    except LoopError as exc:
        console.print(f"[bold red]learning loop failed[/]: {exc}")
        return {"error": str(exc), "published": None}


def _start(work: Path) -> _Stack:
    keys = generate_keypair(work / "keys")
    fog = MosquittoBroker(tier="fog", workdir=work / "fog")
    fog.start()
    cloud_broker = MosquittoBroker(tier="cloud", workdir=work / "cloud-broker")
    cloud_broker.start()
    cloud = CloudIngest(
        CloudConfig(
            cloud=BrokerConfig(url=cloud_broker.url),
            store=StoreConfig(path=work / "cloud" / "records.db"),
            models=CloudModelsConfig(registry=work / "registry", tick_s=0.5),
            metrics=MetricsConfig(port=0),
        )
    )
    cloud.start()
    gateway = Gateway(
        GatewayConfig(
            site=SITE, gateway_id="gw-1", state_dir=work / "gateway",
            fog=BrokerConfig(url=fog.url), cloud=BrokerConfig(url=cloud_broker.url),
            outbox=OutboxConfig(path=work / "gateway" / "outbox.db"),
            models=GatewayModelsConfig(trusted_keys=[keys.public_path]),
            pipeline=[{"type": "sample", "max_per_minute": 120, "max_per_hour": 2000}],
            metrics=MetricsConfig(port=0), heartbeat_interval_s=2.0,
        )
    )
    gateway.start()
    return _Stack(
        fog, cloud_broker, cloud, gateway, SigningKey.load(keys.private_path), keys.public_path
    )


def _run(
    stack: _Stack, work: Path, console: Console, stop: threading.Event,
    *, devices: int, fps: float, duration_s: float, outage_s: float,
) -> dict[str, Any]:
    device_config = DeviceConfig(
        site=SITE, device_id="cam", fog=BrokerConfig(url=stack.fog.url),
        state_dir=work / "devices", heartbeat_interval_s=2.0,
        detector=DetectorConfig(model=sample_model_path(), intra_op_threads=1),
        publish=PublishConfig(mode=PublishMode.ON_CHANGE, keyframe_interval_s=2.0),
        simulate=SimulationConfig(devices=devices, fps=fps, duration_s=duration_s),
    )
    outcome: list[SimulationResult] = []
    cameras = threading.Thread(
        target=lambda: outcome.append(simulate(device_config, stop=stop)), daemon=True
    )
    started = time.monotonic()
    cameras.start()
    outage_at, backlog_peak = duration_s / 3, 0
    phase = "streaming"
    with Live(console=console, refresh_per_second=4, transient=True) as live:
        while cameras.is_alive() or _stored_frames(stack) < _published(outcome):
            elapsed = time.monotonic() - started
            if phase == "streaming" and elapsed >= outage_at:
                stack.cloud_broker.stop()
                phase = "cloud outage"
            elif phase == "cloud outage" and elapsed >= outage_at + outage_s:
                stack.cloud_broker.restart()
                phase = "cloud back, backlog draining"
            backlog_peak = max(backlog_peak, len(stack.gateway.outbox))
            live.update(_progress(stack, elapsed, phase))
            if not console.is_terminal and int(elapsed * 4) % 8 == 0:
                # Without a terminal Live shows nothing: a plain line every ~2 s instead.
                console.print(_progress_line(stack, elapsed, phase), soft_wrap=True)
            if stop.is_set() or elapsed > duration_s + outage_s + 60:
                break
            time.sleep(0.25)
    cameras.join()
    return _summary(stack, outcome[0], time.monotonic() - started, outage_s, backlog_peak)


def _published(outcome: list[SimulationResult]) -> int:
    return outcome[0].published if outcome else 1 << 62


def _stored_frames(stack: _Stack) -> int:
    return stack.cloud.store.stats().by_kind.get(int(Kind.DETECTIONS), 0)


def _progress_line(stack: _Stack, elapsed: float, phase: str) -> str:
    committed = stack.gateway.metrics.registry.get_sample_value(
        "evc_gateway_committed_records_total"
    ) or 0
    return (
        f"{elapsed:5.1f}s {phase}: gateway took {committed:.0f}, "
        f"backlog {len(stack.gateway.outbox)}, cloud stored {_stored_frames(stack)} frames"
    )


def _progress(stack: _Stack, elapsed: float, phase: str) -> Table:
    metrics = stack.gateway.metrics.registry
    table = Table.grid(padding=(0, 2))
    table.add_row(
        f"[bold]{elapsed:5.1f}s[/] {phase}",
        f"gateway took {metrics.get_sample_value('evc_gateway_committed_records_total') or 0:.0f}",
        f"backlog {len(stack.gateway.outbox)}",
        f"cloud stored {_stored_frames(stack)} frames",
    )
    return table


def _summary(
    stack: _Stack, result: SimulationResult, seconds: float, outage_s: float, backlog_peak: int
) -> dict[str, Any]:
    stats = stack.cloud.store.stats()
    metrics = stack.gateway.metrics.registry
    stored_frames = stats.by_kind.get(int(Kind.DETECTIONS), 0)
    uplink_bytes = metrics.get_sample_value("evc_gateway_uplink_bytes_total") or 0
    return {
        "cameras": result.devices,
        "seconds": round(seconds, 1),
        "cloud_outage_s": round(outage_s, 1),
        "frames_captured": result.frames,
        "frames_unchanged_not_sent": result.suppressed,
        "frames_published": result.published,
        "detections_published": result.detections,
        "inference_ms_p50": round(result.latency_ms(50) or 0.0, 2),
        "inference_ms_p99": round(result.latency_ms(99) or 0.0, 2),
        "frames_stored": stored_frames,
        "detections_stored": stats.detections,
        "records_stored": stats.records,
        "duplicates_dropped": stats.duplicates,
        "lost": result.published - stored_frames,
        "gateway_backlog_peak": backlog_peak,
        "device_to_fog_bytes": result.bytes_sent,
        "fog_to_cloud_bytes": int(uplink_bytes),
        "uplink_messages": int(metrics.get_sample_value("evc_gateway_uplink_batches_total") or 0),
        "uplink_bytes_per_detection": round(uplink_bytes / max(1, result.detections), 2),
    }


def _print_summary(console: Console, summary: dict[str, Any]) -> None:
    table = Table(title="EVC demo summary", show_header=False)
    loop = summary.get("learning_loop", {})
    rows = [(k, v) for k, v in summary.items() if k != "learning_loop"]
    rows += [(f"loop: {k}", v) for k, v in loop.items()]
    for key, value in rows:
        style = ""
        if key == "lost":
            style = "bold green" if value == 0 else "bold red"
        table.add_row(key.replace("_", " "), f"[{style}]{value}[/]" if style else str(value))
    console.print(table)
