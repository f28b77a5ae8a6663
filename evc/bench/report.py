"""The figures `evc bench` reports, their targets, and the JSON and Markdown renderings.

Every figure is declared once in :data:`FIGURES` with its unit, its target (if any) and a
paragraph saying exactly how it is measured; the JSON keys, the table and the method section of
``docs/BENCHMARKS.md`` all come from there, so they cannot drift apart.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import sqlite3
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from evc.harness import find_mosquitto

NOTES_BEGIN = "<!-- notes:begin -->"
NOTES_END = "<!-- notes:end -->"
_DEFAULT_NOTES = "(None yet. Text between these markers is kept when the report is regenerated.)"


@dataclass(frozen=True, slots=True)
class Target:
    """A bound a figure must meet."""

    op: Literal[">=", "<="]
    limit: float

    def met(self, value: float) -> bool:
        """True if ``value`` is on the right side of the bound."""
        return value >= self.limit if self.op == ">=" else value <= self.limit

    def __str__(self) -> str:
        return f"{self.op} {_number(self.limit)}"


@dataclass(frozen=True, slots=True)
class Figure:
    """One reported number: its JSON key, unit, target and how it is measured."""

    key: str
    unit: str
    title: str
    method: str
    target: Target | None = None
    baseline: bool = False


FIGURES: tuple[Figure, ...] = (
    Figure(
        "raw_mqtt_qos1_msgs_per_s", "msg/s", "Raw MQTT, QoS 1 (baseline)",
        "A plain paho-mqtt 2.x publisher in a child process publishes N messages of 100 bytes "
        "at QoS 1 to one topic on the fog Mosquitto, driving `loop()` itself with at most "
        "1,000 in flight (the fastest plain-paho pattern measured on this class of machine). "
        "A plain paho "
        "subscriber (QoS 1, `loop_start()`) in the benchmark process counts them. The rate is "
        "N / (time of the last arrival - time of the first publish). Runs alternate with the "
        "gateway runs below; the median is reported.",
        baseline=True,
    ),
    Figure(
        "gateway_msgs_per_s", "frame/s", "Gateway throughput (frames)",
        "The same publisher sends N pre-encoded 10-detection frames round-robin on the "
        "detections topics of 8 devices of one site on the fog broker. A `Gateway` with its "
        "default settings (intake batches of 200 or 5 ms, outbox WAL NORMAL, uplink batches of "
        "up to 500 records, 16 in flight) admits, validates, commits and forwards them to the "
        "cloud broker. A frame counts when a plain paho subscriber on the cloud broker receives "
        "the uplink batch that carries it, i.e. after it was committed to the outbox, sent, "
        "and routed by the cloud broker. Rate = N / (last batch received - first publish); "
        "median of the interleaved runs.",
    ),
    Figure(
        "gateway_detections_per_s", "detection/s", "Gateway throughput (detections)",
        "`gateway_msgs_per_s` x 10 detections per frame.",
        Target(">=", 50_000),
    ),
    Figure(
        "gateway_vs_raw_ratio", "ratio", "Gateway vs raw MQTT",
        "Median gateway frames/s over median raw MQTT msg/s, both measured in this run on the "
        "same fog broker. The gateway path has more work per message (a second broker, "
        "validation, a durable commit) and shares the 2 cores with two brokers and the "
        "publisher.",
        Target(">=", 0.5),
    ),
    Figure(
        "wire_bytes_per_detection", "B/detection", "Wire size",
        "Length of one encoded 10-detection frame (640x480, device `cam-00`, model version "
        "`detector-1.0.0`, real epoch, seq and ms timestamp), including the msgpack envelope, "
        "divided by 10. The MQTT fixed header and topic are not included.",
        Target("<=", 16),
    ),
    Figure(
        "json_bytes_per_detection", "B/detection", "JSON size (comparison)",
        "The same frame as compact JSON with readable keys (`class_id`, `score`, `box`, ...), "
        "scores to 3 decimals and box corners to 2 decimals (the codec's own precision), "
        "divided by 10.",
        baseline=True,
    ),
    Figure(
        "outbox_enqueue_per_s", "record/s", "Outbox enqueue",
        "`Outbox.put` of N frame records in batches of 200 (one transaction each, as the "
        "gateway commits an intake batch), WAL with synchronous=NORMAL, on a fresh file in "
        "the system temp directory. Median of the runs.",
        Target(">=", 100_000),
    ),
    Figure(
        "sqlite_insert_per_s", "row/s", "SQLite insert (baseline)",
        "The same rows and batches inserted with a bare `executemany` into a table of "
        "(id, topic, payload), same pragmas: the floor under `outbox_enqueue_per_s`.",
        baseline=True,
    ),
    Figure(
        "outbox_drain_per_s", "record/s", "Outbox drain",
        "`Outbox.peek` of 500 records then `Outbox.ack` of their ids, until the outbox filled "
        "by the enqueue run is empty. Median of the runs.",
    ),
    Figure(
        "sqlite_fifo_drain_per_s", "row/s", "SQLite FIFO drain (baseline)",
        "SELECT the 500 oldest rows, then DELETE by id range, until the baseline table is "
        "empty: the floor under `outbox_drain_per_s`.",
        baseline=True,
    ),
    Figure(
        "e2e_latency_p50_ms", "ms", "End-to-end latency p50",
        "10 `Device` objects in a child process publish 1,000 frames/s in total (100 each) "
        "through their local buffers to the fog broker; a `Gateway` forwards them and a "
        "`CloudIngest` worker (default batching) commits them to a `SqliteRecordStore`. "
        "Latency = wall clock right after the store's COMMIT returned minus the wall clock "
        "just before `publish_detections` was called, per frame; the first second is "
        "discarded as warm-up.",
    ),
    Figure(
        "e2e_latency_p99_ms", "ms", "End-to-end latency p99",
        "As above, 99th percentile.",
        Target("<=", 100),
    ),
    Figure(
        "drain_after_outage_speedup", "x", "Drain after outage",
        "A publisher sends 1,000 frames/s steadily. After 1 s the cloud broker is stopped "
        "(SIGTERM) for the outage time, then restarted on the same port; production never "
        "stops. From the moment the gateway's uplink reconnects until its outbox is back "
        "under 1% of the backlog (at least 100 records), records acknowledged by the cloud "
        "broker per second (backlog and live traffic) are divided by the production rate. "
        "A `CloudIngest` "
        "worker stores everything, and the run checks that every frame was stored.",
        Target(">=", 10),
    ),
    Figure(
        "drain_lost_records", "records", "Records lost across the outage",
        "In the outage run above: frames the publisher got a PUBACK for from the fog broker "
        "minus detections records in the cloud store once the count stopped moving. Every "
        "hop acknowledges only after a durable commit, so anything above 0 is a delivery bug.",
        Target("<=", 0),
    ),
    Figure(
        "uplink_reconnect_s", "s", "Uplink reconnect delay",
        "From the restart of the cloud broker (it answers MQTT) to the gateway's uplink "
        "being connected again: paho's reconnect back-off (1 s doubling to 5 s) decides it.",
    ),
    Figure(
        "detector_overhead_ratio", "ratio", "Detector vs raw ONNX Runtime",
        "Median time of one `Detector` call on the sample model (160x160 input, one ONNX "
        "Runtime thread) over a synthetic camera's frames, divided by the median time of the "
        "same work done inline on a bare `InferenceSession` (letterbox, `session.run`, decode, "
        "NMS, boxes mapped back), the two interleaved frame by frame.",
        Target("<=", 1.15),
    ),
    Figure(
        "inference_ms_p50", "ms", "Sample model, whole Detector call p50",
        "Pre-processing + ONNX Runtime + post-processing of one 160x160 synthetic frame, "
        "median over the run's frames.",
    ),
    Figure(
        "inference_ms_p99", "ms", "Sample model, whole Detector call p99",
        "As above, 99th percentile.",
    ),
    Figure(
        "preprocess_ms_p50", "ms", "Letterbox 640x480 -> 320x320",
        "`letterbox` of a 640x480 RGB frame into a 320x320 float32 tensor (nearest "
        "resampling, the Detector's default), median of repeated calls.",
        Target("<=", 2),
    ),
    Figure(
        "postprocess_ms_p50", "ms", "Decode + NMS at 320x320, 80 classes",
        "`postprocess` of a YOLO output `[1, 84, 2100]` (320x320 input, 80 classes) holding "
        "10 objects with 3 overlapping anchors each over low background scores, "
        "median of repeated calls.",
        Target("<=", 2),
    ),
    Figure(
        "sample_model_map50", "mAP", "Sample model accuracy",
        "mAP@0.5 of the committed sample model through the `Detector` (confidence floor 0.01) "
        "on independent seeded frames of the base scene that no training run used.",
        Target(">=", 0.8),
    ),
    Figure(
        "uplink_reduction_ratio", "x", "Uplink reduction, track + aggregate",
        "The sample `Detector` runs once over a seeded synthetic scene (4 cameras at 10 "
        "frames/s for 20 s; 2 cameras for 10 s with `--quick`). Baseline: the sum of MQTT "
        "payload bytes if every frame's raw detections went to the cloud as one compact JSON "
        "object (device, seq, ts_ms, model, width, height and per detection its class name, "
        "score to 3 decimals and box to 0.1 px), one message per frame, no compression. "
        "Divided by `evc_gateway_uplink_bytes_total` of a real Gateway (fog and cloud "
        "Mosquitto) with `pipeline: [{type: track}, {type: aggregate, window_s: 10}]` and zstd "
        "batches, fed the same detections as device records and stopped (flushing the "
        "windows) with a drain.",
        Target(">=", 20),
    ),
    Figure(
        "uplink_bytes_per_device_hour", "B", "Uplink bytes per camera-hour, track + aggregate",
        "In the run above: the gateway's uplink bytes divided by the cameras and by the "
        "scene's length in hours.",
    ),
    Figure(
        "uplink_counts_exact", "bool", "Summary counts exact",
        "In the run above: a raw subscriber on the cloud broker decodes every uplink batch "
        "and sums the counts of the SUMMARY records per class; 1 if they equal the per-class "
        "detection counts of all the frames, else 0.",
        Target(">=", 1),
    ),
    Figure(
        "model_uplink_copies_per_site", "copies", "Model copies over the uplink per site",
        "A cloud `ModelService` (cloud Mosquitto) holds v1 (the sample model) and v2 (the same "
        "model with another version in its ONNX metadata: other bytes, ~0.8 MB) in its "
        "registry, signed. One gateway `ModelRelay` and 50 devices (20 with `--quick`), each a "
        "`ModelUpdater` and a `ModelSlot` running v1 in its own ONNX Runtime session (one "
        "thread), sit behind the fog Mosquitto. v2 is made the site default "
        "(`RolloutController.set_default`) and the run waits until every slot runs v2. Bytes "
        "of artifact chunks the cloud's chunk server published (`ChunkServer.bytes_served`, "
        "checked equal to the bytes the relay's fetcher received) divided by the artifact "
        "size. The fog's own chunk server serves about one copy per device (a device re-asks "
        "chunks it has not had after a quiet second, which can add a little); details give "
        "its bytes, the chunks devices received twice, and the process memory before the "
        "devices and after the swap.",
        Target("<=", 1.0),
    ),
    Figure(
        "model_swap_s", "s", "Rollout to every device of a site",
        "In the run above: from `set_default` until every device's slot reports v2 (the "
        "gateway fetches and verifies the artifact once, republishes the manifest on the fog "
        "broker, every device fetches it from the gateway, smoke-tests and swaps).",
    ),
    Figure(
        "model_v2_map50_gain", "mAP", "v2 trained by the loop, shifted-scene gain",
        "The learning loop's own parts, in one process without brokers (the MQTT path of "
        "SAMPLE records is covered by the integration tests): 25 synthetic cameras showing "
        "the shifted scene (10 with `--quick`) offer every 5th frame to the v1 `Detector` and "
        "to a `HardExampleSampler` each (`near_threshold` 0.25-0.5, then `few` < 1 detection; "
        "whole frames with the scene's truth; a budget of 4 samples per camera). Each sample "
        "is encoded and decoded as a SAMPLE record, labelled by `SyntheticTruthLabeller`, and "
        "`SampleModelTrainer` fine-tunes v1 on them with 50% base-scene replay for a 75 s "
        "budget (15 s with `--quick`, too short for the target: details mark it). v2 minus v1 "
        "mAP@0.5 through ONNX Runtime on 100 held-out seeded frames of the shifted scene (50 "
        "with `--quick`; `evaluate_candidate`, seeds no camera or training draw uses). "
        "Details give both models' shifted and base mAP, the samples by reason, the training "
        "steps and seconds, and the default gate's decision (shifted gain >= 0.10, base loss "
        "<= 0.03).",
        Target(">=", 0.15),
    ),
)
FIGURE_KEYS = tuple(figure.key for figure in FIGURES)


def evaluate(values: Mapping[str, float]) -> dict[str, dict[str, Any]]:
    """Pass or fail of every figure that has a target and a value."""
    verdicts: dict[str, dict[str, Any]] = {}
    for figure in FIGURES:
        if figure.target is None or figure.key not in values:
            continue
        value = values[figure.key]
        verdicts[figure.key] = {
            "target": str(figure.target), "value": value, "pass": figure.target.met(value)
        }
    return verdicts


def build_report(
    values: Mapping[str, float],
    *,
    runs: Mapping[str, list[float]],
    details: Mapping[str, Any],
    meta: Mapping[str, Any],
) -> dict[str, Any]:
    """The JSON document: every figure at top level, then targets, runs, details and meta."""
    figures = {key: _rounded(values[key]) for key in FIGURE_KEYS if key in values}
    verdicts = evaluate(values)
    return {
        **figures,
        "targets": verdicts,
        "all_targets_met": all(v["pass"] for v in verdicts.values()),
        "runs": {key: [_rounded(v) for v in vals] for key, vals in runs.items()},
        "details": dict(details),
        "meta": dict(meta),
    }


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "os": platform.platform(),
        "python": platform.python_version(),
        "mosquitto": _mosquitto_version(),
        "paho_mqtt": _version("paho-mqtt"),
        "msgpack": _version("msgpack"),
        "sqlite": sqlite3.sqlite_version,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mosquitto_version() -> str:
    binary = find_mosquitto()
    if binary is None:
        return "not installed"
    try:
        out = subprocess.run(
            [binary, "-h"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    first = out.splitlines()[0] if out else ""
    return first.removeprefix("mosquitto version ").strip() or "unknown"


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


# -- Markdown ----------------------------------------------------------------------------------


def _number(value: float) -> str:
    if float(value).is_integer() or abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _rounded(value: float) -> float:
    return round(float(value), 3 if abs(value) < 100 else 1)


def _table(report: Mapping[str, Any]) -> list[str]:
    lines = [
        "| figure | value | unit | target | result | runs |",
        "|---|---:|---|---|---|---|",
    ]
    for figure in FIGURES:
        if figure.key not in report:
            continue
        verdict = report["targets"].get(figure.key)
        result = ("pass" if verdict["pass"] else "**MISSED**") if verdict else (
            "baseline" if figure.baseline else ""
        )
        runs = ", ".join(_number(v) for v in report["runs"].get(figure.key, []))
        target = str(figure.target) if figure.target else ""
        lines.append(
            f"| {figure.title} (`{figure.key}`) | {_number(report[figure.key])} | {figure.unit} "
            f"| {target} | {result} | {runs} |"
        )
    return lines


def _missed(report: Mapping[str, Any]) -> list[str]:
    missed = [key for key, v in report["targets"].items() if not v["pass"]]
    if not missed:
        return ["Every target was met in this run."]
    return [
        "Targets missed in this run: " + ", ".join(f"`{key}`" for key in missed) + ". "
        "See the notes below for what limits them.",
    ]


def render_markdown(report: Mapping[str, Any], *, notes: str | None = None) -> str:
    """The whole of ``docs/BENCHMARKS.md`` for ``report``."""
    meta, machine = report["meta"], report["meta"]["machine"]
    lines = [
        "# Benchmarks",
        "",
        "Generated by `evc bench`; regenerate with `make bench`. Throughput figures are medians "
        "of runs interleaved with their baselines (every run is listed); latency and outage "
        "figures come from one run each. Everything is measured in the same run on the same "
        "machine, which is shared and noisy: spreads of 10-30% between runs are normal.",
        "",
        f"- Command: `{meta['command']}`",
        f"- Date: {meta['date']}",
        f"- Mode: {'quick' if meta['quick'] else 'full'}; {meta['rounds']} interleaved rounds; "
        f"wall time {meta['seconds']:.0f} s",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores, {machine['os']}; "
        f"load average (1, 5, 15 min) {machine['load_average']} at start, "
        f"{meta.get('load_average_end', '?')} at the end",
        f"- Software: Python {machine['python']}, Mosquitto {machine['mosquitto']}, "
        f"paho-mqtt {machine['paho_mqtt']}, msgpack {machine['msgpack']}, "
        f"SQLite {machine['sqlite']}",
        "",
        "## Figures",
        "",
        *_table(report),
        "",
        *_missed(report),
        "",
        "Details of this run:",
        "",
        "```json",
        _json(report["details"]),
        "```",
        "",
        "## How each figure is measured",
        "",
    ]
    for figure in FIGURES:
        lines += [f"**{figure.title}** (`{figure.key}`, {figure.unit}). {figure.method}", ""]
    lines += [
        "## Notes and findings",
        "",
        NOTES_BEGIN,
        (notes or _DEFAULT_NOTES).strip(),
        NOTES_END,
        "",
    ]
    return "\n".join(lines)


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True, default=str)


def existing_notes(path: Path) -> str | None:
    """The hand-written notes of an earlier report at ``path``, if any."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    start, end = text.find(NOTES_BEGIN), text.find(NOTES_END)
    if start < 0 or end < start:
        return None
    return text[start + len(NOTES_BEGIN) : end].strip() or None


def write_markdown(path: Path, report: Mapping[str, Any]) -> None:
    """Write the report to ``path``, keeping the notes section of the file it replaces."""
    text = render_markdown(report, notes=existing_notes(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def command_line(*, quick: bool, as_json: bool, output: Path | None) -> str:
    """The `evc bench` command that produces this report."""
    parts = ["evc", "bench"]
    if quick:
        parts.append("--quick")
    if as_json:
        parts.append("--json")
    if output is not None:
        parts += ["--output", str(output)]
    return " ".join(parts)
