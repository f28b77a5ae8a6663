"""Unit tests of the benchmark report: every required figure, verdicts, Markdown, kept notes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evc.bench import FIGURE_KEYS, build_report, render_markdown
from evc.bench.report import NOTES_BEGIN, NOTES_END, command_line, write_markdown

REQUIRED = (
    "raw_mqtt_qos1_msgs_per_s",
    "gateway_msgs_per_s",
    "gateway_detections_per_s",
    "gateway_vs_raw_ratio",
    "wire_bytes_per_detection",
    "json_bytes_per_detection",
    "outbox_enqueue_per_s",
    "outbox_drain_per_s",
    "e2e_latency_p50_ms",
    "e2e_latency_p99_ms",
    "drain_after_outage_speedup",
    "model_uplink_copies_per_site",
    "model_v2_map50_gain",
)
TARGETED = {
    "gateway_vs_raw_ratio": (0.5, 0.49),
    "gateway_detections_per_s": (50_000, 49_999),
    "wire_bytes_per_detection": (16, 16.1),
    "outbox_enqueue_per_s": (100_000, 99_999),
    "e2e_latency_p99_ms": (100, 100.5),
    "drain_after_outage_speedup": (10, 9.9),
    "model_uplink_copies_per_site": (1.0, 1.01),
    "model_v2_map50_gain": (0.15, 0.149),
}


def meta() -> dict[str, Any]:
    machine = {
        "cpu": "Test CPU", "cores": 2, "os": "Linux", "load_average": [0.1, 0.1, 0.1],
        "python": "3.11", "mosquitto": "2.0.11", "paho_mqtt": "2.2.0", "msgpack": "1.0",
        "sqlite": "3.40",
    }
    return {
        "command": "evc bench --quick", "date": "2026-01-01 00:00 UTC", "quick": True,
        "rounds": 3, "seconds": 42.0, "machine": machine, "load_average_end": [0.2, 0.1, 0.1],
    }


def report_with(values: dict[str, float]) -> dict[str, Any]:
    return build_report(values, runs={"gateway_msgs_per_s": [1.0, 2.0]}, details={}, meta=meta())


def test_every_required_figure_is_declared() -> None:
    assert set(REQUIRED) <= set(FIGURE_KEYS)


def test_report_has_every_figure_at_top_level_and_a_verdict_per_target() -> None:
    report = report_with(dict.fromkeys(FIGURE_KEYS, 1.0))
    assert set(REQUIRED) <= set(report)
    assert set(TARGETED) <= set(report["targets"])
    assert {"targets", "all_targets_met", "runs", "details", "meta"} <= set(report)


def test_targets_pass_at_the_limit_and_fail_just_past_it() -> None:
    at_limit = report_with({key: limit for key, (limit, _) in TARGETED.items()})
    past = report_with({key: beyond for key, (_, beyond) in TARGETED.items()})
    assert all(v["pass"] for v in at_limit["targets"].values())
    assert at_limit["all_targets_met"]
    assert not any(v["pass"] for v in past["targets"].values())
    assert not past["all_targets_met"]


def test_markdown_lists_figures_targets_machine_and_command() -> None:
    text = render_markdown(report_with({"gateway_vs_raw_ratio": 0.4, "e2e_latency_p99_ms": 20}))
    assert "`evc bench --quick`" in text
    for fact in ("Test CPU", "Mosquitto 2.0.11", "paho-mqtt 2.2.0", "| **MISSED** |", "| pass |"):
        assert fact in text
    for key in FIGURE_KEYS:
        assert f"(`{key}`" in text  # every figure has its method paragraph


def test_rewriting_the_report_keeps_the_hand_written_notes(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    write_markdown(path, report_with({"e2e_latency_p99_ms": 20}))
    text = path.read_text()
    notes = "The intake is CPU-bound in paho's MQTT 5 decoding."
    start, end = text.index(NOTES_BEGIN) + len(NOTES_BEGIN), text.index(NOTES_END)
    path.write_text(text[:start] + "\n" + notes + "\n" + text[end:])
    write_markdown(path, report_with({"e2e_latency_p99_ms": 30}))
    assert notes in path.read_text()


def test_command_line_reproduces_the_flags() -> None:
    assert command_line(quick=True, as_json=True, output=Path("docs/BENCHMARKS.md")) == (
        "evc bench --quick --json --output docs/BENCHMARKS.md"
    )
