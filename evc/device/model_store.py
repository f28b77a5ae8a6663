"""The model slot's disk: model files by SHA-256 and the record of what a reboot comes up on.

``models_dir`` holds one ``<sha256>.onnx`` per model the slot runs or may roll back to, and
``active.json``: the active model, the one it replaced, the slot's state and the model that last
failed. Every file is written atomically (a temporary file, fsync, rename), so a power cut
leaves either the old content or the new, never half of it.

Example::

    store = ModelStore(models_dir=Path("var/models"))
    record = store.read()  # None on a first boot, or when active.json is unreadable
    path = store.add(artifact, manifest.sha256)
    store.write(ActiveRecord(active=ref, state=ModelState.PROBATION))
    store.prune(keep={ref.sha256})
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from pydantic import Field, ValidationError

from evc.config import StrictModel
from evc.inference.detector import Detector

log = logging.getLogger(__name__)

ACTIVE_FILE = "active.json"
_MODEL_FILE = re.compile(r"^[0-9a-f]{64}\.onnx$")


class ModelState(StrEnum):
    """What the slot is doing with its active model."""

    SERVING = "serving"
    PROBATION = "probation"
    ROLLED_BACK = "rolled_back"


class ModelRef(StrictModel):
    """Which model: its name, version and the SHA-256 of its file."""

    name: str = Field(description="Model name, e.g. `shapes`.")
    version: str = Field(description="Model version, stamped on the frames it detects.")
    sha256: str = Field(description="SHA-256 of the model file, hex.")


@dataclass(frozen=True, slots=True)
class Failure:
    """The model that last failed and why: what heartbeats report until another one fails."""

    reason: str
    version: str
    # None only when read from a record written before failed models were kept by digest.
    sha256: str | None

    def of(self, ref: ModelRef) -> bool:
        """True if this failure is ``ref``'s: by digest, or by version when it has none."""
        if self.sha256 is not None:
            return self.sha256 == ref.sha256
        return self.version == ref.version


class ActiveRecord(StrictModel):
    """The content of ``active.json``: what a reboot comes up on."""

    active: ModelRef = Field(description="The active model; its file is `<sha256>.onnx`.")
    previous: ModelRef | None = Field(None, description="The model it replaced, kept on disk.")
    state: ModelState = Field(ModelState.SERVING, description="State when it was written.")
    rejected_sha256: str | None = Field(
        None, description="The last model that failed; refused until a different one comes."
    )
    failed_version: str | None = Field(
        None, description="Version of the model that last failed (heartbeat `model_failed`)."
    )
    failed_sha256: str | None = Field(
        None,
        description="SHA-256 of the model that last failed (heartbeat `model_failed_sha256`).",
    )
    failure_reason: str | None = Field(
        None, description="Why it failed (heartbeat `model_failure`), e.g. `probation_error`."
    )

    @property
    def failure(self) -> Failure | None:
        """The recorded failure, or None if no model failed (or the record predates them)."""
        if self.failed_version is None:
            return None
        return Failure(
            reason=self.failure_reason or "unknown", version=self.failed_version,
            sha256=self.failed_sha256,
        )


@dataclass(frozen=True, slots=True)
class Recovered:
    """What ``active.json`` says to come up on, with the models it names loaded from disk."""

    record: ActiveRecord
    active: Detector | None  # None: the recorded active model is missing, corrupt or won't load
    fallback: Detector | None  # the previous model, loaded only for a record on probation


class ModelStore:
    """Model files and ``active.json`` in one folder.

    Writes raise :class:`OSError` (a full disk, a read-only mount): the slot decides whether
    that refuses an install or is only counted. Reads never raise: an unreadable record or model
    file is logged and treated as absent, so a camera always comes up on some model.

    Args:
        models_dir: the folder; created if missing.
    """

    def __init__(self, *, models_dir: Path) -> None:
        self.models_dir = Path(models_dir)
        self.models_dir.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        """Where the model file with this SHA-256 lives (whether or not it does yet)."""
        return self.models_dir / f"{sha256}.onnx"

    def read(self) -> ActiveRecord | None:
        """The record of the active model, or None if there is none or it cannot be read."""
        path = self.models_dir / ACTIVE_FILE
        try:
            return ActiveRecord.model_validate_json(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            log.warning("ignoring unreadable %s: %s", path, exc)
            return None

    def write(self, record: ActiveRecord) -> None:
        """Replace ``active.json`` with ``record``, atomically."""
        write_atomically(self.models_dir / ACTIVE_FILE, record.model_dump_json(indent=2).encode())

    def add(self, artifact: Path, sha256: str) -> Path:
        """Copy a model file in as ``<sha256>.onnx`` (the caller checked the digest)."""
        path = self.path(sha256)
        write_atomically(path, artifact)
        return path

    def keep(self, ref: ModelRef, source: Path) -> None:
        """Make sure ``ref``'s file is in the folder, copying it from ``source`` if it is not."""
        path = self.path(ref.sha256)
        if source.resolve() != path.resolve() and not path.exists():
            write_atomically(path, source)

    def discard(self, sha256: str) -> None:
        """Delete a model file, if it is there."""
        self.path(sha256).unlink(missing_ok=True)

    def verified(self, ref: ModelRef) -> Path | None:
        """``ref``'s file if it is there and matches its SHA-256, else None."""
        path = self.path(ref.sha256)
        try:
            matches = sha256_file(path) == ref.sha256
        except OSError as exc:
            log.warning("cannot read recorded model %s: %s", ref.version, exc)
            return None
        if not matches:
            log.warning("%s does not match its SHA-256; not loading it", path)
            return None
        return path

    def recover(self, load: Callable[[Path], Detector]) -> Recovered | None:
        """Read the record and load what it names with ``load``; None without a record.

        Probation starts over after a reboot, so the previous model is loaded only if the
        record is on probation: it is what a failing model falls back to.
        """
        record = self.read()
        if record is None:
            return None
        active = self.load(record.active, load)
        fallback = None
        if active is not None and record.state is ModelState.PROBATION and record.previous:
            fallback = self.load(record.previous, load)
        return Recovered(record=record, active=active, fallback=fallback)

    def load(self, ref: ModelRef, load: Callable[[Path], Detector]) -> Detector | None:
        """``ref``'s file loaded with ``load``, or None if it is missing, corrupt or won't load."""
        path = self.verified(ref)
        if path is None:
            return None
        try:
            return load(path)
        # Whatever stops a recorded model from loading, the camera comes up on another one.
        except Exception as exc:
            log.warning("cannot load recorded model %s: %s", ref.version, exc)
            return None

    def prune(self, keep: Iterable[str]) -> None:
        """Delete the model files whose SHA-256 is not in ``keep``."""
        kept = set(keep)
        for path in self.models_dir.iterdir():
            if _MODEL_FILE.match(path.name) and path.name[:64] not in kept:
                path.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    """The SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomically(target: Path, content: Path | bytes) -> None:
    """Write ``content`` (bytes, or a file to copy) so ``target`` is never seen half written."""
    tmp = target.with_name(f".{target.name}.tmp")
    with tmp.open("wb") as out:
        if isinstance(content, bytes):
            out.write(content)
        else:
            with content.open("rb") as source:
                shutil.copyfileobj(source, out, 1 << 20)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, target)
