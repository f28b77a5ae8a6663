"""`evc bench`: run every benchmark once, interleaved with its baseline, and report.

Throughput figures alternate with their baselines round by round (raw MQTT, gateway, raw MQTT,
gateway, ...) so that a noisy neighbour slows both, and the medians are reported. Progress goes
to stderr; stdout carries only the result (JSON with ``--json``).
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from evc.bench import models, report, scenarios, storage, uplink, vision
from evc.bench.frames import DETECTIONS_PER_FRAME
from evc.bench.processes import BenchError
from evc.errors import EvcError
from evc.harness import start_broker


@dataclass(frozen=True, slots=True)
class Plan:
    """How much of each benchmark to run."""

    rounds: int
    mqtt_messages: int
    outbox_records: int
    rate: float  # frames/s of the latency and outage scenarios
    latency_s: float
    warmup_s: float
    outage_s: float
    tail_s: float
    vision_frames: int
    map_frames: int
    uplink_cameras: int
    uplink_s: float
    model_devices: int
    learn_cameras: int  # shifted cameras offering frames to their own sampler
    learn_per_camera: int  # each camera's sample budget
    train_budget_s: float
    learn_eval_frames: int  # held-out frames per domain


QUICK = Plan(rounds=3, mqtt_messages=10_000, outbox_records=40_000, rate=1000.0,
             latency_s=5.0, warmup_s=1.0, outage_s=4.0, tail_s=6.0,
             vision_frames=200, map_frames=100, uplink_cameras=2, uplink_s=10.0,
             model_devices=20, learn_cameras=10, learn_per_camera=4, train_budget_s=15.0,
             learn_eval_frames=50)
FULL = Plan(rounds=5, mqtt_messages=50_000, outbox_records=200_000, rate=1000.0,
            latency_s=20.0, warmup_s=1.0, outage_s=10.0, tail_s=12.0,
            vision_frames=1000, map_frames=300, uplink_cameras=4, uplink_s=20.0,
            model_devices=50, learn_cameras=25, learn_per_camera=4, train_budget_s=75.0,
            learn_eval_frames=100)
# Names of the sections, for running some of them alone.
SECTIONS = (
    "wire", "outbox", "throughput", "latency", "drain", "vision", "uplink", "models", "learning"
)


class Bench:
    """One benchmark run: the measurements so far and the errors met."""

    def __init__(self, plan: Plan, workdir: Path, console: Console) -> None:
        self.plan = plan
        self.workdir = workdir
        self.console = console
        self.runs: dict[str, list[float]] = {}
        self.single: dict[str, float] = {}
        self.details: dict[str, Any] = {}
        self.errors: list[str] = []

    def run(self, only: Collection[str] | None = None) -> None:
        """Every section in turn (or those named in ``only``, see :data:`SECTIONS`); a failed
        section is recorded and the others still run."""
        for key, name, section in (
            ("wire", "wire sizes", self.wire),
            ("outbox", "outbox", self.outbox),
            ("throughput", "raw MQTT vs gateway", self.throughput),
            ("latency", "end-to-end latency", self.latency),
            ("drain", "drain after outage", self.drain),
            ("vision", "on-device vision", self.vision),
            ("uplink", "uplink reduction", self.uplink),
            ("models", "model delivery", self.models),
            ("learning", "learning loop", self.learning),
        ):
            if only is not None and key not in only:
                continue
            self.console.rule(name, style="dim")
            try:
                section()
            except EvcError as exc:
                self.errors.append(f"{name}: {exc}")
                self.console.print(f"[red]{name} failed:[/red] {exc}")

    def _measure(self, key: str, label: str, func: Callable[[], float], unit: str) -> None:
        with self.console.status(label):
            value = func()
        self.runs.setdefault(key, []).append(value)
        self.console.print(f"  {label}: [bold]{value:,.0f}[/bold] {unit}")

    def _dir(self, name: str) -> Path:
        path = self.workdir / name
        path.mkdir(parents=True)
        return path

    def wire(self) -> None:
        """Frame sizes (exact, so measured once)."""
        sizes = storage.wire_sizes()
        self.single.update(sizes)
        self.details["frame_bytes"] = {
            "wire": sizes["wire_frame_bytes"], "json": sizes["json_frame_bytes"]
        }
        self.console.print(
            f"  10-detection frame: {sizes['wire_frame_bytes']:.0f} B on the wire, "
            f"{sizes['json_frame_bytes']:.0f} B as JSON"
        )

    def outbox(self) -> None:
        """Outbox enqueue and drain, each round beside plain SQLite."""
        count = self.plan.outbox_records
        for n in range(1, self.plan.rounds + 1):
            base, box = self._dir(f"sqlite-{n}") / "q.db", self._dir(f"outbox-{n}") / "o.db"
            tag = f"round {n}/{self.plan.rounds}"
            self._measure("sqlite_insert_per_s", f"SQLite insert {tag}",
                          partial(storage.sqlite_insert, base, count), "rows/s")
            self._measure("outbox_enqueue_per_s", f"Outbox.put {tag}",
                          partial(storage.outbox_enqueue, box, count), "records/s")
            self._measure("sqlite_fifo_drain_per_s", f"SQLite drain {tag}",
                          partial(storage.sqlite_drain, base), "rows/s")
            self._measure("outbox_drain_per_s", f"Outbox peek+ack {tag}",
                          partial(storage.outbox_drain, box), "records/s")

    def throughput(self) -> None:
        """Raw MQTT and the gateway, alternating, on one fog and one cloud broker."""
        count = self.plan.mqtt_messages
        with start_broker("fog") as fog, start_broker("cloud") as cloud:
            for n in range(1, self.plan.rounds + 1):
                tag = f"round {n}/{self.plan.rounds}"
                workdir = self._dir(f"gateway-{n}")
                self._measure("raw_mqtt_qos1_msgs_per_s", f"raw MQTT QoS 1 {tag}",
                              partial(scenarios.raw_mqtt, fog, count), "msg/s")
                self._measure("gateway_msgs_per_s", f"gateway {tag}",
                              partial(scenarios.gateway_throughput, fog, cloud, count, workdir),
                              "frames/s")

    def latency(self) -> None:
        """Device -> cloud store latency at a steady rate."""
        plan = self.plan
        with self.console.status(f"{plan.rate:,.0f} frames/s for {plan.latency_s:.0f} s"), \
                start_broker("fog") as fog, start_broker("cloud") as cloud:
            result = scenarios.e2e_latency(
                fog, cloud, self._dir("latency"), rate=plan.rate, seconds=plan.latency_s,
                warmup_s=plan.warmup_s,
            )
        self.single["e2e_latency_p50_ms"] = result.p50_ms
        self.single["e2e_latency_p99_ms"] = result.p99_ms
        self.details["e2e"] = asdict(result) | {"rate_frames_per_s": plan.rate}
        self.console.print(
            f"  p50 [bold]{result.p50_ms:.1f}[/bold] ms, p99 [bold]{result.p99_ms:.1f}[/bold] "
            f"ms, max {result.max_ms:.1f} ms over {result.frames} frames; lost {result.lost}"
        )
        if result.lost:
            self.errors.append(f"end-to-end latency: {result.lost} frames never reached the store")

    def drain(self) -> None:
        """Backlog drain after a cloud outage, under steady production."""
        plan = self.plan
        label = f"{plan.rate:,.0f} frames/s, cloud broker down for {plan.outage_s:.0f} s"
        with self.console.status(label), \
                start_broker("fog") as fog, start_broker("cloud") as cloud:
            result = scenarios.drain_after_outage(
                fog, cloud, self._dir("drain"), rate=plan.rate, outage_s=plan.outage_s,
                tail_s=plan.tail_s,
            )
        self.single["drain_after_outage_speedup"] = result.speedup
        self.single["uplink_reconnect_s"] = result.reconnect_s
        self.single["drain_lost_records"] = result.lost
        self.details["drain"] = asdict(result) | {"outage_s": plan.outage_s}
        self.console.print(
            f"  backlog {result.backlog:,} records drained in {result.drain_s:.2f} s at "
            f"[bold]{result.forwarded_per_s:,.0f}[/bold] records/s "
            f"({result.speedup:.1f}x production); reconnect took {result.reconnect_s:.1f} s; "
            f"stored {result.stored:,} of {result.produced:,}"
        )
        if result.lost:
            self.console.print(f"  [red]{result.lost} acknowledged frames never reached the "
                               "cloud store[/red] (see drain_lost_records)")

    def vision(self) -> None:
        """Detector cost beside raw ONNX Runtime, latency percentiles, sample model mAP."""
        with self.console.status("running the sample model on synthetic frames"):
            figures = vision.measure(
                frames=self.plan.vision_frames, map_frames=self.plan.map_frames
            )
        self.single.update(asdict(figures))
        self.console.print(
            f"  Detector / raw session: [bold]{figures.detector_overhead_ratio:.3f}[/bold]; "
            f"inference p50 {figures.inference_ms_p50:.2f} ms, p99 "
            f"{figures.inference_ms_p99:.2f} ms; mAP@0.5 "
            f"[bold]{figures.sample_model_map50:.3f}[/bold]"
        )

    def uplink(self) -> None:
        """Raw detections as JSON beside the gateway's track + aggregate uplink."""
        plan = self.plan
        label = f"{plan.uplink_cameras} cameras x 10 fps x {plan.uplink_s:.0f} s"
        with self.console.status(label), \
                start_broker("fog") as fog, start_broker("cloud") as cloud:
            result = uplink.measure(
                fog, cloud, self._dir("uplink"), cameras=plan.uplink_cameras, fps=10.0,
                seconds=plan.uplink_s,
            )
        self.single["uplink_reduction_ratio"] = result.uplink_reduction_ratio
        self.single["uplink_bytes_per_device_hour"] = result.uplink_bytes_per_device_hour
        self.single["uplink_counts_exact"] = result.uplink_counts_exact
        self.details["uplink"] = asdict(result)
        self.console.print(
            f"  {result.json_bytes:,} B as JSON vs {result.pipeline_uplink_bytes:,} B uplink "
            f"({result.pipeline_uplink_records} records): [bold]"
            f"{result.uplink_reduction_ratio:.1f}x[/bold]; counts exact: "
            f"{bool(result.uplink_counts_exact)}"
        )

    def models(self) -> None:
        """One v2 rollout to a site of many devices behind one gateway."""
        devices = self.plan.model_devices
        with self.console.status(f"rolling v2 out to {devices} devices"), \
                start_broker("fog") as fog, start_broker("cloud") as cloud:
            result = models.measure_delivery(fog, cloud, self._dir("models"), devices=devices)
        self.single["model_uplink_copies_per_site"] = result.model_uplink_copies_per_site
        self.single["model_swap_s"] = result.model_swap_s
        self.details["model_delivery"] = asdict(result)
        self.console.print(
            f"  {result.cloud_bytes_served:,} B over the uplink for a {result.artifact_bytes:,} "
            f"B artifact: [bold]{result.model_uplink_copies_per_site:.2f}[/bold] copies; "
            f"{result.fog_copies:.0f} copies on the fog broker; all {devices} devices on v2 "
            f"after {result.model_swap_s:.1f} s"
        )

    def learning(self) -> None:
        """Hard examples from shifted cameras -> labels -> fine-tuned v2, scored against v1."""
        plan = self.plan
        label = (f"sampling {plan.learn_cameras} shifted cameras, training for "
                 f"{plan.train_budget_s:.0f} s")
        with self.console.status(label):
            result = models.measure_learning(
                self._dir("learning"), cameras=plan.learn_cameras,
                per_camera=plan.learn_per_camera, budget_s=plan.train_budget_s,
                eval_frames=plan.learn_eval_frames,
            )
        self.single["model_v2_map50_gain"] = result.model_v2_map50_gain
        quick = plan.train_budget_s < FULL.train_budget_s
        self.details["learning"] = asdict(result) | {"short_training_budget": quick}
        self.console.print(
            f"  {result.samples} samples, {result.train_steps} steps in "
            f"{result.train_seconds:.0f} s: shifted mAP@0.5 {result.v1_shifted_map50:.3f} -> "
            f"{result.v2_shifted_map50:.3f} ([bold]{result.model_v2_map50_gain:+.3f}[/bold]), "
            f"base {result.v1_base_map50:.3f} -> {result.v2_base_map50:.3f}; gate "
            f"{'passed' if result.gate_passed else 'refused: ' + '; '.join(result.gate_reasons)}"
            + (" (short training budget of --quick)" if quick else "")
        )

    def all_runs(self) -> dict[str, list[float]]:
        """The runs of every repeated figure, derived ones included."""
        runs = dict(self.runs)
        if "gateway_msgs_per_s" in runs:
            runs["gateway_detections_per_s"] = [
                v * DETECTIONS_PER_FRAME for v in runs["gateway_msgs_per_s"]
            ]
        return runs

    def values(self) -> dict[str, float]:
        """Every figure: medians of the repeated ones, derived ratios, single measurements."""
        values = {key: statistics.median(runs) for key, runs in self.all_runs().items()}
        values.update(self.single)
        if "gateway_msgs_per_s" in values and "raw_mqtt_qos1_msgs_per_s" in values:
            values["gateway_vs_raw_ratio"] = (
                values["gateway_msgs_per_s"] / values["raw_mqtt_qos1_msgs_per_s"]
            )
        return values


