"""The device's model slot: install a new model beside the running one, swap, watch, roll back.

A bad model must never take a camera down. :class:`ModelSlot` refuses an update that does not fit
the running model (task, classes, input shape), does not load, or misbehaves on a few synthetic
frames, and says why with a counted ``reason``; it never raises into the camera loop. A model
that passes is swapped in between two frames and kept on probation beside the previous one: if it
raises, the previous model takes over on the same frame; if it turns out slow or keeps producing
malformed output, the previous model takes over for good. The active model is recorded in
``models_dir/active.json`` so a reboot comes up on the model that was swapped in, still
reporting the model that last failed and why.

Example::

    slot = ModelSlot(models_dir=Path("var/models"), initial=Path("shapes-v1.onnx"))
    for frame in camera:
        result = slot.run(frame)
        device.publish_frame(result.detections, model_version=result.model_version)
    # on the updater thread, after the signature and digest were checked:
    outcome = slot.install(manifest, artifact)
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from pydantic import Field

from evc.config import StrictModel
from evc.device.model_store import (
    ACTIVE_FILE,
    ActiveRecord,
    Failure,
    ModelRef,
    ModelState,
    ModelStore,
    sha256_file,
)
from evc.errors import ConfigError, FrameError
from evc.inference.detector import Detections, Detector
from evc.models.manifest import Manifest
from evc.synthetic import SyntheticCamera

__all__ = [
    "ACTIVE_FILE",
    "ActiveRecord",
    "InstallOutcome",
    "ModelRef",
    "ModelSlot",
    "ModelState",
    "ModelStatus",
    "SlotDetections",
    "SlotSettings",
    "malformed",
]

log = logging.getLogger(__name__)

_SMOKE_SEED = 0
# Enough recent frames of the serving model for a stable median, without keeping history.
_BASELINE_WINDOW = 200

Image = npt.NDArray[np.uint8]


class InstallOutcome(StrictModel):
    """What :meth:`ModelSlot.install` did with one manifest."""

    installed: bool = Field(description="The model was swapped in and is on probation.")
    reason: str | None = Field(None, description="Why it was refused; None when installed.")
    version: str = Field(description="The manifest's model version.")
    detail: str = Field("", description="A human-readable explanation of a refusal.")


class ModelStatus(StrictModel):
    """A snapshot of the slot, for logs, heartbeats and tests."""

    name: str = Field(description="Name of the active model.")
    version: str = Field(description="Version of the active model.")
    sha256: str = Field(description="SHA-256 of the active model's file.")
    previous_version: str | None = Field(description="Version the active model replaced.")
    state: ModelState = Field(description="serving, probation or rolled_back.")
    failure_reason: str | None = Field(description="Reason of the last refusal or rollback.")
    failed_version: str | None = Field(description="Version that last failed.")
    failed_sha256: str | None = Field(description="SHA-256 of the model that last failed.")
    counts: dict[str, int] = Field(description="Installs, refusals and rollbacks by reason.")


@dataclass(frozen=True, kw_only=True, slots=True)
class SlotSettings:
    """How strictly a new model is tested before and after it is swapped in."""

    smoke_frames: int = 3
    smoke_max_ms: float = 2000.0
    probation_s: float = 60.0
    probation_min_frames: int = 20
    max_latency_ratio: float = 2.0
    max_error_rate: float = 0.05

    def __post_init__(self) -> None:
        if self.smoke_frames < 1 or self.probation_min_frames < 1:
            raise ConfigError("smoke_frames and probation_min_frames must be at least 1")
        if self.smoke_max_ms <= 0 or self.probation_s < 0 or self.max_latency_ratio <= 0:
            raise ConfigError("smoke_max_ms, max_latency_ratio must be > 0, probation_s >= 0")
        if not 0.0 <= self.max_error_rate < 1.0:
            raise ConfigError(f"max_error_rate must be within 0..1, got {self.max_error_rate}")


@dataclass(frozen=True, slots=True)
class SlotDetections:
    """One frame's detections and the version of the model that produced them."""

    detections: Detections
    model_version: str


