"""The cloud's model registry: signed manifests and content-addressed artifacts on disk.

Layout under the registry root::

    artifacts/<sha256>            the model bytes, named by their SHA-256 (stored once)
    models/<name>/<version>.json  the signed manifest of one published version

Every file is written to a temporary name and then renamed (artifacts) or hard-linked (manifests)
into place, so a reader never sees half a file and two publishers of the same version cannot
both succeed. A published version is never replaced: devices may already run it.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pydantic import ValidationError

from evc.errors import EvcError, ModelError, TopicError
from evc.inference import Detector
from evc.models.manifest import DEFAULT_CHUNK_BYTES, Compatibility, Manifest, ManifestError
from evc.models.signing import MAX_MANIFEST_BYTES, SignedManifest, SigningKey
from evc.wire.delivery import MAX_CHUNK_BYTES
from evc.wire.topics import validate_name

_SHA256 = re.compile(r"[0-9a-f]{64}")
_MANIFEST_SUFFIX = ".json"


class RegistryError(EvcError):
    """A model cannot be published to, or found in, the registry."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def compatibility_of(path: Path) -> Compatibility:
    """What a device needs to run the ONNX detection model at ``path``.

    The model is loaded and run once on a blank frame, so a model that ONNX Runtime cannot run is
    refused here, at publication, rather than on a camera.

    Raises:
        RegistryError: (reason ``model``) the file is not a detection model EVC can run.
    """
    try:
        detector = Detector(path)
    except ModelError as exc:
        raise RegistryError(f"{path} is not a model EVC can run: {exc}", reason="model") from exc
    height, width = detector.input_size
    return Compatibility(
        task="detect", input_shape=(3, height, width), classes=detector.class_names
    )


