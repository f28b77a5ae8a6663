"""One turn of the learning loop in the cloud: hard examples, labels, candidate, gate, registry.

:func:`retrain` reads the SAMPLE records a site's devices uploaded, labels them with a
:class:`~evc.cloud.labelling.Labeller`, fine-tunes the base model with a
:class:`~evc.cloud.trainer.Trainer`, scores the candidate beside the base model on held-out
seeded frames and applies the gate. Only a candidate that passes is published (signed) to the
registry, from where a rollout takes it to the devices.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from evc.cloud.dataset import Dataset
from evc.cloud.labelling import Labeller
from evc.cloud.registry import ModelRegistry
from evc.cloud.store import SqliteRecordStore
from evc.cloud.trainer import (
    Evaluation,
    GateConfig,
    GateDecision,
    SampleModelConfig,
    SampleModelTrainer,
    Trainer,
    TrainResult,
    evaluate_candidate,
    gate,
    training_images,
)
from evc.errors import TrainingError
from evc.models.signing import SignedManifest, SigningKey

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RetrainResult:
    """What one turn of the loop did."""

    samples: int
    labelled: int
    training: TrainResult
    evaluation: Evaluation
    decision: GateDecision
    published: SignedManifest | None

    def summary(self) -> dict[str, object]:
        """The figures a person wants to see, flat."""
        e = self.evaluation
        return {
            "samples": self.samples, "labelled": self.labelled,
            "train_steps": self.training.steps, "train_seconds": round(self.training.seconds, 1),
            "base_model_shifted_map50": round(e.baseline_shifted, 3),
            "candidate_shifted_map50": round(e.candidate_shifted, 3),
            "base_model_base_map50": round(e.baseline_base, 3),
            "candidate_base_map50": round(e.candidate_base, 3),
            "shifted_gain": round(e.shifted_gain, 3),
            "gate": "passed" if self.decision.passed else "; ".join(self.decision.reasons),
            "published": self.published.manifest.label if self.published else None,
        }


def retrain(
    *, store: SqliteRecordStore, base_model: Path, out: Path, version: str,
    labeller: Labeller, budget_s: float, site: str | None = None,
    trainer: Trainer | None = None, gate_config: GateConfig | None = None,
    eval_frames: int = 100,
) -> tuple[TrainResult, Evaluation, GateDecision, int, int]:
    """Train a candidate from ``site``'s hard examples and judge it against ``base_model``.

    Raises:
        TrainingError: no sample could be labelled, or training failed.
    """
    dataset = Dataset.from_store(store, site=site).label(labeller)
    images = training_images(dataset)
    if not images:
        raise TrainingError(
            f"none of the {len(dataset)} samples could be labelled by {labeller.name}"
        )
    trainer = trainer or SampleModelTrainer(config=SampleModelConfig(version=version))
    log.info("training on %d labelled samples for up to %.0f s", len(images), budget_s)
    training = trainer.train(images, base_model=base_model, out=out, budget_s=budget_s)
    evaluation = evaluate_candidate(training.model, base_model, frames=eval_frames)
    return training, evaluation, gate(evaluation, config=gate_config), len(dataset), len(images)


def retrain_and_publish(
    *, store: SqliteRecordStore, registry: ModelRegistry, key: SigningKey, name: str,
    base_version: str, version: str, labeller: Labeller, budget_s: float, work: Path,
    site: str | None = None, gate_config: GateConfig | None = None, eval_frames: int = 100,
) -> RetrainResult:
    """:func:`retrain` from ``name:base_version`` in the registry; publish ``name:version`` if
    the candidate passes the gate."""
    base = registry.get(name, base_version)
    base_path = registry.artifact_path(base.manifest.sha256)
    if base_path is None:
        raise TrainingError(f"the registry lacks the artifact of {base.manifest.label}")
    training, evaluation, decision, samples, labelled = retrain(
        store=store, base_model=base_path, out=work / f"{name}-{version}.onnx",
        version=version, labeller=labeller, budget_s=budget_s, site=site,
        gate_config=gate_config, eval_frames=eval_frames,
    )
    published = None
    if decision.passed:
        published = registry.publish(
            name=name, version=version, artifact=training.model, key=key
        )
    return RetrainResult(samples, labelled, training, evaluation, decision, published)
