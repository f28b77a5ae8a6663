"""A bad model rolled out on real brokers: the canary refuses it, reports why in its heartbeats,
the rollout halts, the rest of the site never runs it, and `evc model status` says so."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import (
    cloud_config,
    gateway_config,
    start_cloud,
    start_gateway,
    wait_for,
    write_yaml,
)
from onnx import TensorProto, helper, numpy_helper

from evc.cli.main import main
from evc.cloud.rollout import Stage
from evc.config import CloudModelsConfig, GatewayModelsConfig
from evc.device import Device
from evc.device.model_slot import ModelSlot
from evc.harness import Broker
from evc.models import Compatibility
from evc.models.signing import SigningKey, TrustedKeys, generate_keypair
from evc.synthetic import CLASS_NAMES
from evc.synthetic.sample_model import sample_model_path

pytestmark = pytest.mark.integration

SITE = "halt-site"


def _broken_model(target: Path) -> Path:
    """Shaped like the sample model (input, output, metadata) but its scores are far above 1."""
    sample = onnx.load(str(sample_model_path()))
    output = np.zeros((1, 4 + len(CLASS_NAMES), 400), np.float32)
    output[0, :4, :] = 40.0  # boxes in the frame...
    output[0, 4, :] = 5.0  # ... scored 5: no sane detector says that
    graph = helper.make_graph(
        [helper.make_node("ReduceMax", ["images"], ["peak"], keepdims=0),
         helper.make_node("Add", ["table", "peak"], ["output0"])],
        "broken_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 160, 160])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
        initializer=[numpy_helper.from_array(output, "table")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    helper.set_model_props(model, {p.key: p.value for p in sample.metadata_props})
    onnx.save(model, str(target))
    return target


def test_a_model_that_fails_on_the_canary_halts_the_rollout(
    evc_fog_broker: Broker, evc_cloud_broker: Broker, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    keys = generate_keypair(tmp_path / "keys")
    key, trusted = SigningKey.load(keys.private_path), TrustedKeys.load([keys.public_path])
    compatibility = Compatibility(input_shape=(3, 160, 160), classes=tuple(CLASS_NAMES))
    config = cloud_config(
        site=SITE, store_path=tmp_path / "cloud.db", cloud=evc_cloud_broker,
        models=CloudModelsConfig(registry=tmp_path / "registry", tick_s=0.25),
    )
    with ExitStack() as stack:
        cloud = start_cloud(stack, config)
        start_gateway(stack, gateway_config(
            site=SITE, state_dir=tmp_path / "gateway", fog=evc_fog_broker,
            cloud=evc_cloud_broker, models=GatewayModelsConfig(trusted_keys=[keys.public_path]),
        ))
        assert cloud.models is not None
        controller, registry = cloud.models.controller, cloud.models.registry
        assert controller is not None
        v1 = registry.publish(name="shapes", version="1", artifact=sample_model_path(), key=key)
        registry.publish(
            name="shapes", version="2", artifact=_broken_model(tmp_path / "broken.onnx"), key=key,
            compatibility=compatibility,
        )
        controller.set_default(site=SITE, name="shapes", version="1")

        def device(name: str, group: str) -> Device:
            made = Device(
                device_id=name, site=SITE, broker=evc_fog_broker.url,
                state_dir=tmp_path / "devices", heartbeat_interval_s=0.3,
            )
            slot = ModelSlot(models_dir=tmp_path / name, initial=sample_model_path())
            made.follow_models(slot, trusted=trusted, group=group)
            stack.callback(made.close, drain_timeout_s=0)
            return made.start()

        canary, other = device("cam-canary", "canary"), device("cam-other", "all")
        reporting: Callable[[], bool] = lambda: len(controller.reports(SITE)) == 2  # noqa: E731
        wait_for(reporting, message="both devices' heartbeats in the cloud store")

        rollout = controller.start(
            site=SITE, name="shapes", version="2", canary_group="canary", promote_after_s=1
        )
        wait_for(
            lambda: controller.get(rollout.id).stage is Stage.HALTED,
            message=lambda: f"a halt; rollout is {controller.get(rollout.id)}",
        )

        halted = controller.get(rollout.id)
        assert halted.reason is not None
        assert "cam-canary" in halted.reason
        assert "smoke_test" in halted.reason
        assert canary.models is not None
        assert other.models is not None
        v1_sha = v1.manifest.sha256
        assert canary.models.slot.status().sha256 == v1_sha  # never stopped serving v1
        assert other.models.slot.status().sha256 == v1_sha  # never offered v2
        assert set(controller.desired(SITE)) == {"all"}  # the canary entry is cleared
        metrics = cloud.metrics.registry
        assert metrics.get_sample_value(
            "evc_cloud_rollouts_halted_total", {"site": SITE, "model": "shapes"}
        ) == 1
        assert metrics.get_sample_value("evc_cloud_rollouts", {"stage": "halted"}) == 1
        assert controller.desired(SITE)["all"].manifest.version == "1"

        assert main(["model", "status", "--config", str(write_yaml(
            tmp_path / "cloud.yaml", config)), "--site", SITE, "--json"]) == 0
        status = json.loads(capsys.readouterr().out)[SITE]
        assert status["rollouts"][str(rollout.id)]["stage"] == "halted"
        assert status["devices"]["cam-canary"]["failure"] == "smoke_test"
        assert status["desired"] == {"all": "shapes:1"}


def test_a_model_for_other_classes_is_refused_and_the_old_one_keeps_serving(
    evc_fog_broker: Broker, evc_cloud_broker: Broker, tmp_path: Path
) -> None:
    keys = generate_keypair(tmp_path / "keys")
    key = SigningKey.load(keys.private_path)
    with ExitStack() as stack:
        cloud = start_cloud(stack, cloud_config(
            site=SITE, store_path=tmp_path / "cloud.db", cloud=evc_cloud_broker,
            models=CloudModelsConfig(registry=tmp_path / "registry"),
        ))
        start_gateway(stack, gateway_config(
            site=SITE, state_dir=tmp_path / "gateway", fog=evc_fog_broker,
            cloud=evc_cloud_broker, models=GatewayModelsConfig(trusted_keys=[keys.public_path]),
        ))
        assert cloud.models is not None
        assert cloud.models.controller is not None
        other_bytes = onnx.load(str(sample_model_path()))
        other_bytes.doc_string = "the same graph under other class names"
        onnx.save(other_bytes, str(tmp_path / "other.onnx"))
        cloud.models.registry.publish(
            name="shapes", version="9", artifact=tmp_path / "other.onnx", key=key,
            compatibility=Compatibility(input_shape=(3, 160, 160), classes=("car", "person")),
        )
        made = Device(
            device_id="cam-1", site=SITE, broker=evc_fog_broker.url,
            state_dir=tmp_path / "devices", heartbeat_interval_s=0,
        )
        slot = ModelSlot(models_dir=tmp_path / "cam-1", initial=sample_model_path())
        updater = made.follow_models(slot, trusted=TrustedKeys.load([keys.public_path]))
        stack.callback(made.close, drain_timeout_s=0)
        made.start()
        before = slot.status().sha256

        cloud.models.controller.set_default(site=SITE, name="shapes", version="9")

        wait_for(lambda: updater.refused["incompatible"] == 1, message="the refusal")
        assert slot.status().sha256 == before
        assert len(slot.detect(np.zeros((160, 160, 3), np.uint8)).scores) >= 0  # still serving
