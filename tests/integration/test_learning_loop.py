"""The learning loop end to end on real brokers: the scene shifts, devices sample hard examples,
the cloud trains v2 on them, v2 rolls out through the fog canary first, and mAP@0.5 on the
shifted scene rises."""

from __future__ import annotations

import threading
from contextlib import ExitStack
from pathlib import Path

import pytest
from conftest import cloud_config, gateway_config, start_cloud, start_gateway

from evc.config import CloudModelsConfig, GatewayModelsConfig
from evc.harness import Broker
from evc.learning_demo import LoopSettings, run_learning_loop
from evc.models.signing import SigningKey, generate_keypair

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SITE = "loop-site"


def test_hard_examples_up_a_better_model_down(
    evc_fog_broker: Broker, evc_cloud_broker: Broker, tmp_path: Path
) -> None:
    keys = generate_keypair(tmp_path / "keys")
    progress: list[str] = []
    with ExitStack() as stack:
        cloud = start_cloud(stack, cloud_config(
            site=SITE, store_path=tmp_path / "cloud.db", cloud=evc_cloud_broker,
            models=CloudModelsConfig(registry=tmp_path / "registry", tick_s=0.25),
        ))
        gateway = start_gateway(stack, gateway_config(
            site=SITE, state_dir=tmp_path / "gateway", fog=evc_fog_broker,
            cloud=evc_cloud_broker,
            models=GatewayModelsConfig(trusted_keys=[keys.public_path]),
        ))
        summary = run_learning_loop(
            work=tmp_path, site=SITE, fog_url=evc_fog_broker.url, cloud=cloud, gateway=gateway,
            key=SigningKey.load(keys.private_path), public_key=keys.public_path,
            settings=LoopSettings(
                cameras=3, samples=60, budget_s=30, eval_frames=60, promote_after_s=2,
                max_base_loss=0.1,
            ),
            progress=progress.append, stop=threading.Event(),
        )

    assert summary["published"] == "shapes:2", summary
    # v2 is better where v1 failed, on held-out frames no camera ever sent.
    assert summary["shifted_gain"] >= 0.10, summary
    assert summary["candidate_shifted_map50"] > summary["base_model_shifted_map50"]
    assert summary["rollout"] == "canary -> promoted -> complete", progress
    assert summary["devices_on_v2"] == summary["devices"] == 3
    assert summary["frames_with_v2"] > 0  # frames detected by v2 carry its version
    assert summary["model_uplink_copies"] == 1.0  # the fog fetched v2 once for the site
    assert summary["labelled"] > 0
