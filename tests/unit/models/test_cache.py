"""Unit tests of the artifact cache: content addressing, resumable partials, refusals, eviction."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from evc.models import ArtifactCache, CacheError, Compatibility, Manifest, ManifestError

CHUNK = 1024


def _artifact(tmp_path: Path, name: str = "model.onnx", size: int = 5 * CHUNK + 100) -> Path:
    path = tmp_path / name
    path.write_bytes(os.urandom(size))
    return path


def _manifest(path: Path, *, chunk_size: int = CHUNK) -> Manifest:
    return Manifest.describe(
        path, name="shapes", version="1",
        compatibility=Compatibility(input_shape=(3, 160, 160), classes=("a",)),
        created_ms=0, chunk_size=chunk_size,
    )


def _chunk(path: Path, manifest: Manifest, index: int) -> bytes:
    start = index * manifest.chunk_size
    return path.read_bytes()[start:start + manifest.chunk_length(index)]


def _completed(cache: ArtifactCache) -> list[str]:
    return sorted(p.name for p in (cache.root / "sha256").iterdir())


def test_chunks_in_any_order_complete_the_artifact(tmp_path: Path) -> None:
    source = _artifact(tmp_path)
    manifest = _manifest(source)
    cache = ArtifactCache(tmp_path / "cache")
    assert cache.path(manifest.sha256) is None
    partial = cache.partial(manifest)
    assert partial.missing() == list(range(6))
    for index in (5, 2, 0, 4, 1, 3):
        assert partial.write(index, _chunk(source, manifest, index))
    assert partial.missing() == []
    assert not partial.write(2, _chunk(source, manifest, 2))  # a duplicate is not written again
    path = partial.complete()
    assert path == tmp_path / "cache" / "sha256" / manifest.sha256
    assert path.read_bytes() == source.read_bytes()
    assert cache.path(manifest.sha256) == path
    assert list((cache.root / "partial").iterdir()) == []  # part file and sidecar gone


def test_a_reopened_cache_resumes_where_it_stopped(tmp_path: Path) -> None:
    source = _artifact(tmp_path)
    manifest = _manifest(source)
    first = ArtifactCache(tmp_path / "cache").partial(manifest)
    for index in (0, 3, 5):
        first.write(index, _chunk(source, manifest, index))
    del first  # the process state is gone; only the files remain

    resumed = ArtifactCache(tmp_path / "cache").partial(manifest)
    assert resumed.missing() == [1, 2, 4]
    for index in resumed.missing():
        resumed.write(index, _chunk(source, manifest, index))
    assert resumed.complete().read_bytes() == source.read_bytes()


def test_a_recorded_chunk_spoiled_on_disk_is_fetched_again(tmp_path: Path) -> None:
    source = _artifact(tmp_path)
    manifest = _manifest(source)
    partial = ArtifactCache(tmp_path / "cache").partial(manifest)
    for index in (0, 1, 2):
        partial.write(index, _chunk(source, manifest, index))
    with partial.part_path.open("r+b") as file:  # bit rot in chunk 1
        file.seek(CHUNK + 10)
        file.write(b"\xff\x00\xff")
    assert ArtifactCache(tmp_path / "cache").partial(manifest).missing() == [1, 3, 4, 5]


@pytest.mark.parametrize(
    ("index", "mangle", "reason"),
    [
        (1, lambda data: data[:-1], "chunk_size"),
        (1, lambda data: bytes([data[0] ^ 1]) + data[1:], "chunk_digest"),
        (6, lambda data: data, "chunk_index"),
    ],
)
def test_a_bad_chunk_is_refused_and_not_written(
    tmp_path: Path, index: int, mangle: Callable[[bytes], bytes], reason: str
) -> None:
    source = _artifact(tmp_path)
    manifest = _manifest(source)
    partial = ArtifactCache(tmp_path / "cache").partial(manifest)
    with pytest.raises(ManifestError) as refused:
        partial.write(index, mangle(_chunk(source, manifest, 1)))
    assert refused.value.reason == reason
    assert partial.missing() == list(range(6))
    assert partial.part_path.read_bytes() == bytes(manifest.size)  # nothing landed on disk
    assert ArtifactCache(tmp_path / "cache").partial(manifest).missing() == list(range(6))


def test_completing_with_chunks_missing_is_refused(tmp_path: Path) -> None:
    source = _artifact(tmp_path)
    manifest = _manifest(source)
    cache = ArtifactCache(tmp_path / "cache")
    partial = cache.partial(manifest)
    partial.write(0, _chunk(source, manifest, 0))
    with pytest.raises(CacheError) as refused:
        partial.complete()
    assert refused.value.reason == "incomplete"
    assert _completed(cache) == []
    assert partial.missing() == [1, 2, 3, 4, 5]


def test_a_whole_file_digest_failure_discards_the_partial(tmp_path: Path) -> None:
    source = _artifact(tmp_path)
    # Every chunk digest is right, the whole-file digest is not: only complete() can tell.
    manifest = _manifest(source).model_copy(update={"sha256": "0" * 64})
    cache = ArtifactCache(tmp_path / "cache")
    partial = cache.partial(manifest)
    for index in partial.missing():
        partial.write(index, _chunk(source, manifest, index))
    with pytest.raises(ManifestError) as refused:
        partial.complete()
    assert refused.value.reason == "digest"
    assert _completed(cache) == []
    assert not partial.part_path.exists()
    assert not partial.sidecar_path.exists()
    assert cache.partial(manifest).missing() == list(range(6))  # a later try starts over


def test_add_verifies_and_stores_by_digest(tmp_path: Path) -> None:
    source = _artifact(tmp_path)
    manifest = _manifest(source)
    cache = ArtifactCache(tmp_path / "cache")
    path = cache.add(manifest, source)
    assert path.name == manifest.sha256
    assert path.read_bytes() == source.read_bytes()
    assert source.exists()  # added by copy: the caller's file is left alone
    assert cache.add(manifest, source) == path
    assert ArtifactCache(tmp_path / "cache").path(manifest.sha256) == path


def test_add_refuses_a_file_that_is_not_the_artifact(tmp_path: Path) -> None:
    source = _artifact(tmp_path)
    manifest = _manifest(source)
    other = _artifact(tmp_path, "other.onnx")
    cache = ArtifactCache(tmp_path / "cache")
    with pytest.raises(ManifestError) as refused:
        cache.add(manifest, other)
    assert refused.value.reason == "digest"
    shorter = _artifact(tmp_path, "short.onnx", size=100)
    with pytest.raises(ManifestError) as refused:
        cache.add(manifest, shorter)
    assert refused.value.reason == "size"
    assert cache.path(manifest.sha256) is None
    assert _completed(cache) == []


def test_path_refuses_what_is_not_a_digest(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    with pytest.raises(CacheError):
        cache.path("../../etc/passwd")


def test_eviction_removes_the_least_recently_used_unpinned(tmp_path: Path) -> None:
    size = 2 * CHUNK
    files = [_artifact(tmp_path, f"m{i}.onnx", size) for i in range(4)]
    manifests = [_manifest(f) for f in files]
    cache = ArtifactCache(tmp_path / "cache", max_bytes=3 * size)
    for i, (manifest, file) in enumerate(zip(manifests[:3], files[:3], strict=True)):
        stored = cache.add(manifest, file)
        os.utime(stored, (time.time() - 100 + i, time.time() - 100 + i))
    cache.pin(manifests[0].sha256)  # the oldest, but in use
    assert cache.path(manifests[1].sha256) is not None  # used: now the newest of the three
    cache.add(manifests[3], files[3])
    kept = {m.sha256 for m in (manifests[0], manifests[1], manifests[3])}
    assert set(_completed(cache)) == kept
    assert cache.total_bytes() == 3 * size


def test_count_is_what_is_on_disk(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    first = _artifact(tmp_path, "a.onnx")
    cache.add(_manifest(first), first)
    second = _artifact(tmp_path, "b.onnx")
    cache.add(_manifest(second), second)
    assert cache.count() == 2
    (cache.root / "sha256" / _manifest(first).sha256).unlink()  # deleted behind its back
    assert cache.count() == 1


def test_remove_deletes_a_complete_artifact_unless_pinned(tmp_path: Path) -> None:
    cache = ArtifactCache(tmp_path / "cache")
    artifact = _artifact(tmp_path)
    manifest = _manifest(artifact)
    cache.add(manifest, artifact)
    cache.pin(manifest.sha256)

    assert not cache.remove(manifest.sha256)  # pinned: kept
    cache.unpin(manifest.sha256)
    assert cache.remove(manifest.sha256)
    assert cache.path(manifest.sha256) is None
    assert not cache.remove(manifest.sha256)  # already gone