class ModelRegistry:
    """Published model versions and their artifacts, under one directory."""

    def __init__(self, root: Path) -> None:
        """Use ``root`` as the registry; its folders are created on the first publication."""
        self._root = root
        self._artifacts = root / "artifacts"
        self._models = root / "models"

    @property
    def root(self) -> Path:
        """The registry directory."""
        return self._root

    def publish(
        self, *, name: str, version: str, artifact: Path, key: SigningKey,
        compatibility: Compatibility | None = None, chunk_size: int = DEFAULT_CHUNK_BYTES,
        created_ms: int | None = None,
    ) -> SignedManifest:
        """Store ``artifact`` as ``name`` version ``version``, signed with ``key``.

        Args:
            name: Model name, 1-64 characters from ``[A-Za-z0-9_.-]``.
            version: Version, same rules; never reused for another artifact.
            artifact: The ONNX model file.
            key: Signs the manifest.
            compatibility: What devices need; by default read from the model itself.
            chunk_size: Bytes per transfer chunk.
            created_ms: Publication time, Unix milliseconds (default: now).

        Raises:
            RegistryError: the name or version is invalid (reason ``name``), the chunk size is
                not positive (``chunk_size``), the version exists (``exists``), the file is not
                a runnable model (``model``) or cannot be read or is empty (``artifact``), or
                the registry cannot be written (``io``).
        """
        self._check_names(name, version)
        if not 0 < chunk_size <= MAX_CHUNK_BYTES:
            raise RegistryError(
                f"chunk size {chunk_size} is not in 1..{MAX_CHUNK_BYTES} (one chunk must fit one "
                "MQTT message on the fog broker)", reason="chunk_size",
            )
        target = self._manifest_path(name, version)
        if target.exists():
            raise _exists(name, version)
        if compatibility is None:
            compatibility = compatibility_of(artifact)
        manifest = _describe(
            artifact, name=name, version=version, chunk_size=chunk_size,
            compatibility=compatibility,
            created_ms=time.time_ns() // 1_000_000 if created_ms is None else created_ms,
        )
        signed = key.sign(manifest)
        if len(signed.to_json()) > MAX_MANIFEST_BYTES:  # gateways and devices would refuse it
            raise RegistryError(
                f"chunks of {chunk_size} bytes make a manifest over {MAX_MANIFEST_BYTES} bytes "
                "(a digest per chunk); use larger chunks", reason="chunk_size",
            )
        self._store_artifact(artifact, manifest)
        self._store_manifest(target, signed)
        return signed

    def versions(self, name: str | None = None) -> list[SignedManifest]:
        """Published versions (of ``name``, or of every model), by name then publication time.

        Raises:
            RegistryError: ``name`` is invalid (reason ``name``), or a stored manifest is
                unreadable or not where it belongs (reason ``corrupt``).
        """
        if name is not None:
            self._check_names(name)
            folders = [self._models / name]
        else:
            folders = sorted(self._models.iterdir()) if self._models.is_dir() else []
        found = [
            self._read(path)
            for folder in folders if folder.is_dir()
            for path in folder.glob(f"*{_MANIFEST_SUFFIX}")
        ]
        return sorted(found, key=_order)

    def get(self, name: str, version: str) -> SignedManifest:
        """The signed manifest of ``name`` version ``version``.

        Raises:
            RegistryError: the version was never published (reason ``unknown``), the name or
                version is invalid (``name``), or its manifest is unreadable (``corrupt``).
        """
        self._check_names(name, version)
        path = self._manifest_path(name, version)
        if not path.is_file():
            raise RegistryError(f"model {name}:{version} is not in the registry", reason="unknown")
        return self._read(path)

    def latest(self, name: str) -> SignedManifest:
        """The most recently published version of ``name``.

        Raises:
            RegistryError: no version of ``name`` was published (reason ``unknown``).
        """
        versions = self.versions(name)
        if not versions:
            raise RegistryError(f"model {name} is not in the registry", reason="unknown")
        return versions[-1]

    def artifact_path(self, sha256: str) -> Path | None:
        """The stored artifact whose SHA-256 is ``sha256``, or None.

        ``sha256`` may come from the network: anything but 64 lower-case hex digits is None,
        so it can never name a path outside the registry.
        """
        if not _SHA256.fullmatch(sha256):
            return None
        path = self._artifacts / sha256
        return path if path.is_file() else None

    def find(self, sha256: str) -> SignedManifest | None:
        """The most recently published version whose artifact is ``sha256``, or None."""
        matches = [signed for signed in self.versions() if signed.manifest.sha256 == sha256]
        return max(matches, key=lambda signed: signed.manifest.created_ms, default=None)

    # -- storage ---------------------------------------------------------------------------

    def _check_names(self, name: str, version: str | None = None) -> None:
        # The same rules as topic segments: they also keep both safe as file names.
        try:
            validate_name(name, what="model name")
            if version is not None:
                validate_name(version, what="model version")
        except TopicError as exc:
            raise RegistryError(str(exc), reason="name") from exc

    def _manifest_path(self, name: str, version: str) -> Path:
        return self._models / name / f"{version}{_MANIFEST_SUFFIX}"

    def _store_artifact(self, artifact: Path, manifest: Manifest) -> None:
        target = self._artifacts / manifest.sha256
        if target.is_file():
            return  # content-addressed: the same bytes are already there
        with _temporary(self._artifacts) as temp:
            try:
                shutil.copyfile(artifact, temp)
            except OSError as exc:
                raise RegistryError(f"cannot copy {artifact}: {exc}", reason="artifact") from exc
            # The file may have changed since it was hashed; what is stored must match.
            try:
                manifest.check_artifact(temp)
            except ManifestError as exc:
                raise RegistryError(
                    f"{artifact} changed while it was published", reason="artifact"
                ) from exc
            _fsync(temp)
            os.replace(temp, target)

    def _store_manifest(self, target: Path, signed: SignedManifest) -> None:
        with _temporary(target.parent) as temp:
            temp.write_bytes(signed.to_json())
            _fsync(temp)
            try:
                # link() fails if the target exists, where replace() would overwrite a version
                # that another publisher stored since the check in publish().
                os.link(temp, target)
            except FileExistsError as exc:
                raise _exists(signed.manifest.name, signed.manifest.version) from exc

    def _read(self, path: Path) -> SignedManifest:
        try:
            signed = SignedManifest.parse(path.read_bytes())
        except (OSError, ManifestError) as exc:
            raise RegistryError(f"cannot read {path}: {exc}", reason="corrupt") from exc
        if path != self._manifest_path(signed.manifest.name, signed.manifest.version):
            raise RegistryError(
                f"{path} holds {signed.manifest.label}, not the version its path names",
                reason="corrupt",
            )
        return signed


def _describe(
    artifact: Path, *, name: str, version: str, compatibility: Compatibility, created_ms: int,
    chunk_size: int,
) -> Manifest:
    try:
        return Manifest.describe(
            artifact, name=name, version=version, compatibility=compatibility,
            created_ms=created_ms, chunk_size=chunk_size,
        )
    except OSError as exc:
        raise RegistryError(f"cannot read {artifact}: {exc}", reason="artifact") from exc
    except ValidationError as exc:  # an empty file, or a negative publication time
        raise RegistryError(f"cannot describe {artifact}: {exc}", reason="artifact") from exc


def _order(signed: SignedManifest) -> tuple[str, int, str]:
    manifest = signed.manifest
    return manifest.name, manifest.created_ms, manifest.version


def _exists(name: str, version: str) -> RegistryError:
    return RegistryError(f"model {name}:{version} is already published", reason="exists")


@contextmanager
def _temporary(directory: Path) -> Iterator[Path]:
    """A temporary file name in ``directory`` (created), removed on exit unless moved away."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=directory, prefix=".", suffix=".tmp")
    except OSError as exc:
        raise RegistryError(f"cannot write to {directory}: {exc}", reason="io") from exc
    os.close(fd)
    path = Path(name)
    try:
        yield path
    except OSError as exc:
        raise RegistryError(f"cannot write to {directory}: {exc}", reason="io") from exc
    finally:
        path.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    with path.open("rb") as file:
        os.fsync(file.fileno())
