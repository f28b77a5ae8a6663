"""The model manifest: what a signed model update promises about its artifact.

A manifest names the model and its version, pins the artifact's bytes (SHA-256 of the whole file
and of every chunk, so a receiver can refuse one bad chunk and ask again instead of refetching
everything), and says which devices may run it (``compatibility``). The publisher signs the
manifest's canonical JSON (:meth:`Manifest.canonical`); a receiver verifies that signature before
it fetches a byte of the artifact (:mod:`evc.models.signing`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

from pydantic import Field, ValidationError, model_validator

from evc.config import StrictModel
from evc.errors import EvcError
from evc.wire.delivery import MAX_CHUNK_BYTES

MANIFEST_FORMAT = 1
DEFAULT_CHUNK_BYTES = 64 * 1024
_HEX64 = r"^[0-9a-f]{64}$"


class ManifestError(EvcError):
    """A manifest is malformed, or does not match its artifact."""

    def __init__(self, message: str, *, reason: str = "manifest") -> None:
        super().__init__(message)
        self.reason = reason


class Compatibility(StrictModel):
    """What a device must support to run the model."""

    task: str = Field("detect", description="What the model does; devices check it.")
    input_shape: tuple[int, int, int] = Field(
        description="The model's input as (channels, height, width)."
    )
    classes: tuple[str, ...] = Field(description="Class names, in the model's output order.")


class Manifest(StrictModel):
    """A model version and the exact bytes of its artifact."""

    format: int = Field(MANIFEST_FORMAT, description="Manifest format version.")
    name: str = Field(min_length=1, max_length=64, description="Model name, e.g. `shapes`.")
    version: str = Field(min_length=1, max_length=64, description="Model version, e.g. `2`.")
    sha256: str = Field(pattern=_HEX64, description="SHA-256 of the whole artifact, hex.")
    size: int = Field(gt=0, description="Artifact size in bytes.")
    chunk_size: int = Field(
        gt=0, le=MAX_CHUNK_BYTES,
        description="Bytes per chunk (the last may be shorter); one chunk fits one MQTT message "
        "on the fog broker.",
    )
    chunk_sha256: tuple[str, ...] = Field(description="SHA-256 of every chunk, in order, hex.")
    compatibility: Compatibility = Field(description="What a device must support.")
    created_ms: int = Field(ge=0, description="When it was published, Unix milliseconds.")

    @model_validator(mode="after")
    def _chunks_cover_the_artifact(self) -> Manifest:
        if len(self.chunk_sha256) != self.chunk_count:
            raise ValueError(
                f"{len(self.chunk_sha256)} chunk digests for {self.chunk_count} chunks"
            )
        return self

    @property
    def chunk_count(self) -> int:
        """How many chunks the artifact is cut into."""
        return -(-self.size // self.chunk_size)

    @property
    def label(self) -> str:
        """``name:version``, for logs and metrics."""
        return f"{self.name}:{self.version}"

    def chunk_length(self, index: int) -> int:
        """The length in bytes of chunk ``index``."""
        if not 0 <= index < self.chunk_count:
            raise ManifestError(f"chunk {index} of {self.chunk_count}", reason="chunk_index")
        return min(self.chunk_size, self.size - index * self.chunk_size)

    def canonical(self) -> bytes:
        """The bytes that are signed: compact JSON with sorted keys."""
        return json.dumps(
            self.model_dump(mode="json"), sort_keys=True, separators=(",", ":")
        ).encode()

    @classmethod
    def parse(cls, data: bytes | str) -> Manifest:
        """Parse a manifest's JSON; raise :class:`ManifestError` naming what is wrong."""
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise ManifestError(f"bad manifest: {exc}") from exc

    @classmethod
    def describe(
        cls, artifact: Path, *, name: str, version: str, compatibility: Compatibility,
        created_ms: int, chunk_size: int = DEFAULT_CHUNK_BYTES,
    ) -> Manifest:
        """The manifest of the file ``artifact``, hashed chunk by chunk."""
        whole = hashlib.sha256()
        digests = []
        size = 0
        for chunk in _chunks_of(artifact, chunk_size):
            whole.update(chunk)
            digests.append(hashlib.sha256(chunk).hexdigest())
            size += len(chunk)
        return cls(
            name=name, version=version, sha256=whole.hexdigest(), size=size,
            chunk_size=chunk_size, chunk_sha256=tuple(digests), compatibility=compatibility,
            created_ms=created_ms,
        )

    def check_chunk(self, index: int, data: bytes) -> None:
        """Raise :class:`ManifestError` unless ``data`` is exactly chunk ``index``."""
        if len(data) != self.chunk_length(index):
            raise ManifestError(
                f"chunk {index} has {len(data)} bytes, expected {self.chunk_length(index)}",
                reason="chunk_size",
            )
        if hashlib.sha256(data).hexdigest() != self.chunk_sha256[index]:
            raise ManifestError(f"chunk {index} does not match its digest", reason="chunk_digest")

    def check_artifact(self, artifact: Path) -> None:
        """Raise :class:`ManifestError` unless the file ``artifact`` is exactly this artifact."""
        whole = hashlib.sha256()
        size = 0
        for chunk in _chunks_of(artifact, self.chunk_size):
            whole.update(chunk)
            size += len(chunk)
        if size != self.size:
            raise ManifestError(f"artifact has {size} bytes, expected {self.size}", reason="size")
        if whole.hexdigest() != self.sha256:
            raise ManifestError("artifact does not match its SHA-256", reason="digest")


def _chunks_of(path: Path, chunk_size: int) -> Iterator[bytes]:
    with path.open("rb") as file:
        while chunk := file.read(chunk_size):
            yield chunk
