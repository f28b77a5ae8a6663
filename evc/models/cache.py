"""The content-addressed artifact cache, with resumable partial downloads.

Layout under ``root``::

    sha256/<hex>          complete, verified artifacts, named by their SHA-256
    partial/<hex>.part    an artifact being fetched: received chunks at their offsets
    partial/<hex>.json    which chunks of the .part are written (replaced atomically)

A chunk is written and fsynced before the sidecar names it, so after a crash the sidecar never
claims a chunk that is not on disk; on reopening, every chunk it names is checked against the
manifest again anyway, so a torn or corrupted .part costs only the chunks it spoiled.
Eviction (past ``max_bytes``) removes the least recently used complete artifacts, never a
pinned one; :meth:`ArtifactCache.path` counts as a use.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from evc.errors import EvcError
from evc.models.manifest import Manifest, ManifestError

log = logging.getLogger(__name__)

_COMPLETE_DIR = "sha256"
_PARTIAL_DIR = "partial"


class CacheError(EvcError):
    """The cache could not do what was asked (``reason``: ``incomplete``, ``io``)."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class PartialArtifact:
    """An artifact being received chunk by chunk; made by :meth:`ArtifactCache.partial`.

    Not thread-safe: one receiver writes it.
    """

    def __init__(self, *, cache: ArtifactCache, manifest: Manifest) -> None:
        self.manifest = manifest
        self._cache = cache
        hex_digest = manifest.sha256
        self.part_path = cache.root / _PARTIAL_DIR / f"{hex_digest}.part"
        self.sidecar_path = cache.root / _PARTIAL_DIR / f"{hex_digest}.json"
        self._have: set[int] = set()
        self._open()

    @property
    def held(self) -> int:
        """How many chunks are written."""
        return len(self._have)

    def missing(self) -> list[int]:
        """The indices of the chunks not written yet, in order."""
        return [i for i in range(self.manifest.chunk_count) if i not in self._have]

    def write(self, index: int, data: bytes) -> bool:
        """Write chunk ``index`` at its offset, durably; False if it was already held.

        Raises:
            ManifestError: ``data`` is not chunk ``index`` of the manifest (reason
                ``chunk_index``, ``chunk_size`` or ``chunk_digest``); nothing is written.
            CacheError: the file could not be written (reason ``io``).
        """
        self.manifest.check_chunk(index, data)
        if index in self._have:
            return False
        try:
            self._write_at(index * self.manifest.chunk_size, data)
            self._have.add(index)
            self._save_sidecar()
        except OSError as exc:
            self._have.discard(index)
            raise CacheError(f"cannot write chunk {index}: {exc}", reason="io") from exc
        return True

    def complete(self) -> Path:
        """Verify the whole artifact and move it into the completed store; return its path.

        Raises:
            CacheError: chunks are still missing (reason ``incomplete``).
            ManifestError: the assembled file does not match the manifest's size or digest
                (reason ``size`` or ``digest``); the partial is discarded.
        """
        if self.missing():
            raise CacheError(
                f"{len(self.missing())} chunks of {self.manifest.label} are missing",
                reason="incomplete",
            )
        try:
            self.manifest.check_artifact(self.part_path)
        except ManifestError:
            # Every chunk matched its digest, so the manifest itself is inconsistent:
            # fetching again would only repeat this.
            self.discard()
            raise
        return self._cache._install(self.manifest, self.part_path, after=self._remove_sidecar)

    def discard(self) -> None:
        """Remove the partial file and its sidecar."""
        self._have.clear()
        for path in (self.part_path, self.sidecar_path):
            path.unlink(missing_ok=True)

    def _open(self) -> None:
        recorded = self._load_sidecar()
        if not self._part_has_its_size():
            recorded = set()
            with self.part_path.open("wb") as file:
                file.truncate(self.manifest.size)
        self._have = {i for i in recorded if self._holds(i)}
        if self._have != recorded:
            log.warning(
                "%d recorded chunks of %s did not verify; fetching them again",
                len(recorded - self._have), self.manifest.label,
            )
            self._save_sidecar()

    def _part_has_its_size(self) -> bool:
        try:
            return self.part_path.stat().st_size == self.manifest.size
        except FileNotFoundError:
            return False

    def _holds(self, index: int) -> bool:
        try:
            with self.part_path.open("rb") as file:
                file.seek(index * self.manifest.chunk_size)
                self.manifest.check_chunk(index, file.read(self.manifest.chunk_length(index)))
        except (OSError, ManifestError):
            return False
        return True

    def _load_sidecar(self) -> set[int]:
        try:
            state = json.loads(self.sidecar_path.read_text(encoding="utf-8"))
            layout = (state["size"], state["chunk_size"])
            if layout != (self.manifest.size, self.manifest.chunk_size):
                return set()  # the same bytes cut another way: start over
            return {i for i in state["have"] if type(i) is int}
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring the unreadable %s: %s", self.sidecar_path, exc)
            return set()

    def _save_sidecar(self) -> None:
        state = {
            "sha256": self.manifest.sha256, "size": self.manifest.size,
            "chunk_size": self.manifest.chunk_size, "have": sorted(self._have),
        }
        temporary = self.sidecar_path.with_suffix(".tmp")
        with temporary.open("w", encoding="utf-8") as file:
            json.dump(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, self.sidecar_path)

    def _remove_sidecar(self) -> None:
        self.sidecar_path.unlink(missing_ok=True)

    def _write_at(self, offset: int, data: bytes) -> None:
        fd = os.open(self.part_path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
            os.fsync(fd)
        finally:
            os.close(fd)


class ArtifactCache:
    """Complete artifacts by SHA-256, and partial ones being fetched.

    Args:
        root: the cache's folder (created if missing).
        max_bytes: evict least recently used complete artifacts past this total; None keeps
            everything.
    """

    def __init__(self, root: Path, *, max_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self._pinned: set[str] = set()
        self._lock = threading.Lock()
        for folder in (_COMPLETE_DIR, _PARTIAL_DIR):
            (self.root / folder).mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path | None:
        """The path of the complete artifact ``sha256``, or None if the cache lacks it."""
        path = self._complete_path(sha256)
        try:
            os.utime(path)  # the eviction order is by modification time
        except FileNotFoundError:
            return None
        return path

    def partial(self, manifest: Manifest) -> PartialArtifact:
        """The partial download of ``manifest``'s artifact, resumed from what is on disk."""
        return PartialArtifact(cache=self, manifest=manifest)

    def add(self, manifest: Manifest, file: Path) -> Path:
        """Copy an already complete ``file`` in, after checking it against ``manifest``.

        Raises:
            ManifestError: ``file`` is not the manifest's artifact (reason ``size``/``digest``).
        """
        manifest.check_artifact(file)
        existing = self.path(manifest.sha256)
        if existing is not None:
            return existing
        temporary = self.root / _PARTIAL_DIR / f"{manifest.sha256}.add"
        with file.open("rb") as source, temporary.open("wb") as target:
            while block := source.read(1 << 20):
                target.write(block)
            target.flush()
            os.fsync(target.fileno())
        return self._install(manifest, temporary)

    def pin(self, sha256: str) -> None:
        """Never evict ``sha256`` (e.g. the model a device runs now, or one a gateway announces).

        Pins live in memory only: an owner pins again what it still needs after a restart.
        """
        with self._lock:
            self._pinned.add(sha256)

    def unpin(self, sha256: str) -> None:
        """Let ``sha256`` be evicted again."""
        with self._lock:
            self._pinned.discard(sha256)

    def remove(self, sha256: str) -> bool:
        """Delete the complete artifact ``sha256`` unless it is pinned; True if it was deleted.

        For an owner that has copied the artifact elsewhere (a device's model slot keeps its own).
        """
        with self._lock:
            if sha256 in self._pinned:
                return False
        try:
            self._complete_path(sha256).unlink()
        except FileNotFoundError:
            return False
        return True

    def count(self) -> int:
        """How many complete artifacts the cache holds."""
        return len(self._complete())

    def total_bytes(self) -> int:
        """The size of every complete artifact together."""
        return sum(size for _path, size, _mtime in self._complete())

    def _complete_path(self, sha256: str) -> Path:
        if len(sha256) != 64 or not all(c in "0123456789abcdef" for c in sha256):
            raise CacheError(f"not a SHA-256 hex digest: {sha256!r}", reason="sha256")
        return self.root / _COMPLETE_DIR / sha256

    def _install(
        self, manifest: Manifest, source: Path, *, after: Callable[[], None] | None = None
    ) -> Path:
        """Move a verified file into the completed store, then make room if over the cap."""
        target = self._complete_path(manifest.sha256)
        try:
            os.replace(source, target)
            _fsync_dir(target.parent)
        except OSError as exc:
            raise CacheError(f"cannot store {manifest.label}: {exc}", reason="io") from exc
        if after is not None:
            after()
        self._evict(keep=manifest.sha256)
        return target

    def _complete(self) -> list[tuple[Path, int, float]]:
        entries = []
        for path in (self.root / _COMPLETE_DIR).iterdir():
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            entries.append((path, stat.st_size, stat.st_mtime))
        return entries

    def _evict(self, *, keep: str) -> None:
        if self.max_bytes is None:
            return
        entries = sorted(self._complete(), key=lambda entry: entry[2])
        total = sum(size for _path, size, _mtime in entries)
        with self._lock:
            pinned = self._pinned | {keep}
        for path, size, _mtime in entries:
            if total <= self.max_bytes:
                break
            if path.name in pinned:
                continue
            path.unlink(missing_ok=True)
            total -= size
            log.info("evicted %s from the artifact cache (%d bytes)", path.name, size)


def _fsync_dir(folder: Path) -> None:
    # Without it a rename can be lost at power loss even though the file's data was synced.
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
