"""The rollout state machine: canaries first, promotion after a healthy period, halt on rollback."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from evc.cloud.models import PublishError
from evc.cloud.registry import ModelRegistry
from evc.cloud.rollout import DeviceReport, RolloutController, RolloutError, Stage
from evc.models import Compatibility
from evc.models.signing import SignedManifest, SigningKey, generate_keypair
from evc.synthetic.sample_model import sample_model_path

SITE = "depot"
COMPAT = Compatibility(input_shape=(3, 160, 160), classes=("a", "b"))


class Fleet:
    """What the controller sees and does: device reports in, retained manifests out."""

    def __init__(self) -> None:
        self.now_ms = 1_000_000
        self.reports: list[DeviceReport] = []
        self.retained: dict[tuple[str, str], str | None] = {}

    def publish(self, site: str, group: str, manifest: SignedManifest | None) -> None:
        self.retained[(site, group)] = None if manifest is None else manifest.manifest.version

    def report(self, device: str, group: str, version: str, sha256: str, **extra: str) -> None:
        self.reports = [r for r in self.reports if r.device != device]
        self.reports.append(DeviceReport(
            device=device, group=group, model=version, sha256=sha256,
            state=extra.get("state", "serving"), failed=extra.get("failed"),
            failure=extra.get("failure"), ts_ms=self.now_ms,
            failed_sha256=extra.get("failed_sha256"),
        ))

    def of(self, _site: str) -> Sequence[DeviceReport]:
        return list(self.reports)


@pytest.fixture
def setup(tmp_path: Path) -> tuple[RolloutController, Fleet, dict[str, str]]:
    key = SigningKey.load(generate_keypair(tmp_path / "keys").private_path)
    registry = ModelRegistry(tmp_path / "registry")
    v2_file = tmp_path / "v2.onnx"
    v2_file.write_bytes(sample_model_path().read_bytes() + b"\0")  # another artifact
    shas = {}
    for version, path in (("1", sample_model_path()), ("2", v2_file)):
        signed = registry.publish(
            name="shapes", version=version, artifact=path, key=key, compatibility=COMPAT
        )
        shas[version] = signed.manifest.sha256
    fleet = Fleet()
    controller = RolloutController(
        path=tmp_path / "rollouts.db", registry=registry, publish=fleet.publish,
        reports=fleet.of, clock=lambda: fleet.now_ms,
    )
    controller.set_default(site=SITE, name="shapes", version="1")
    return controller, fleet, shas


def test_canaries_first_then_everyone_after_a_healthy_period(
    setup: tuple[RolloutController, Fleet, dict[str, str]],
) -> None:
    controller, fleet, sha = setup
    fleet.report("cam-1", "canary", "1", sha["1"])
    fleet.report("cam-2", "all", "1", sha["1"])
    rollout = controller.start(
        site=SITE, name="shapes", version="2", canary_group="canary", promote_after_s=30
    )
    assert fleet.retained == {(SITE, "all"): "1", (SITE, "canary"): "2"}

    controller.tick()  # the canary still runs v1
    assert controller.get(rollout.id).stage is Stage.CANARY
    fleet.now_ms += 5_000
    fleet.report("cam-1", "canary", "2", sha["2"], state="probation")
    controller.tick()  # healthy from now on
    fleet.now_ms += 29_000
    controller.tick()
    assert controller.get(rollout.id).stage is Stage.CANARY  # not healthy for 30 s yet

    fleet.now_ms += 2_000
    changed = controller.tick()
    assert [r.stage for r in changed] == [Stage.PROMOTED]
    assert fleet.retained == {(SITE, "all"): "2", (SITE, "canary"): None}

    fleet.report("cam-2", "all", "2", sha["2"])
    controller.tick()
    assert controller.get(rollout.id).stage is Stage.COMPLETE


def test_a_canary_that_rolls_back_halts_the_rollout(
    setup: tuple[RolloutController, Fleet, dict[str, str]],
) -> None:
    controller, fleet, sha = setup
    rollout = controller.start(
        site=SITE, name="shapes", version="2", canary_group="canary", promote_after_s=30
    )
    fleet.now_ms += 1_000
    fleet.report(
        "cam-1", "canary", "1", sha["1"], state="rolled_back", failed="2", failure="latency"
    )

    controller.tick()

    halted = controller.get(rollout.id)
    assert halted.stage is Stage.HALTED
    assert halted.reason is not None
    assert "cam-1" in halted.reason
    assert "latency" in halted.reason
    # Canaries fall back to the site default, which never stopped being v1.
    assert fleet.retained == {(SITE, "all"): "1", (SITE, "canary"): None}
    controller.tick()  # a halted rollout stays halted
    assert controller.get(rollout.id).stage is Stage.HALTED


def test_a_rollback_after_promotion_restores_the_previous_default(
    setup: tuple[RolloutController, Fleet, dict[str, str]],
) -> None:
    controller, fleet, sha = setup
    rollout = controller.start(
        site=SITE, name="shapes", version="2", canary_group="canary", promote_after_s=0
    )
    fleet.report("cam-1", "canary", "2", sha["2"])
    controller.tick()
    assert controller.get(rollout.id).stage is Stage.PROMOTED

    fleet.now_ms += 1_000
    fleet.report("cam-9", "all", "1", sha["1"], state="rolled_back", failed="2", failure="load")
    controller.tick()

    assert controller.get(rollout.id).stage is Stage.HALTED
    assert fleet.retained[(SITE, "all")] == "1"


def test_a_failure_of_another_model_with_the_same_version_does_not_halt(
    setup: tuple[RolloutController, Fleet, dict[str, str]],
) -> None:
    controller, fleet, sha = setup
    rollout = controller.start(
        site=SITE, name="shapes", version="2", canary_group="canary", promote_after_s=30
    )
    fleet.now_ms += 1_000
    fleet.report(
        "cam-1", "canary", "1", sha["1"], state="rolled_back", failed="2", failure="load",
        failed_sha256="ef" * 32,  # another model's version 2
    )

    controller.tick()

    assert controller.get(rollout.id).stage is Stage.CANARY
    assert fleet.retained[(SITE, "canary")] == "2"


def test_a_failure_with_the_rollouts_sha256_halts(
    setup: tuple[RolloutController, Fleet, dict[str, str]],
) -> None:
    controller, fleet, sha = setup
    rollout = controller.start(
        site=SITE, name="shapes", version="2", canary_group="canary", promote_after_s=30
    )
    fleet.now_ms += 1_000
    fleet.report(
        "cam-1", "canary", "1", sha["1"], state="rolled_back", failed="shapes-2",
        failure="probation_error", failed_sha256=sha["2"],
    )

    controller.tick()

    assert controller.get(rollout.id).stage is Stage.HALTED
    assert fleet.retained == {(SITE, "all"): "1", (SITE, "canary"): None}


def test_no_promotion_without_any_canary_reporting(
    setup: tuple[RolloutController, Fleet, dict[str, str]],
) -> None:
    controller, fleet, sha = setup
    fleet.report("cam-2", "all", "1", sha["1"])
    rollout = controller.start(
        site=SITE, name="shapes", version="2", canary_group="canary", promote_after_s=0
    )
    fleet.now_ms += 60_000
    controller.tick()

    assert controller.get(rollout.id).stage is Stage.CANARY


def test_one_active_rollout_per_site_and_never_to_all_at_once(
    setup: tuple[RolloutController, Fleet, dict[str, str]],
) -> None:
    controller, _fleet, _sha = setup
    with pytest.raises(RolloutError, match="canary group"):
        controller.start(site=SITE, name="shapes", version="2", canary_group="all")
    controller.start(site=SITE, name="shapes", version="2", canary_group="canary")
    with pytest.raises(RolloutError, match="already"):
        controller.start(site=SITE, name="shapes", version="2", canary_group="canary")


def test_rollouts_and_desired_models_survive_a_restart(
    setup: tuple[RolloutController, Fleet, dict[str, str]], tmp_path: Path,
) -> None:
    controller, fleet, _sha = setup
    rollout = controller.start(site=SITE, name="shapes", version="2", canary_group="canary")
    controller.close()
    again = RolloutController(
        path=tmp_path / "rollouts.db", registry=ModelRegistry(tmp_path / "registry"),
        publish=fleet.publish, reports=fleet.of, clock=lambda: fleet.now_ms,
    )
    fleet.retained.clear()

    again.republish()

    assert again.get(rollout.id).stage is Stage.CANARY
    assert fleet.retained == {(SITE, "all"): "1", (SITE, "canary"): "2"}


def test_a_rollout_needs_a_default_to_fall_back_to(tmp_path: Path) -> None:
    key = SigningKey.load(generate_keypair(tmp_path / "keys").private_path)
    registry = ModelRegistry(tmp_path / "registry")
    registry.publish(
        name="shapes", version="1", artifact=sample_model_path(), key=key, compatibility=COMPAT
    )
    fleet = Fleet()
    controller = RolloutController(
        path=tmp_path / "rollouts.db", registry=registry, publish=fleet.publish,
        reports=fleet.of, clock=lambda: fleet.now_ms,
    )

    with pytest.raises(RolloutError, match="no default model"):
        controller.start(site=SITE, name="shapes", version="1", canary_group="canary")
    assert controller.rollouts() == []
    assert fleet.retained == {}


def test_a_canary_manifest_that_cannot_be_published_records_no_rollout(
    setup: tuple[RolloutController, Fleet, dict[str, str]],
) -> None:
    controller, fleet, _sha = setup

    def unreachable(site: str, group: str, manifest: SignedManifest | None) -> None:
        raise PublishError("the cloud broker is away")

    controller._publish = unreachable  # the broker goes away between two commands
    with pytest.raises(PublishError):
        controller.start(site=SITE, name="shapes", version="2", canary_group="canary")
    assert controller.rollouts(SITE) == []  # so the next attempt is not "already active"

    controller._publish = fleet.publish
    rollout = controller.start(site=SITE, name="shapes", version="2", canary_group="canary")
    assert rollout.stage is Stage.CANARY


def test_an_operator_can_abort_an_active_rollout(
    setup: tuple[RolloutController, Fleet, dict[str, str]],
) -> None:
    controller, fleet, _sha = setup
    rollout = controller.start(site=SITE, name="shapes", version="2", canary_group="canary")

    aborted = controller.abort(rollout.id)

    assert (aborted.stage, aborted.reason) == (Stage.HALTED, "aborted by an operator")
    assert fleet.retained == {(SITE, "all"): "1", (SITE, "canary"): None}
    with pytest.raises(RolloutError, match="not active"):
        controller.abort(rollout.id)