@dataclass(frozen=True, slots=True)
class _Loaded:
    """A model in memory."""

    ref: ModelRef
    detector: Detector


@dataclass(slots=True)
class _Probation:
    """What a model on probation has shown so far; changed only under the slot's lock."""

    started: float
    baseline_ms: float
    latencies_ms: list[float] = field(default_factory=list)
    bad_frames: int = 0


@dataclass(frozen=True, slots=True)
class _Stage:
    """Everything a frame needs, swapped as one reference so a frame never sees half a swap."""

    active: _Loaded
    fallback: _Loaded | None = None
    previous: ModelRef | None = None
    probation: _Probation | None = None


class _Refused(Exception):  # noqa: N818 - internal control flow, never leaves this module
    """An install step refused the model."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


class ModelSlot:
    """The running detector and the machinery to replace it safely.

    ``run``/``detect`` are called on the camera thread, ``install`` on an updater thread.

    Args:
        models_dir: where model files (``<sha256>.onnx``) and ``active.json`` live.
        initial: the model to run when ``active.json`` names none that loads.
        detector_factory: loads a model file (default: ``Detector(path)``).
        smoke_frames: synthetic frames a new model must handle before it is swapped in.
        smoke_max_ms: a new model slower than this (median over the smoke frames) is refused.
        probation_s: seconds a new model is watched before the previous one is let go.
        probation_min_frames: frames a new model must see before it is judged on latency and
            error rate, and before its probation can end.
        max_latency_ratio: roll back when the new median latency exceeds this many times the
            previous model's.
        max_error_rate: roll back when more than this share of frames have malformed output.
        clock: monotonic seconds, for probation timing.

    Raises:
        ConfigError: a setting is out of range.
        ModelError: neither the recorded active model nor ``initial`` loads.
    """

    def __init__(
        self,
        *,
        models_dir: Path,
        initial: Path,
        detector_factory: Callable[[Path], Detector] | None = None,
        smoke_frames: int = 3,
        smoke_max_ms: float = 2000.0,
        probation_s: float = 60.0,
        probation_min_frames: int = 20,
        max_latency_ratio: float = 2.0,
        max_error_rate: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = SlotSettings(
            smoke_frames=smoke_frames, smoke_max_ms=smoke_max_ms, probation_s=probation_s,
            probation_min_frames=probation_min_frames, max_latency_ratio=max_latency_ratio,
            max_error_rate=max_error_rate,
        )
        self._store = ModelStore(models_dir=models_dir)
        self._factory = detector_factory or Detector
        self._clock = clock
        self._lock = threading.Lock()
        self._install_lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._failure: Failure | None = None
        self._rejected: str | None = None
        self._serving_ms: deque[float] = deque(maxlen=_BASELINE_WINDOW)
        self._smoke_images: list[Image] | None = None
        self._state = ModelState.SERVING
        self._stage = self._boot(Path(initial))
        self._prune()

    # -- the camera thread ----------------------------------------------------------------------

    def detect(self, image: Image) -> Detections:
        """Detect objects in one frame with the active model (see :meth:`run`)."""
        return self.run(image).detections

    def run(self, image: Image) -> SlotDetections:
        """Detect objects in one frame, and say which model version did.

        The active model is looked up once, so a swap takes effect between frames. A model on
        probation that raises is rolled back and the previous model runs on the same frame.

        Raises:
            FrameError: ``image`` is not an ``H x W x 3`` uint8 array.
            ModelError: the serving model (not on probation) failed.
        """
        stage = self._stage
        if stage.probation is None or stage.fallback is None:
            return self._serve(stage.active, image)
        return self._try_candidate(stage, stage.fallback, image)

    @property
    def model_version(self) -> str:
        """Version of the active model (frames may still be running on the one before)."""
        return self._stage.active.ref.version

    def _serve(self, loaded: _Loaded, image: Image) -> SlotDetections:
        start = time.perf_counter()
        found = loaded.detector(image)
        elapsed_ms = (time.perf_counter() - start) * 1e3
        with self._lock:
            self._serving_ms.append(elapsed_ms)
        return SlotDetections(found, loaded.ref.version)

    def _try_candidate(self, stage: _Stage, fallback: _Loaded, image: Image) -> SlotDetections:
        start = time.perf_counter()
        try:
            found = stage.active.detector(image)
        except FrameError:
            raise  # the frame's fault, not the model's
        # Whatever a new model raises, the camera must keep going on the previous one.
        except Exception as exc:
            with self._lock:
                self._roll_back(stage, "probation_error", f"{type(exc).__name__}: {exc}")
            return self._serve(fallback, image)
        elapsed_ms = (time.perf_counter() - start) * 1e3
        problem = malformed(found, len(stage.active.detector.class_names))
        with self._lock:
            self._observe(stage, elapsed_ms, bad=problem is not None)
        if problem is not None:
            return self._serve(fallback, image)
        return SlotDetections(found, stage.active.ref.version)

    def _observe(self, stage: _Stage, elapsed_ms: float, *, bad: bool) -> None:
        """Record one probation frame, then roll back, carry on, or end probation (locked)."""
        probation = stage.probation
        if self._stage is not stage or probation is None:
            return  # a frame that started before a rollback or another install
        probation.latencies_ms.append(elapsed_ms)
        probation.bad_frames += bad
        frames = len(probation.latencies_ms)
        if frames < self.settings.probation_min_frames:
            return
        p50 = float(np.median(probation.latencies_ms))
        if p50 > self.settings.max_latency_ratio * probation.baseline_ms:
            detail = f"median {p50:.1f} ms against {probation.baseline_ms:.1f} ms before"
            self._roll_back(stage, "probation_latency", detail)
        elif probation.bad_frames / frames > self.settings.max_error_rate:
            detail = f"{probation.bad_frames} of {frames} frames had malformed output"
            self._roll_back(stage, "probation_errors", detail)
        elif self._clock() - probation.started >= self.settings.probation_s:
            self._stage = _Stage(active=stage.active, previous=stage.previous)
            self._state = ModelState.SERVING
            self._serving_ms.clear()
            log.info("model %s passed probation", stage.active.ref.version)
            self._persist()

    def _roll_back(self, stage: _Stage, reason: str, detail: str) -> None:
        """Put the previous model back for good (locked)."""
        if self._stage is not stage or stage.fallback is None:
            return
        failed = stage.active.ref
        self._stage = _Stage(active=stage.fallback)
        self._state = ModelState.ROLLED_BACK
        self._fail(failed, reason)
        log.warning(
            "model %s rolled back to %s (%s): %s",
            failed.version, stage.fallback.ref.version, reason, detail,
        )
        self._persist()

    # -- the updater thread ---------------------------------------------------------------------

    def install(self, manifest: Manifest, artifact: Path) -> InstallOutcome:
        """Install a model whose signature and digest the caller has already verified.

        Never raises for a bad model: the outcome says whether it was swapped in, or why not
        (``incompatible``, ``load``, ``smoke_test``, ``already_active``, ``rejected_before``,
        ``storage``).
        """
        with self._install_lock:
            try:
                candidate = self._prepare(manifest, Path(artifact))
            except _Refused as refused:
                return self._refuse(manifest, refused)
            self._swap_in(candidate)
            self._prune()
            return InstallOutcome(installed=True, version=manifest.version)

    def _known_good(self) -> _Loaded:
        """The model a new one falls back to: a model still on probation never proved itself."""
        stage = self._stage
        return stage.fallback if stage.fallback is not None else stage.active

    def _prepare(self, manifest: Manifest, artifact: Path) -> _Loaded:
        """Screen, store, load and smoke-test a model, or raise :class:`_Refused`."""
        with self._lock:
            stage = self._stage
            if manifest.sha256 == stage.active.ref.sha256:
                raise _Refused("already_active", f"{manifest.label} is the active model")
            if manifest.sha256 == self._rejected:
                raise _Refused("rejected_before", f"{manifest.label} failed before")
            # A different model came: the last failure is no longer held against its bytes.
            self._rejected = None
        _check_compatible(manifest, stage.active.detector)
        path = self._add(artifact, manifest.sha256)
        ref = ModelRef(name=manifest.name, version=manifest.version, sha256=manifest.sha256)
        try:
            loaded = _Loaded(ref, self._load(path))
            _check_loaded(manifest, loaded.detector, stage.active.detector)
            self._smoke_test(loaded.detector)
            self._keep_on_disk(self._known_good())
        except (_Refused, OSError) as exc:
            if manifest.sha256 not in self._referenced():
                self._store.discard(manifest.sha256)
            if isinstance(exc, OSError):
                raise _Refused("storage", f"cannot keep the previous model: {exc}") from exc
            raise
        return loaded

    def _add(self, artifact: Path, sha256: str) -> Path:
        try:
            return self._store.add(artifact, sha256)
        except OSError as exc:
            raise _Refused("storage", f"cannot store the model: {exc}") from exc

    def _load(self, path: Path) -> Detector:
        try:
            return self._factory(path)
        # A factory may wrap the detector in anything; no failure of it may reach the caller.
        except Exception as exc:
            raise _Refused("load", f"{type(exc).__name__}: {exc}") from exc

    def _smoke_test(self, detector: Detector) -> None:
        """Refuse a model whose output on synthetic frames is malformed, or that is too slow."""
        latencies = []
        for image in self._smoke_frames():
            start = time.perf_counter()
            try:
                found = detector(image)
            # Anything a new model raises on a good frame is a failed smoke test.
            except Exception as exc:
                raise _Refused("smoke_test", f"{type(exc).__name__}: {exc}") from exc
            latencies.append((time.perf_counter() - start) * 1e3)
            if (problem := malformed(found, len(detector.class_names))) is not None:
                raise _Refused("smoke_test", problem)
        p50 = float(np.median(latencies))
        if p50 > self.settings.smoke_max_ms:
            raise _Refused("smoke_test", f"median {p50:.1f} ms > {self.settings.smoke_max_ms} ms")

    def _smoke_frames(self) -> list[Image]:
        if self._smoke_images is None:
            camera = SyntheticCamera(seed=_SMOKE_SEED)
            frames = itertools.islice(camera, self.settings.smoke_frames)
            self._smoke_images = [frame.image for frame in frames]
        return self._smoke_images

    def _swap_in(self, candidate: _Loaded) -> None:
        """Make ``candidate`` active, on probation beside the last model known to be good."""
        baseline_ms = self._baseline_ms(self._known_good())
        with self._lock:
            # Read again: the camera thread may have rolled back or ended a probation meanwhile.
            known_good = self._known_good()
            self._stage = _Stage(
                active=candidate,
                fallback=known_good,
                previous=known_good.ref,
                probation=_Probation(started=self._clock(), baseline_ms=baseline_ms),
            )
            self._state = ModelState.PROBATION
            self._counts["installed"] += 1
            self._persist()
        log.info("model %s swapped in, on probation", candidate.ref.version)

    def _baseline_ms(self, known_good: _Loaded) -> float:
        """The known-good model's median latency on live frames, else on the smoke frames."""
        with self._lock:
            recent = list(self._serving_ms)
        if recent:
            return float(np.median(recent))
        latencies = []
        for image in self._smoke_frames():
            start = time.perf_counter()
            try:
                known_good.detector(image)
            # Without a measured baseline, only the smoke-test limit can judge the new model.
            except Exception:
                return self.settings.smoke_max_ms
            latencies.append((time.perf_counter() - start) * 1e3)
        return float(np.median(latencies))

    def _keep_on_disk(self, loaded: _Loaded) -> None:
        """Make sure a model that may be rolled back to lives in ``models_dir``."""
        self._store.keep(loaded.ref, loaded.detector.path)

    def _refuse(self, manifest: Manifest, refused: _Refused) -> InstallOutcome:
        log.warning("model %s refused (%s): %s", manifest.label, refused.reason, refused.detail)
        ref = ModelRef(name=manifest.name, version=manifest.version, sha256=manifest.sha256)
        with self._lock:
            if refused.reason == "rejected_before":
                self._counts[refused.reason] += 1
                self._recall_failure(ref)
            elif refused.reason in ("already_active", "storage"):
                # Storage is the device's disk, not the model: count it, do not hold it against
                # the model (a rollout would halt on it); the updater tries again later.
                self._counts[refused.reason] += 1
            else:
                self._fail(ref, refused.reason)
                self._persist()
        return InstallOutcome(
            installed=False, reason=refused.reason, version=manifest.version,
            detail=refused.detail,
        )

    def _recall_failure(self, ref: ModelRef) -> None:
        """Report ``ref`` as failed again, if the failure was lost (locked).

        The cloud learns of a rollback only from heartbeats: a device that keeps refusing the
        same bytes must keep saying so, even with an ``active.json`` written before the failure
        fields were recorded.
        """
        failure = self._failure
        if failure is not None and failure.of(ref) and failure.sha256 is not None:
            return
        # A failure recorded before digests were kept gets the refused bytes' digest.
        reason = failure.reason if failure is not None and failure.of(ref) else "rejected_before"
        self._failure = Failure(reason=reason, version=ref.version, sha256=ref.sha256)
        self._persist()

    def _fail(self, ref: ModelRef, reason: str) -> None:
        """Remember a model that failed, so the same bytes are not tried again (locked)."""
        self._counts[reason] += 1
        self._failure = Failure(reason=reason, version=ref.version, sha256=ref.sha256)
        self._rejected = ref.sha256

    # -- status -------------------------------------------------------------------------------

    def status(self) -> ModelStatus:
        """The active model, its state, and what last went wrong."""
        with self._lock:
            stage, failure, counts = self._stage, self._failure, dict(self._counts)
            state = self._state
        ref = stage.active.ref
        return ModelStatus(
            name=ref.name, version=ref.version, sha256=ref.sha256,
            previous_version=stage.previous.version if stage.previous else None,
            state=state,
            failure_reason=failure.reason if failure else None,
            failed_version=failure.version if failure else None,
            failed_sha256=failure.sha256 if failure else None,
            counts=counts,
        )

    def heartbeat_fields(self) -> dict[str, str | int | float | None]:
        """``model``, ``model_state``, ``model_previous``, and the last failure: ``model_failed``
        (version), ``model_failed_sha256`` and ``model_failure`` (why)."""
        status = self.status()
        return {
            "model": status.version,
            "model_state": status.state.value,
            "model_previous": status.previous_version,
            "model_failed": status.failed_version,
            "model_failed_sha256": status.failed_sha256,
            "model_failure": status.failure_reason,
        }

    # -- disk -----------------------------------------------------------------------------------

    def _boot(self, initial: Path) -> _Stage:
        """Come up on the recorded active model if it loads, else on ``initial``."""
        recovered = self._store.recover(self._factory)
        if recovered is not None:
            record = recovered.record
            self._rejected = record.rejected_sha256
            # What a heartbeat last said went wrong must survive a reboot: a rollout waits for it
            # to halt.
            self._failure = record.failure
            if recovered.active is not None:
                return self._resume(record, recovered.active, recovered.fallback)
            self._failure = Failure(
                reason="boot_load", version=record.active.version, sha256=record.active.sha256
            )
            self._counts["boot_load"] += 1
        detector = self._factory(initial)
        ref = ModelRef(
            name=initial.stem, version=detector.model_version, sha256=sha256_file(initial)
        )
        return _Stage(active=_Loaded(ref, detector))

    def _resume(
        self, record: ActiveRecord, active: Detector, fallback: Detector | None
    ) -> _Stage:
        """Rebuild the stage ``active.json`` describes; probation starts over after a reboot."""
        if record.state is ModelState.ROLLED_BACK:
            self._state = ModelState.ROLLED_BACK
        loaded = _Loaded(record.active, active)
        if fallback is None or record.previous is None:
            return _Stage(active=loaded, previous=record.previous)
        self._state = ModelState.PROBATION
        known_good = _Loaded(record.previous, fallback)
        probation = _Probation(started=self._clock(), baseline_ms=self._baseline_ms(known_good))
        return _Stage(active=loaded, fallback=known_good, previous=record.previous,
                      probation=probation)

    def _persist(self) -> None:
        """Write ``active.json`` atomically (locked). A full disk must not stop the camera."""
        stage = self._stage
        failure = self._failure
        record = ActiveRecord(
            active=stage.active.ref, previous=stage.previous, state=self._state,
            rejected_sha256=self._rejected,
            failure_reason=failure.reason if failure else None,
            failed_version=failure.version if failure else None,
            failed_sha256=failure.sha256 if failure else None,
        )
        try:
            self._keep_on_disk(stage.active)
            self._store.write(record)
        except OSError as exc:
            self._counts["persist_failed"] += 1
            log.error("cannot record the active model in %s: %s", self._store.models_dir, exc)

    def _referenced(self) -> set[str]:
        """SHA-256 of the models the slot runs or may roll back to."""
        stage = self._stage
        refs = [stage.active.ref, stage.previous, stage.fallback.ref if stage.fallback else None]
        return {ref.sha256 for ref in refs if ref is not None}

    def _prune(self) -> None:
        """Delete model files that are neither active nor a rollback target."""
        self._store.prune(keep=self._referenced())


