"""`evc bench --quick` on the learning loop's sections: both figures computed and sane.

The quick plan trains for 15 s only, so the gain is only checked to be positive and marked as
coming from a short budget; the full run is what measures it against its target.
"""

from __future__ import annotations

import json

import pytest

from evc.bench.processes import BenchError
from evc.bench.runner import QUICK, run_bench

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_quick_bench_of_model_delivery_and_learning(capsys: pytest.CaptureFixture[str]) -> None:
    code = run_bench(quick=True, as_json=True, output=None, only=["models", "learning"])
    doc = json.loads(capsys.readouterr().out)

    assert code == 0, doc["meta"]["errors"]
    assert doc["meta"]["sections"] == ["learning", "models"]
    assert "gateway_msgs_per_s" not in doc  # the other sections did not run

    # One copy of v2 crossed the uplink; every device got its own from the fog.
    delivery = doc["details"]["model_delivery"]
    assert doc["model_uplink_copies_per_site"] == 1.0
    assert doc["targets"]["model_uplink_copies_per_site"]["pass"]
    assert delivery["devices"] == QUICK.model_devices
    assert delivery["cloud_bytes_served"] == delivery["relay_fetched_bytes"]
    assert delivery["fog_bytes_served"] >= QUICK.model_devices * delivery["artifact_bytes"]
    assert 0 < doc["model_swap_s"] < 180

    # v2 was trained on the samplers' picks and scored on held-out frames.
    learning = doc["details"]["learning"]
    assert "model_v2_map50_gain" in doc["targets"]
    assert learning["short_training_budget"] is True
    assert 0 < learning["samples"] <= QUICK.learn_cameras * QUICK.learn_per_camera
    assert learning["train_steps"] > 0
    assert learning["v1_shifted_map50"] < 0.35  # v1 does badly on the shifted scene
    assert doc["model_v2_map50_gain"] > 0
    assert learning["v2_base_map50"] > 0.8  # replay kept the base scene


def test_an_unknown_section_is_refused() -> None:
    with pytest.raises(BenchError, match="no benchmark section"):
        run_bench(quick=True, as_json=True, output=None, only=["modles"])
