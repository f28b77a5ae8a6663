"""The model slot installs, smoke-tests, swaps, watches and rolls back real ONNX models."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from models_for_tests import (
    FakeClock,
    constant_model,
    faulty_factory,
    manifest_for,
    with_metadata,
    yolo_output,
)

from evc.device.model_slot import ACTIVE_FILE, ActiveRecord, ModelSlot, ModelState, malformed
from evc.errors import ConfigError, FrameError
from evc.inference import Detections, Detector
from evc.models import Manifest
from evc.synthetic import SyntheticCamera
from evc.synthetic.sample_model import sample_model_path

SMOKE_FRAMES = 3
MIN_FRAMES = 20
V1 = "shapes-1"  # the sample model's own version, from its metadata


@pytest.fixture(scope="module")
def frames() -> list[npt.NDArray[np.uint8]]:
    return [f.image for f in itertools.islice(SyntheticCamera(seed=7), 40)]


@pytest.fixture(scope="module")
def v2_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return with_metadata(tmp_path_factory.mktemp("v2") / "v2.onnx", evc_model_version="shapes-2")


@pytest.fixture(scope="module")
def v2(v2_file: Path) -> Manifest:
    return manifest_for(v2_file, "2")


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


def make_slot(models_dir: Path, clock: FakeClock, **kwargs: object) -> ModelSlot:
    kwargs.setdefault("max_latency_ratio", 20.0)  # the shared test machine is noisy
    return ModelSlot(
        models_dir=models_dir, initial=sample_model_path(), clock=clock,
        probation_min_frames=MIN_FRAMES, **kwargs,  # type: ignore[arg-type]
    )


def active_json(models_dir: Path) -> ActiveRecord:
    return ActiveRecord.model_validate_json((models_dir / ACTIVE_FILE).read_bytes())


def same(a: Detections, b: Detections) -> bool:
    return (
        np.array_equal(a.class_ids, b.class_ids)
        and np.allclose(a.scores, b.scores)
        and np.allclose(a.boxes, b.boxes)
    )


def serve(slot: ModelSlot, frames: list[npt.NDArray[np.uint8]], n: int) -> list[str]:
    return [slot.run(frames[i % len(frames)]).model_version for i in range(n)]


class TestInstall:
    def test_swaps_in_on_probation_then_serves(
        self, models_dir: Path, clock: FakeClock, v2: Manifest, v2_file: Path, frames: list
    ) -> None:
        slot = make_slot(models_dir, clock)
        assert serve(slot, frames, 5) == [V1] * 5
        outcome = slot.install(v2, v2_file)
        assert outcome.installed
        assert outcome.reason is None
        status = slot.status()
        assert (status.version, status.state, status.previous_version) == (
            "2", ModelState.PROBATION, V1,
        )
        record = active_json(models_dir)
        assert (record.active.sha256, record.state) == (v2.sha256, ModelState.PROBATION)
        assert record.previous is not None
        assert record.previous.version == V1
        # Both files stay on disk, so a rollback needs no download.
        assert (models_dir / f"{v2.sha256}.onnx").read_bytes() == v2_file.read_bytes()
        assert (models_dir / f"{record.previous.sha256}.onnx").is_file()
        assert serve(slot, frames, MIN_FRAMES) == ["2"] * MIN_FRAMES
        assert slot.status().state is ModelState.PROBATION  # not long enough yet
        clock.advance(61)
        serve(slot, frames, 1)
        assert slot.status().state is ModelState.SERVING
        assert active_json(models_dir).state is ModelState.SERVING
        assert slot.heartbeat_fields() == {
            "model": "2", "model_state": "serving", "model_previous": V1,
            "model_failed": None, "model_failed_sha256": None, "model_failure": None,
        }

    def test_v2_detects_like_the_model_it_copies(
        self, models_dir: Path, clock: FakeClock, v2: Manifest, v2_file: Path, frames: list
    ) -> None:
        slot = make_slot(models_dir, clock)
        before = slot.detect(frames[0])
        assert len(before) > 0
        slot.install(v2, v2_file)
        assert same(slot.detect(frames[0]), before)

    def test_garbage_does_not_load_and_v1_keeps_serving(
        self, models_dir: Path, clock: FakeClock, tmp_path: Path, frames: list
    ) -> None:
        garbage = tmp_path / "garbage.onnx"
        garbage.write_bytes(b"not a model at all" * 100)
        slot = make_slot(models_dir, clock)
        outcome = slot.install(manifest_for(garbage, "3"), garbage)
        assert (outcome.installed, outcome.reason) == (False, "load")
        assert serve(slot, frames, 3) == [V1] * 3
        status = slot.status()
        assert (status.state, status.failure_reason, status.failed_version) == (
            ModelState.SERVING, "load", "3",
        )
        refused = manifest_for(garbage, "3")
        assert not (models_dir / f"{refused.sha256}.onnx").exists()  # the refused file is gone
        again = slot.install(refused, garbage)
        assert again.reason == "rejected_before"
        assert slot.status().counts == {"load": 1, "rejected_before": 1}

    def test_a_different_manifest_clears_the_refusal(
        self, models_dir: Path, clock: FakeClock, tmp_path: Path, v2: Manifest, v2_file: Path
    ) -> None:
        garbage = tmp_path / "garbage.onnx"
        garbage.write_bytes(b"\x00" * 512)
        slot = make_slot(models_dir, clock)
        assert slot.install(manifest_for(garbage, "3"), garbage).reason == "load"
        assert slot.install(v2, v2_file).installed
        assert slot.install(manifest_for(garbage, "3"), garbage).reason == "load"

    def test_other_classes_are_incompatible(
        self, models_dir: Path, clock: FakeClock, tmp_path: Path
    ) -> None:
        animals = with_metadata(
            tmp_path / "animals.onnx", names="{0: 'cat', 1: 'dog', 2: 'bird'}"
        )
        slot = make_slot(models_dir, clock)
        claimed = manifest_for(animals, "3", classes=("cat", "dog", "bird"))
        assert slot.install(claimed, animals).reason == "incompatible"
        # The manifest may claim the right classes; the file itself is checked too.
        disguised = with_metadata(
            tmp_path / "disguised.onnx", names="{0: 'cat', 1: 'dog', 2: 'bird'}",
            evc_model_version="shapes-4",
        )
        hidden = slot.install(manifest_for(disguised, "4"), disguised)
        assert hidden.reason == "incompatible"
        assert "cat" in hidden.detail
        assert slot.status().version == V1

    @pytest.mark.parametrize(
        ("task", "input_shape"), [("segment", (3, 160, 160)), ("detect", (3, 320, 320))]
    )
    def test_other_task_or_input_is_incompatible(
        self, models_dir: Path, clock: FakeClock, v2_file: Path,
        task: str, input_shape: tuple[int, int, int],
    ) -> None:
        slot = make_slot(models_dir, clock)
        manifest = manifest_for(v2_file, "2", task=task, input_shape=input_shape)
        assert slot.install(manifest, v2_file).reason == "incompatible"

    @pytest.mark.parametrize(
        ("box", "score"),
        [
            ((80.0, 80.0, 20.0, 20.0), 5.0),  # a score far outside 0..1
            ((float("nan"), 80.0, 20.0, 20.0), 0.9),  # a NaN box with a good score
        ],
    )
    def test_malformed_output_fails_the_smoke_test(
        self, models_dir: Path, clock: FakeClock, tmp_path: Path,
        box: tuple[float, float, float, float], score: float,
    ) -> None:
        bad = constant_model(tmp_path / "bad.onnx", yolo_output(box=box, score=score))
        assert Detector(bad).class_names == Detector(sample_model_path()).class_names
        slot = make_slot(models_dir, clock)
        outcome = slot.install(manifest_for(bad, "3"), bad)
        assert (outcome.installed, outcome.reason) == (False, "smoke_test")
        assert slot.status().version == V1

    def test_a_sane_small_graph_passes_the_smoke_test(
        self, models_dir: Path, clock: FakeClock, tmp_path: Path
    ) -> None:
        # The same graph as the malformed ones, with sane values: the smoke test is not blind.
        good = constant_model(tmp_path / "ok.onnx", yolo_output(box=(80, 80, 20, 20), score=0.9))
        slot = make_slot(models_dir, clock)
        assert slot.install(manifest_for(good, "3"), good).installed

    def test_a_slow_model_fails_the_smoke_test(
        self, models_dir: Path, clock: FakeClock, v2: Manifest, v2_file: Path
    ) -> None:
        slot = make_slot(models_dir, clock, smoke_max_ms=0.001)
        outcome = slot.install(v2, v2_file)
        assert outcome.reason == "smoke_test"
        assert "ms" in outcome.detail

    def test_the_active_model_is_not_installed_again(
        self, models_dir: Path, clock: FakeClock
    ) -> None:
        slot = make_slot(models_dir, clock)
        outcome = slot.install(manifest_for(sample_model_path(), "1"), sample_model_path())
        assert outcome.reason == "already_active"
        assert slot.status().failure_reason is None


class TestProbation:
    def test_a_model_that_raises_is_rolled_back_on_the_same_frame(
        self, models_dir: Path, clock: FakeClock, v2: Manifest, v2_file: Path, frames: list
    ) -> None:
        factory = faulty_factory(v2, good_calls=SMOKE_FRAMES + 4, fault="raise")
        slot = make_slot(models_dir, clock, detector_factory=factory)
        reference = Detector(sample_model_path())
        assert slot.install(v2, v2_file).installed
        assert serve(slot, frames, 4) == ["2"] * 4
        result = slot.run(frames[4])  # v2 raises on this frame
        assert result.model_version == V1
        assert same(result.detections, reference(frames[4]))
        status = slot.status()
        assert (status.version, status.state) == (V1, ModelState.ROLLED_BACK)
        assert (status.failure_reason, status.failed_version) == ("probation_error", "2")
        record = active_json(models_dir)
        assert (record.active.version, record.state) == (V1, ModelState.ROLLED_BACK)
        assert record.rejected_sha256 == v2.sha256
        assert serve(slot, frames, 3) == [V1] * 3
        assert slot.install(v2, v2_file).reason == "rejected_before"
        fields = slot.heartbeat_fields()
        assert (fields["model_failed"], fields["model_failure"]) == ("2", "probation_error")

    def test_a_slow_model_is_rolled_back_after_enough_frames(
        self, models_dir: Path, clock: FakeClock, v2: Manifest, v2_file: Path, frames: list
    ) -> None:
        factory = faulty_factory(v2, good_calls=SMOKE_FRAMES, fault="slow", delay_s=0.05)
        slot = make_slot(models_dir, clock, detector_factory=factory, max_latency_ratio=2.0)
        serve(slot, frames, 10)  # the baseline
        assert slot.install(v2, v2_file).installed
        versions = serve(slot, frames, MIN_FRAMES + 2)
        assert versions[: MIN_FRAMES - 1] == ["2"] * (MIN_FRAMES - 1)
        assert versions[MIN_FRAMES:] == [V1, V1]
        status = slot.status()
        assert status.state is ModelState.ROLLED_BACK
        assert status.failure_reason == "probation_latency"
        assert active_json(models_dir).active.version == V1

    def test_malformed_frames_are_replaced_and_then_rolled_back(
        self, models_dir: Path, clock: FakeClock, v2: Manifest, v2_file: Path, frames: list
    ) -> None:
        factory = faulty_factory(v2, good_calls=SMOKE_FRAMES + 10, fault="nan")
        slot = make_slot(models_dir, clock, detector_factory=factory)
        assert slot.install(v2, v2_file).installed
        results = [slot.run(frames[i]) for i in range(MIN_FRAMES + 1)]
        # Every frame gets sane detections: bad ones come from the previous model.
        assert all(malformed(r.detections, 3) is None for r in results)
        assert [r.model_version for r in results[:10]] == ["2"] * 10
        assert {r.model_version for r in results[10:]} == {V1}
        assert slot.status().failure_reason == "probation_errors"
        assert slot.status().state is ModelState.ROLLED_BACK

    def test_an_install_during_probation_falls_back_to_the_last_good_model(
        self, models_dir: Path, v2: Manifest, v2_file: Path, tmp_path: Path, frames: list
    ) -> None:
        clock = FakeClock()
        v3_file = with_metadata(tmp_path / "v3.onnx", evc_model_version="shapes-3")
        v3 = manifest_for(v3_file, "3")
        factory = faulty_factory(v3, good_calls=SMOKE_FRAMES, fault="raise")
        slot = make_slot(models_dir, clock, detector_factory=factory)
        assert slot.install(v2, v2_file).installed
        assert slot.install(v3, v3_file).installed
        assert slot.status().previous_version == V1  # v2 never proved itself
        assert slot.run(frames[0]).model_version == V1
        assert slot.status().failed_version == "3"


class TestReboot:
    def test_comes_up_on_the_swapped_in_model(
        self, models_dir: Path, clock: FakeClock, v2: Manifest, v2_file: Path, frames: list
    ) -> None:
        slot = make_slot(models_dir, clock, probation_s=0.0)
        slot.install(v2, v2_file)
        serve(slot, frames, MIN_FRAMES)
        assert slot.status().state is ModelState.SERVING
        rebooted = make_slot(models_dir, clock)
        status = rebooted.status()
        assert (status.version, status.state, status.previous_version) == (
            "2", ModelState.SERVING, V1,
        )
        assert rebooted.run(frames[0]).model_version == "2"

    def test_probation_resumes_after_a_reboot_and_can_still_roll_back(
        self, models_dir: Path, clock: FakeClock, v2: Manifest, v2_file: Path, frames: list
    ) -> None:
        make_slot(models_dir, clock).install(v2, v2_file)
        factory = faulty_factory(v2, good_calls=0, fault="raise")
        rebooted = make_slot(models_dir, clock, detector_factory=factory)
        assert rebooted.status().state is ModelState.PROBATION
        assert rebooted.run(frames[0]).model_version == V1
        assert rebooted.status().state is ModelState.ROLLED_BACK
        after = make_slot(models_dir, clock)
        assert (after.status().version, after.status().state) == (V1, ModelState.ROLLED_BACK)
        assert after.install(v2, v2_file).reason == "rejected_before"

    def test_a_rollback_is_still_reported_after_a_reboot(
        self, models_dir: Path, clock: FakeClock, v2: Manifest, v2_file: Path, frames: list
    ) -> None:
        factory = faulty_factory(v2, good_calls=SMOKE_FRAMES, fault="raise")
        slot = make_slot(models_dir, clock, detector_factory=factory)
        assert slot.install(v2, v2_file).installed
        slot.run(frames[0])  # v2 raises: rolled back
        record = active_json(models_dir)
        assert (record.failed_version, record.failure_reason) == ("2", "probation_error")
        rebooted = make_slot(models_dir, clock)
        fields = rebooted.heartbeat_fields()
        assert (fields["model_state"], fields["model_failed"], fields["model_failure"]) == (
            "rolled_back", "2", "probation_error",
        )
        assert rebooted.install(v2, v2_file).reason == "rejected_before"
        assert rebooted.heartbeat_fields()["model_failed"] == "2"

    def test_the_failed_models_sha256_is_reported_and_survives_a_reboot(
        self, models_dir: Path, clock: FakeClock, v2: Manifest, v2_file: Path, frames: list
    ) -> None:
        factory = faulty_factory(v2, good_calls=SMOKE_FRAMES, fault="raise")
        slot = make_slot(models_dir, clock, detector_factory=factory)
        assert slot.install(v2, v2_file).installed
        slot.run(frames[0])  # v2 raises: rolled back
        assert slot.status().failed_sha256 == v2.sha256
        assert slot.heartbeat_fields()["model_failed_sha256"] == v2.sha256
        assert active_json(models_dir).failed_sha256 == v2.sha256
        rebooted = make_slot(models_dir, clock)
        assert rebooted.status().failed_sha256 == v2.sha256
        fields = rebooted.heartbeat_fields()
        assert (fields["model_failed"], fields["model_failed_sha256"]) == ("2", v2.sha256)

    def test_a_record_without_the_failed_sha256_gets_it_on_the_next_refusal(
        self, models_dir: Path, clock: FakeClock, v2: Manifest, v2_file: Path, frames: list
    ) -> None:
        factory = faulty_factory(v2, good_calls=SMOKE_FRAMES, fault="raise")
        slot = make_slot(models_dir, clock, detector_factory=factory)
        assert slot.install(v2, v2_file).installed
        slot.run(frames[0])
        # An active.json written before failed models were recorded by digest.
        record = active_json(models_dir).model_copy(update={"failed_sha256": None})
        (models_dir / ACTIVE_FILE).write_text(record.model_dump_json())
        rebooted = make_slot(models_dir, clock)
        assert rebooted.heartbeat_fields()["model_failed_sha256"] is None
        assert rebooted.install(v2, v2_file).reason == "rejected_before"
        fields = rebooted.heartbeat_fields()
        assert (fields["model_failed"], fields["model_failed_sha256"], fields["model_failure"]) == (
            "2", v2.sha256, "probation_error",
        )
        assert active_json(models_dir).failed_sha256 == v2.sha256

    def test_a_refusal_as_rejected_before_restores_a_lost_failure(
        self, models_dir: Path, clock: FakeClock, v2: Manifest, v2_file: Path, frames: list
    ) -> None:
        factory = faulty_factory(v2, good_calls=SMOKE_FRAMES, fault="raise")
        slot = make_slot(models_dir, clock, detector_factory=factory)
        assert slot.install(v2, v2_file).installed
        slot.run(frames[0])
        # An active.json written before the failure fields were recorded.
        record = active_json(models_dir).model_copy(
            update={"failed_version": None, "failure_reason": None}
        )
        (models_dir / ACTIVE_FILE).write_text(record.model_dump_json())
        rebooted = make_slot(models_dir, clock)
        assert rebooted.heartbeat_fields()["model_failed"] is None
        assert rebooted.install(v2, v2_file).reason == "rejected_before"
        fields = rebooted.heartbeat_fields()
        assert (fields["model_failed"], fields["model_failure"]) == ("2", "rejected_before")
        assert fields["model_failed_sha256"] == v2.sha256
        assert active_json(models_dir).failed_version == "2"

    def test_an_unreadable_record_falls_back_to_the_initial_model(
        self, models_dir: Path, clock: FakeClock, v2: Manifest, v2_file: Path
    ) -> None:
        make_slot(models_dir, clock).install(v2, v2_file)
        (models_dir / f"{v2.sha256}.onnx").write_bytes(b"corrupted")
        assert make_slot(models_dir, clock).status().version == V1
        (models_dir / ACTIVE_FILE).write_text("{not json")
        assert make_slot(models_dir, clock).status().version == V1


def test_swap_happens_between_frames_while_the_camera_runs(
    models_dir: Path, clock: FakeClock, v2: Manifest, v2_file: Path, frames: list
) -> None:
    slot = make_slot(models_dir, clock)
    versions: list[str] = []
    errors: list[BaseException] = []
    installed = threading.Event()

    def camera() -> None:
        try:
            for i in itertools.count():
                result = slot.run(frames[i % len(frames)])
                assert isinstance(result.detections, Detections)
                versions.append(result.model_version)
                if installed.is_set() and versions.count("2") >= 10:
                    return
        except BaseException as exc:  # reported to the main thread, which asserts there is none
            errors.append(exc)

    thread = threading.Thread(target=camera)
    thread.start()
    while len(versions) < 5:
        threading.Event().wait(0.005)
    assert slot.install(v2, v2_file).installed
    installed.set()
    thread.join(timeout=60)
    assert not thread.is_alive()
    assert errors == []
    switches = [(a, b) for a, b in itertools.pairwise(versions) if a != b]
    assert switches == [(V1, "2")]


def test_settings_out_of_range_are_refused(models_dir: Path) -> None:
    with pytest.raises(ConfigError):
        ModelSlot(models_dir=models_dir, initial=sample_model_path(), max_error_rate=1.5)
    with pytest.raises(ConfigError):
        ModelSlot(models_dir=models_dir, initial=sample_model_path(), smoke_frames=0)


def test_a_bad_frame_during_probation_is_not_held_against_the_model(
    models_dir: Path, clock: FakeClock, v2: Manifest, v2_file: Path
) -> None:
    slot = make_slot(models_dir, clock)
    assert slot.install(v2, v2_file).installed
    with pytest.raises(FrameError):
        slot.run(np.zeros((10, 10), np.uint8))
    assert slot.status().state is ModelState.PROBATION


def output(scores: list[float], boxes: list[list[float]], class_ids: list[int]) -> Detections:
    return Detections(
        class_ids=np.array(class_ids, np.uint16), scores=np.array(scores, np.float32),
        boxes=np.array(boxes, np.float32).reshape(-1, 4), width=100, height=50,
    )


@pytest.mark.parametrize(
    ("found", "problem"),
    [
        (output([0.5], [[0, 0, 100, 50]], [2]), None),
        (output([], [], []), None),
        (output([1.5], [[0, 0, 10, 10]], [0]), "scores outside"),
        (output([0.5], [[0, 0, 10, np.inf]], [0]), "non-finite"),
        (output([0.5], [[0, 0, 101, 10]], [0]), "outside the 100 x 50 frame"),
        (output([0.5], [[0, -1, 10, 10]], [0]), "outside the 100 x 50 frame"),
        (output([0.5], [[0, 0, 10, 10]], [3]), "class ids beyond"),
    ],
)
def test_malformed_names_what_is_wrong(found: Detections, problem: str | None) -> None:
    verdict = malformed(found, 3)
    if problem is None:
        assert verdict is None
    else:
        assert verdict is not None
        assert problem in verdict


def test_a_full_or_broken_disk_is_not_held_against_the_model(
    models_dir: Path, clock: FakeClock, v2_file: Path, v2: Manifest
) -> None:
    slot = make_slot(models_dir, clock)
    blocker = models_dir / f"{v2.sha256}.onnx"
    blocker.mkdir()  # the artifact's place on disk cannot be written

    refused = slot.install(v2, v2_file)

    assert (refused.installed, refused.reason) == (False, "storage")
    status = slot.status()
    assert status.failed_version is None  # not reported as a model that failed ...
    assert status.counts["storage"] == 1  # ... but counted
    blocker.rmdir()
    assert slot.install(v2, v2_file).installed  # not refused as rejected_before
