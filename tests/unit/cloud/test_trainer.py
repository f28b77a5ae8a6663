"""The sample-model trainer: stored samples in, a v2 ONNX model out, scored and gated.

The fine-tuning test runs 15 fixed steps (a few seconds): enough to show the pipeline lifts
the shifted domain, not the demo's figure (docs/SAMPLE_MODEL.md has that measurement).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from evc.cloud.dataset import Dataset
from evc.cloud.labelling import SyntheticTruthLabeller
from evc.cloud.store import IncomingRecord, SqliteRecordStore
from evc.cloud.trainer import (
    Evaluation,
    GateConfig,
    SampleModelConfig,
    SampleModelTrainer,
    evaluate_candidate,
    gate,
    held_out_frames,
    training_images,
)
from evc.errors import TrainingError
from evc.synthetic import Domain, SceneConfig, random_frames
from evc.synthetic.sample_model import sample_model_path
from evc.training import metadata
from evc.wire import Kind, Sample, encode_sample, whole_frame


def shifted_store(path: Path, count: int) -> SqliteRecordStore:
    """A store holding ``count`` SAMPLE records of shifted frames with their scene truth."""
    store = SqliteRecordStore(path)
    frames = random_frames(77, count, config=SceneConfig(domain=Domain.SHIFTED))
    for seq, frame in enumerate(frames):
        sample = Sample(
            model_version="shapes-1", reason="few", width=160, height=160,
            regions=whole_frame(frame.image), class_ids=np.zeros(0, np.uint16),
            scores=np.zeros(0, np.float32), boxes=np.zeros((0, 4), np.float32),
            truth_class_ids=frame.class_ids.astype(np.uint16), truth_boxes=frame.boxes,
        )
        payload = encode_sample(origin="cam-1", epoch=1, seq=seq, ts_ms=seq, sample=sample)
        store.insert([IncomingRecord(
            site="s1", origin="cam-1", epoch=1, seq=seq, kind=int(Kind.SAMPLE), ts_ms=seq,
            stored_ms=seq, gateway="gw", detections=0, payload=payload,
        )])
    return store


def test_fine_tuning_from_stored_samples_writes_a_better_v2(tmp_path: Path) -> None:
    store = shifted_store(tmp_path / "c.db", 48)
    images = training_images(Dataset.from_store(store).label(SyntheticTruthLabeller()))
    assert len(images) == 48
    trainer = SampleModelTrainer(
        config=SampleModelConfig(version="shapes-2-test", max_steps=15, warmup_steps=5)
    )
    out = tmp_path / "v2.onnx"
    result = trainer.train(images, base_model=sample_model_path(), out=out, budget_s=120)
    assert (result.steps, result.stopped_by, result.images) == (15, "steps", 48)
    props = metadata(onnx.load(str(out)))
    assert props["evc_model_version"] == "shapes-2-test"
    assert props["evc_base_model"] == "shapes-1"
    assert props["names"] == "{0: 'circle', 1: 'square', 2: 'triangle'}"
    assert props["train_images"] == "48"
    evaluation = evaluate_candidate(out, sample_model_path(), frames=30)
    assert evaluation.baseline_shifted < 0.35  # v1 does badly on the shifted scene
    assert evaluation.shifted_gain >= 0.05
    decision = gate(evaluation, config=GateConfig(min_shifted_gain=0.05, max_base_loss=0.5))
    assert decision.passed, decision.reasons


def test_the_baseline_against_itself_is_refused(tmp_path: Path) -> None:
    evaluation = evaluate_candidate(sample_model_path(), sample_model_path(), frames=20)
    assert evaluation.candidate_shifted == evaluation.baseline_shifted
    assert evaluation.base_loss == 0
    decision = gate(evaluation)
    assert not decision.passed
    assert "shifted" in decision.reasons[0]


def scores(*, base: float, shifted: float) -> Evaluation:
    return Evaluation(candidate_base=base, candidate_shifted=shifted, baseline_base=0.98,
                      baseline_shifted=0.15, frames=100, seed=1)


@pytest.mark.parametrize(
    ("base", "shifted", "passed", "reasons"),
    [
        (0.97, 0.40, True, ()),
        (0.97, 0.24, False, ("shifted",)),  # gains 0.09 < 0.10
        (0.94, 0.60, False, ("base",)),  # loses 0.04 > 0.03
        (0.90, 0.20, False, ("shifted", "base")),
    ],
)
def test_gate_needs_a_shifted_gain_and_a_kept_base(
    base: float, shifted: float, passed: bool, reasons: tuple[str, ...]
) -> None:
    decision = gate(scores(base=base, shifted=shifted),
                    config=GateConfig(min_shifted_gain=0.10, max_base_loss=0.03))
    assert decision.passed is passed
    assert len(decision.reasons) == len(reasons)
    for reason, word in zip(decision.reasons, reasons, strict=True):
        assert reason.startswith(word)


def test_held_out_frames_are_seeded_and_differ_by_domain() -> None:
    first, again = held_out_frames(frames=3), held_out_frames(frames=3)
    assert np.array_equal(first[Domain.SHIFTED][0].image, again[Domain.SHIFTED][0].image)
    assert first[Domain.BASE][0].domain is Domain.BASE
    assert first[Domain.SHIFTED][0].domain is Domain.SHIFTED
    training = next(random_frames(77, 1, config=SceneConfig(domain=Domain.SHIFTED)))
    assert not np.array_equal(first[Domain.SHIFTED][0].image, training.image)


def test_trainer_refuses_nothing_to_train_on_and_other_classes(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="nothing"):
        SampleModelTrainer().train([], base_model=sample_model_path(), out=tmp_path / "x.onnx",
                                   budget_s=1)
    image = training_images(Dataset.from_store(shifted_store(tmp_path / "c.db", 1)).label(
        SyntheticTruthLabeller()))
    other = SampleModelTrainer(class_names=("cat", "dog", "bird"))
    with pytest.raises(TrainingError, match="classes"):
        other.train(image, base_model=sample_model_path(), out=tmp_path / "x.onnx", budget_s=1)
    with pytest.raises(TrainingError):
        SampleModelTrainer().train(image, base_model=tmp_path / "missing.onnx",
                                   out=tmp_path / "x.onnx", budget_s=1)
    assert not (tmp_path / "x.onnx").exists()


def test_only_labelled_items_become_training_images(tmp_path: Path) -> None:
    dataset = Dataset.from_store(shifted_store(tmp_path / "c.db", 2))
    assert training_images(dataset) == []
    images = training_images(dataset.label(SyntheticTruthLabeller()))
    assert len(images) == 2
    assert images[0].image.shape == (160, 160, 3)
    assert images[0].boxes.shape[1] == 4
