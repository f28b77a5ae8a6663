"""Manifest signatures: only exactly what a trusted key signed is accepted."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from evc.models import Compatibility, Manifest, ManifestError
from evc.models.signing import (
    KeyFileError,
    SignatureError,
    SignedManifest,
    SigningKey,
    TrustedKeys,
    generate_keypair,
)


def manifest(*, version: str = "1") -> Manifest:
    return Manifest(
        name="shapes", version=version, sha256="ab" * 32, size=10, chunk_size=4,
        chunk_sha256=("01" * 32, "02" * 32, "03" * 32),
        compatibility=Compatibility(input_shape=(3, 160, 160), classes=("circle", "square")),
        created_ms=1_700_000_000_000,
    )


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return SigningKey.load(generate_keypair(tmp_path / "keys").private_path)


@pytest.fixture
def trusted(tmp_path: Path, key: SigningKey) -> TrustedKeys:
    return TrustedKeys.load([tmp_path / "keys" / "evc-model.pub"])


def test_a_signed_manifest_survives_json_and_verifies(
    key: SigningKey, trusted: TrustedKeys
) -> None:
    signed = key.sign(manifest())
    parsed = SignedManifest.parse(signed.to_json())
    assert parsed == signed
    assert trusted.verify(parsed) == manifest()
    assert trusted.key_ids == {key.key_id}
    assert len(base64.b64decode(parsed.signature)) == 64
    assert b" " not in signed.to_json()  # compact


def test_the_key_id_is_a_digest_of_the_raw_public_key(tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path, name="ops")
    public = SigningKey.load(pair.private_path).public_key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert pair.key_id == hashlib.sha256(raw).hexdigest()[:16]
    assert (pair.private_path.name, pair.public_path.name) == ("ops.key", "ops.pub")
    assert SigningKey.load(pair.private_path).key_id == pair.key_id


@pytest.mark.parametrize(
    "change",
    [{"sha256": "cd" * 32}, {"version": "2"}, {"created_ms": 1}, {"size": 9}],
    ids=["sha256", "version", "created_ms", "size"],
)
def test_a_manifest_changed_after_signing_is_refused(
    key: SigningKey, trusted: TrustedKeys, change: dict[str, object]
) -> None:
    signed = json.loads(key.sign(manifest()).to_json())
    signed["manifest"].update(change)
    tampered = SignedManifest.parse(json.dumps(signed))
    with pytest.raises(SignatureError) as caught:
        trusted.verify(tampered)
    assert caught.value.reason == "signature"


def test_another_key_claiming_a_trusted_key_id_is_refused(
    tmp_path: Path, key: SigningKey, trusted: TrustedKeys
) -> None:
    other = SigningKey.load(generate_keypair(tmp_path / "other").private_path)
    forged = other.sign(manifest()).model_copy(update={"key_id": key.key_id})
    with pytest.raises(SignatureError) as caught:
        trusted.verify(forged)
    assert caught.value.reason == "signature"


def test_garbage_of_the_right_length_is_refused(key: SigningKey, trusted: TrustedKeys) -> None:
    garbage = base64.b64encode(bytes(64)).decode()
    forged = key.sign(manifest()).model_copy(update={"signature": garbage})
    with pytest.raises(SignatureError) as caught:
        trusted.verify(forged)
    assert caught.value.reason == "signature"


def test_a_signature_by_an_untrusted_key_is_refused(tmp_path: Path, trusted: TrustedKeys) -> None:
    other = SigningKey.load(generate_keypair(tmp_path / "other").private_path)
    with pytest.raises(SignatureError) as caught:
        trusted.verify(other.sign(manifest()))
    assert caught.value.reason == "unknown_key"


def test_a_directory_trusts_every_public_key_in_it(tmp_path: Path) -> None:
    first = generate_keypair(tmp_path / "trust", name="current")
    second = generate_keypair(tmp_path / "trust", name="next")
    trusted = TrustedKeys.load([tmp_path / "trust"])
    assert trusted.key_ids == {first.key_id, second.key_id}
    signed = SigningKey.load(second.private_path).sign(manifest())
    assert trusted.verify(signed) == manifest()


@pytest.mark.parametrize(
    "data",
    [
        b"{not json",
        b"[]",
        b'{"manifest": {}, "key_id": "0123456789abcdef", "signature": ""}',
        "\u00ff".encode("latin-1"),
    ],
    ids=["broken", "list", "empty-manifest", "not-utf8"],
)
def test_malformed_signed_manifests_raise_manifest_errors(data: bytes) -> None:
    with pytest.raises(ManifestError) as caught:
        SignedManifest.parse(data)
    assert caught.value.reason == "manifest"


@pytest.mark.parametrize(
    "change",
    [
        {"signature": "not base64!"},
        {"signature": base64.b64encode(bytes(63)).decode()},
        {"key_id": "../../etc"},
        {"extra": 1},
    ],
    ids=["bad-base64", "short-signature", "bad-key-id", "unknown-field"],
)
def test_bad_fields_raise_manifest_errors(key: SigningKey, change: dict[str, object]) -> None:
    signed = json.loads(key.sign(manifest()).to_json())
    signed.update(change)
    with pytest.raises(ManifestError) as caught:
        SignedManifest.parse(json.dumps(signed))
    assert caught.value.reason == "manifest"


def test_the_private_key_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path)
    assert stat.S_IMODE(pair.private_path.stat().st_mode) == 0o600
    assert b"BEGIN PRIVATE KEY" in pair.private_path.read_bytes()
    assert b"BEGIN PUBLIC KEY" in pair.public_path.read_bytes()


@pytest.mark.parametrize("existing", ["evc-model.key", "evc-model.pub"])
def test_an_existing_key_is_never_overwritten(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_bytes(b"keep me")
    with pytest.raises(KeyFileError) as caught:
        generate_keypair(tmp_path)
    assert caught.value.reason == "exists"
    assert (tmp_path / existing).read_bytes() == b"keep me"
    assert [path.name for path in tmp_path.iterdir()] == [existing]


def test_a_key_name_cannot_leave_the_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError) as caught:
        generate_keypair(tmp_path / "keys", name="../escape")
    assert caught.value.reason == "name"
    assert not (tmp_path / "escape.key").exists()


def test_wrong_or_corrupt_key_files_raise_typed_errors(tmp_path: Path) -> None:
    pair = generate_keypair(tmp_path)
    corrupt = tmp_path / "corrupt.key"
    corrupt.write_text("-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    for path, reason in [
        (pair.public_path, "invalid"),  # a public key where the private one belongs
        (corrupt, "invalid"),
        (tmp_path / "missing.key", "unreadable"),
    ]:
        with pytest.raises(KeyFileError) as caught:
            SigningKey.load(path)
        assert caught.value.reason == reason
    with pytest.raises(KeyFileError) as caught:
        TrustedKeys.load([pair.private_path])  # a private key where a public one belongs
    assert caught.value.reason == "invalid"


def test_a_non_ed25519_key_is_refused(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.key").write_bytes(private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    (tmp_path / "ec.pub").write_bytes(private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo,
    ))
    with pytest.raises(KeyFileError, match="Ed25519"):
        SigningKey.load(tmp_path / "ec.key")
    with pytest.raises(KeyFileError, match="Ed25519"):
        TrustedKeys.load([tmp_path / "ec.pub"])


def test_trusting_nothing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError) as caught:
        TrustedKeys.load([tmp_path])
    assert caught.value.reason == "no_keys"


def test_a_payload_verifies_in_one_call(key: SigningKey, trusted: TrustedKeys) -> None:
    assert trusted.verify_payload(key.sign(manifest()).to_json()) == manifest()


@pytest.mark.parametrize(
    ("payload", "reason"),
    [(b"{not json", "manifest"), (b" " * (64 * 1024 + 1), "too_large")],
    ids=["malformed", "too-large"],
)
def test_a_bad_payload_is_refused_with_a_reason(
    trusted: TrustedKeys, payload: bytes, reason: str
) -> None:
    with pytest.raises(ManifestError) as caught:
        trusted.verify_payload(payload)
    assert caught.value.reason == reason


def test_a_payload_over_the_given_limit_is_refused(key: SigningKey, trusted: TrustedKeys) -> None:
    payload = key.sign(manifest()).to_json()
    with pytest.raises(ManifestError) as caught:
        trusted.verify_payload(payload, max_bytes=len(payload) - 1)
    assert caught.value.reason == "too_large"


def test_a_payload_signed_by_an_untrusted_key_is_refused(
    tmp_path: Path, trusted: TrustedKeys
) -> None:
    other = SigningKey.load(generate_keypair(tmp_path / "other").private_path)
    with pytest.raises(SignatureError) as caught:
        trusted.verify_payload(other.sign(manifest()).to_json())
    assert caught.value.reason == "unknown_key"