def malformed(found: Detections, num_classes: int) -> str | None:
    """Say what is wrong with a detector's output for one frame, or None if it is sane."""
    scores, boxes = np.asarray(found.scores), np.asarray(found.boxes)
    if len(found.class_ids) != len(scores) or boxes.shape != (len(scores), 4):
        return f"{len(scores)} scores, {len(found.class_ids)} classes, boxes {boxes.shape}"
    if not (np.isfinite(scores).all() and np.isfinite(boxes).all()):
        return "non-finite scores or boxes"
    if ((scores < 0) | (scores > 1)).any():
        return f"scores outside 0..1 (max {float(scores.max()):.3g})"
    if (np.asarray(found.class_ids) >= num_classes).any():
        return f"class ids beyond the model's {num_classes} classes"
    inside_x = (boxes[:, 0::2] >= 0) & (boxes[:, 0::2] <= found.width)
    inside_y = (boxes[:, 1::2] >= 0) & (boxes[:, 1::2] <= found.height)
    if not (inside_x.all() and inside_y.all()):
        return f"boxes outside the {found.width} x {found.height} frame"
    return None


def _check_compatible(manifest: Manifest, running: Detector) -> None:
    """Refuse a manifest that promises another task or other classes than the running model."""
    wanted = manifest.compatibility
    if wanted.task != "detect":
        raise _Refused("incompatible", f"task {wanted.task!r}, this device runs 'detect'")
    if wanted.classes != running.class_names:
        raise _Refused(
            "incompatible", f"classes {list(wanted.classes)} != {list(running.class_names)}"
        )


def _check_loaded(manifest: Manifest, loaded: Detector, running: Detector) -> None:
    """Refuse a model file that is not what its manifest says, or not like the running one."""
    shape = (3, *loaded.input_size)
    if shape != manifest.compatibility.input_shape:
        raise _Refused(
            "incompatible", f"input {shape} != manifest {manifest.compatibility.input_shape}"
        )
    if loaded.class_names != running.class_names:
        raise _Refused(
            "incompatible",
            f"model classes {list(loaded.class_names)} != {list(running.class_names)}",
        )
