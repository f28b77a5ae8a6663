"""The default fog pipeline on the seeded scene: far fewer uplink bytes, exactly the same counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from evc.bench import uplink
from evc.harness import Broker


@pytest.mark.integration
@pytest.mark.slow
def test_track_aggregate_compress_keeps_exact_counts_on_the_seeded_scene(
    evc_fog_broker: Broker, evc_cloud_broker: Broker, tmp_path: Path
) -> None:
    # Two cameras run the sample detector on the seeded synthetic scene for 10 s of frames;
    # a real gateway with [track, aggregate] and zstd forwards them to the cloud broker.
    figures = uplink.measure(
        evc_fog_broker, evc_cloud_broker, tmp_path, cameras=2, fps=10, seconds=10
    )
    assert figures.detections > 0
    assert figures.uplink_counts_exact == 1.0  # per-class summary sums == detections published
    assert figures.uplink_reduction_ratio >= 20
