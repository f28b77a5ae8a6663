"""The cloud model registry: signed, content-addressed, never overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evc.cloud.registry import ModelRegistry, RegistryError, compatibility_of
from evc.models import Compatibility, Manifest
from evc.models.signing import SignedManifest, SigningKey, TrustedKeys, generate_keypair
from evc.synthetic.sample_model import sample_model_path

SHAPES = Compatibility(input_shape=(3, 160, 160), classes=("circle", "square", "triangle"))


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return SigningKey.load(generate_keypair(tmp_path / "keys").private_path)


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(tmp_path / "registry")


def test_publish_signs_a_manifest_of_the_exact_artifact(
    tmp_path: Path, registry: ModelRegistry, key: SigningKey
) -> None:
    model = sample_model_path()
    signed = registry.publish(
        name="shapes", version="1", artifact=model, key=key, chunk_size=100_000, created_ms=5
    )
    manifest = signed.manifest
    assert (manifest.name, manifest.version, manifest.created_ms) == ("shapes", "1", 5)
    assert (manifest.size, manifest.chunk_count) == (model.stat().st_size, 9)
    assert manifest.compatibility == SHAPES  # read from the model itself
    trusted = TrustedKeys.load([tmp_path / "keys"])
    assert trusted.verify(signed) == manifest
    stored = registry.artifact_path(manifest.sha256)
    assert stored == registry.root / "artifacts" / manifest.sha256
    assert stored.read_bytes() == model.read_bytes()
    manifest.check_artifact(stored)
    on_disk = registry.root / "models" / "shapes" / "1.json"
    assert SignedManifest.parse(on_disk.read_bytes()) == signed
    assert [path.name for path in (registry.root / "artifacts").iterdir()] == [manifest.sha256]


def test_compatibility_is_derived_from_the_onnx_model() -> None:
    compatibility = compatibility_of(sample_model_path())
    assert compatibility.task == "detect"
    assert compatibility.input_shape == (3, 160, 160)
    assert compatibility.classes == ("circle", "square", "triangle")


def test_a_published_version_is_never_replaced(
    tmp_path: Path, registry: ModelRegistry, key: SigningKey
) -> None:
    first = registry.publish(
        name="shapes", version="1", artifact=sample_model_path(), key=key, compatibility=SHAPES
    )
    other = tmp_path / "other.onnx"
    other.write_bytes(b"other bytes")
    with pytest.raises(RegistryError) as caught:
        registry.publish(
            name="shapes", version="1", artifact=other, key=key, compatibility=SHAPES
        )
    assert caught.value.reason == "exists"
    assert registry.get("shapes", "1") == first
    assert registry.artifact_path(first.manifest.sha256) is not None
    assert len(list((registry.root / "artifacts").iterdir())) == 1  # nothing of the refused one


def test_versions_are_listed_by_name_then_publication_time(
    tmp_path: Path, registry: ModelRegistry, key: SigningKey
) -> None:
    artifact = tmp_path / "model.bin"
    artifact.write_bytes(b"same bytes")
    for name, version, created_ms in [
        ("shapes", "10", 300), ("shapes", "9", 200), ("people", "1", 400), ("shapes", "2", 100)
    ]:
        registry.publish(
            name=name, version=version, artifact=artifact, key=key, compatibility=SHAPES,
            created_ms=created_ms,
        )
    listed = [(s.manifest.name, s.manifest.version) for s in registry.versions()]
    assert listed == [("people", "1"), ("shapes", "2"), ("shapes", "9"), ("shapes", "10")]
    assert [s.manifest.version for s in registry.versions("shapes")] == ["2", "9", "10"]
    assert registry.versions("unknown") == []
    assert registry.latest("shapes").manifest.version == "10"
    # One artifact, four versions: stored once, found as the latest publication.
    assert len(list((registry.root / "artifacts").iterdir())) == 1
    found = registry.find(registry.latest("shapes").manifest.sha256)
    assert found is not None
    assert found.manifest.label == "people:1"


def test_an_empty_registry_knows_nothing(registry: ModelRegistry) -> None:
    assert registry.versions() == []
    assert registry.find("ab" * 32) is None
    assert registry.artifact_path("ab" * 32) is None
    for call in (lambda: registry.get("shapes", "1"), lambda: registry.latest("shapes")):
        with pytest.raises(RegistryError) as caught:
            call()
        assert caught.value.reason == "unknown"


@pytest.mark.parametrize("sha256", ["../../keys/evc-model.key", "AB" * 32, "ab" * 31, ""])
def test_artifact_paths_accept_only_digests(
    registry: ModelRegistry, key: SigningKey, sha256: str
) -> None:
    registry.publish(
        name="shapes", version="1", artifact=sample_model_path(), key=key, compatibility=SHAPES
    )
    assert registry.artifact_path(sha256) is None


def test_a_file_that_is_not_a_model_is_refused(
    tmp_path: Path, registry: ModelRegistry, key: SigningKey
) -> None:
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"\x08\x07 not an onnx model")
    with pytest.raises(RegistryError) as caught:
        registry.publish(name="shapes", version="1", artifact=bogus, key=key)
    assert caught.value.reason == "model"
    assert registry.versions() == []
    assert not (registry.root / "artifacts").exists()


def test_a_missing_or_empty_artifact_is_refused(
    tmp_path: Path, registry: ModelRegistry, key: SigningKey
) -> None:
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    for artifact in (empty, tmp_path / "missing.onnx"):
        with pytest.raises(RegistryError) as caught:
            registry.publish(
                name="shapes", version="1", artifact=artifact, key=key, compatibility=SHAPES
            )
        assert caught.value.reason == "artifact"
    assert registry.versions() == []


@pytest.mark.parametrize(
    ("name", "version"), [("../x", "1"), ("shapes", "../../1"), ("sha pes", "1"), ("shapes", "")]
)
def test_names_and_versions_follow_the_name_rules(
    registry: ModelRegistry, key: SigningKey, name: str, version: str
) -> None:
    with pytest.raises(RegistryError) as caught:
        registry.publish(
            name=name, version=version, artifact=sample_model_path(), key=key,
            compatibility=SHAPES,
        )
    assert caught.value.reason == "name"
    with pytest.raises(RegistryError):
        registry.get(name, version)
    assert not registry.root.exists()


@pytest.mark.parametrize("chunk_size", [0, 1024 * 1024, 16])
def test_a_chunk_size_receivers_would_refuse_is_refused_at_publication(
    registry: ModelRegistry, key: SigningKey, chunk_size: int
) -> None:
    # 0: no chunks; 1 MiB: a chunk message over the fog broker's packet limit; 16 bytes:
    # 50,000 chunk digests, a manifest gateways and devices refuse as too large.
    with pytest.raises(RegistryError) as caught:
        registry.publish(
            name="shapes", version="1", artifact=sample_model_path(), key=key,
            compatibility=SHAPES, chunk_size=chunk_size,
        )
    assert caught.value.reason == "chunk_size"


def test_a_manifest_stored_under_another_version_is_reported_corrupt(
    registry: ModelRegistry, key: SigningKey
) -> None:
    registry.publish(
        name="shapes", version="1", artifact=sample_model_path(), key=key, compatibility=SHAPES
    )
    folder = registry.root / "models" / "shapes"
    (folder / "2.json").write_bytes((folder / "1.json").read_bytes())
    with pytest.raises(RegistryError) as caught:
        registry.get("shapes", "2")
    assert caught.value.reason == "corrupt"
    (folder / "2.json").write_text(json.dumps({"manifest": "nope"}))
    with pytest.raises(RegistryError) as caught:
        registry.versions()
    assert caught.value.reason == "corrupt"


def test_no_temporary_files_are_left_behind(registry: ModelRegistry, key: SigningKey) -> None:
    registry.publish(
        name="shapes", version="1", artifact=sample_model_path(), key=key, compatibility=SHAPES
    )
    leftovers = [path for path in registry.root.rglob("*") if path.name.endswith(".tmp")]
    assert leftovers == []
    manifest = Manifest.parse(
        json.dumps(json.loads((registry.root / "models/shapes/1.json").read_text())["manifest"])
    )
    assert manifest.sha256 == registry.get("shapes", "1").manifest.sha256


def test_a_version_published_concurrently_is_not_overwritten(
    registry: ModelRegistry, key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    store_artifact = registry._store_artifact
    target = registry.root / "models" / "shapes" / "1.json"

    def another_publisher_wins(artifact: Path, manifest: Manifest) -> None:
        store_artifact(artifact, manifest)
        target.parent.mkdir(parents=True)
        target.write_bytes(b"the other publisher's manifest")

    monkeypatch.setattr(registry, "_store_artifact", another_publisher_wins)
    with pytest.raises(RegistryError) as caught:
        registry.publish(
            name="shapes", version="1", artifact=sample_model_path(), key=key,
            compatibility=SHAPES,
        )
    assert caught.value.reason == "exists"
    assert target.read_bytes() == b"the other publisher's manifest"
    assert [path.name for path in target.parent.iterdir()] == ["1.json"]  # no temporary left
