"""Heartbeat health fields come from what was recorded."""

from __future__ import annotations

from evc.device.health import InferenceHealth


def test_percentiles_and_errors_come_from_the_window() -> None:
    health = InferenceHealth(window=100)
    for ms in range(1, 101):
        health.record(float(ms))
    health.record_error()
    fields = health.fields()
    assert fields["inference_ms_p50"] == 50.5
    assert 99.0 <= fields["inference_ms_p99"] <= 100.0
    assert fields["inference_errors"] == 1
    assert fields["rss_bytes"] > 1_000_000
    assert fields["fps"] > 0


def test_window_keeps_only_recent_frames() -> None:
    health = InferenceHealth(window=10)
    for _ in range(50):
        health.record(100.0)
    for _ in range(10):
        health.record(1.0)
    assert health.fields()["inference_ms_p99"] == 1.0


def test_no_frames_means_no_latency_fields() -> None:
    fields = InferenceHealth().fields()
    assert "inference_ms_p50" not in fields
    assert "fps" not in fields