@contextmanager
def _quiet_evc_logs() -> Iterator[None]:
    # The outage scenario disconnects on purpose; its warnings would bury the progress lines.
    logger = logging.getLogger("evc")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def run_bench(
    *, quick: bool, as_json: bool, output: Path | None, only: Collection[str] | None = None
) -> int:
    """Run the benchmarks; print JSON or a table on stdout; write a Markdown report if asked.

    Args:
        quick: the short plan, for CI.
        as_json: print JSON instead of a table.
        output: write the Markdown report here.
        only: run only these sections (names from :data:`SECTIONS`); all by default.

    Returns:
        0 if every benchmark ran and nothing was lost (targets missed or not), 1 otherwise.

    Raises:
        BenchError: ``only`` names a section that does not exist.
    """
    unknown = sorted(set(only or ()) - set(SECTIONS))
    if unknown:
        raise BenchError(f"no benchmark section {', '.join(unknown)}; there are {SECTIONS}")
    plan = QUICK if quick else FULL
    console = Console(stderr=True)
    command = report.command_line(quick=quick, as_json=as_json, output=output)
    meta: dict[str, Any] = {
        "command": command, "quick": quick, "rounds": plan.rounds,
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": report.machine_info(), "plan": asdict(plan),
        "sections": sorted(only) if only is not None else list(SECTIONS),
    }
    console.print(f"[bold]{command}[/bold]: {meta['machine']['cpu']}, "
                  f"{meta['machine']['cores']} cores, load {meta['machine']['load_average']}")
    started = time.monotonic()
    with _quiet_evc_logs(), tempfile.TemporaryDirectory(prefix="evc-bench-") as tmp:
        bench = Bench(plan, Path(tmp), console)
        bench.run(only)
    meta["seconds"] = round(time.monotonic() - started, 1)
    meta["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    meta["errors"] = bench.errors
    doc = report.build_report(
        bench.values(), runs=bench.all_runs(), details=bench.details, meta=meta
    )
    if output is not None:
        report.write_markdown(output, doc)
        console.print(f"wrote {output}")
    if as_json:
        print(json.dumps(doc, indent=2), flush=True)
    else:
        Console().print(_table(doc))
    return 1 if bench.errors else 0


def _table(doc: dict[str, Any]) -> Table:
    table = Table(title="evc bench")
    for column in ("figure", "value", "unit", "target", "result"):
        table.add_column(column, justify="right" if column == "value" else "left")
    for figure in report.FIGURES:
        if figure.key not in doc:
            continue
        verdict = doc["targets"].get(figure.key)
        result = ("[green]pass[/green]" if verdict["pass"] else "[red]MISSED[/red]") if verdict \
            else ("baseline" if figure.baseline else "")
        table.add_row(figure.key, f"{doc[figure.key]:,.2f}", figure.unit,
                      str(figure.target or ""), result)
    return table
