"""Ed25519 signatures over model manifests.

The cloud signs a manifest's canonical JSON (:meth:`Manifest.canonical`) with a private key that
never leaves it; gateways and devices hold only public keys (:class:`TrustedKeys`) and refuse a
manifest whose signature does not verify before they fetch a byte of its artifact. A key is named
by its ``key_id``, the first 16 hex digits of the SHA-256 of its raw 32-byte public key, so a
signed manifest says which key to check it with and keys can be rotated by trusting two at once.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import Field, ValidationError, field_validator

from evc.config import StrictModel
from evc.errors import EvcError, TopicError
from evc.models.manifest import Manifest, ManifestError
from evc.wire.topics import validate_name

PRIVATE_SUFFIX = ".key"
PUBLIC_SUFFIX = ".pub"
SIGNATURE_BYTES = 64
MAX_MANIFEST_BYTES = 64 * 1024  # a signed manifest is a few KiB; anything far larger is junk
_KEY_ID_HEX = 16


class KeyFileError(EvcError):
    """A key file cannot be written, read, or is not an Ed25519 key of the expected kind."""

    def __init__(self, message: str, *, path: Path | None = None, reason: str = "invalid") -> None:
        super().__init__(message)
        self.path = path
        self.reason = reason


class SignatureError(EvcError):
    """A signed manifest is not signed by a trusted key."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def key_id_of(public_key: Ed25519PublicKey) -> str:
    """The id of ``public_key``: 16 hex digits of the SHA-256 of its raw 32 bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:_KEY_ID_HEX]


class SignedManifest(StrictModel):
    """A manifest, the id of the key that signed it, and the signature."""

    manifest: Manifest = Field(description="The signed manifest.")
    key_id: str = Field(
        pattern=r"^[0-9a-f]{16}$", description="Id of the signing key: 16 hex digits."
    )
    signature: str = Field(
        description="Base64 of the 64-byte Ed25519 signature over the manifest's canonical JSON."
    )

    @field_validator("signature")
    @classmethod
    def _is_a_signature(cls, value: str) -> str:
        _decode_signature(value)
        return value

    @property
    def signature_bytes(self) -> bytes:
        """The raw 64-byte signature."""
        return _decode_signature(self.signature)

    def to_json(self) -> bytes:
        """Compact JSON, as stored by the registry and sent to gateways."""
        return self.model_dump_json().encode()

    @classmethod
    def parse(cls, data: bytes | str) -> SignedManifest:
        """Parse signed-manifest JSON.

        Raises:
            ManifestError: (reason ``manifest``) the JSON is malformed, a field is missing,
                unknown or of the wrong type, or the signature is not 64 bytes of base64.
        """
        try:
            return cls.model_validate_json(data)
        except ValidationError as exc:
            raise ManifestError(f"bad signed manifest: {exc}", reason="manifest") from exc


def _decode_signature(value: str) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError as exc:  # binascii.Error, and non-ASCII text
        raise ValueError("signature is not base64") from exc
    if len(raw) != SIGNATURE_BYTES:
        raise ValueError(f"signature has {len(raw)} bytes, expected {SIGNATURE_BYTES}")
    return raw


@dataclass(frozen=True, slots=True)
class KeyPair:
    """Where :func:`generate_keypair` wrote a new key pair."""

    key_id: str
    """Id of the new key."""
    private_path: Path
    """The PKCS8 PEM private key (mode 0600)."""
    public_path: Path
    """The PEM SubjectPublicKeyInfo public key, to give to gateways and devices."""


def generate_keypair(directory: Path, *, name: str = "evc-model") -> KeyPair:
    """Write a new Ed25519 key pair as ``<name>.key`` and ``<name>.pub`` in ``directory``.

    Raises:
        KeyFileError: ``name`` is not a plain file name (reason ``name``), either file already
            exists (reason ``exists``: a key is never overwritten, as manifests signed with it
            would stop verifying), or the files cannot be written (reason ``unwritable``).
    """
    try:
        validate_name(name, what="key name")
    except TopicError as exc:
        raise KeyFileError(str(exc), reason="name") from exc
    private_path = directory / f"{name}{PRIVATE_SUFFIX}"
    public_path = directory / f"{name}{PUBLIC_SUFFIX}"
    for path in (private_path, public_path):
        if path.exists():
            raise _exists(path)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise KeyFileError(f"cannot create {directory}: {exc}", reason="unwritable") from exc
    key = Ed25519PrivateKey.generate()
    _write_new(private_path, _private_pem(key), mode=0o600)
    _write_new(public_path, _public_pem(key.public_key()), mode=0o644)
    return KeyPair(
        key_id=key_id_of(key.public_key()), private_path=private_path, public_path=public_path
    )


def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _exists(path: Path) -> KeyFileError:
    return KeyFileError(f"{path} already exists; not overwriting", path=path, reason="exists")


def _write_new(path: Path, data: bytes, *, mode: int) -> None:
    # O_EXCL closes the gap between the existence check and the write, and the private key is
    # created 0600 rather than chmod-ed later, so it is never readable by others, even briefly.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError as exc:
        raise _exists(path) from exc
    except OSError as exc:
        raise KeyFileError(f"cannot write {path}: {exc}", path=path, reason="unwritable") from exc
    with os.fdopen(fd, "wb") as file:
        file.write(data)


class SigningKey:
    """An Ed25519 private key that signs manifests."""

    def __init__(self, *, private_key: Ed25519PrivateKey) -> None:
        """Wrap ``private_key``; use :meth:`load` to read one from a file."""
        self._key = private_key
        self._key_id = key_id_of(private_key.public_key())

    @classmethod
    def load(cls, path: Path) -> SigningKey:
        """Read a PKCS8 PEM Ed25519 private key (as written by :func:`generate_keypair`).

        Raises:
            KeyFileError: the file cannot be read (reason ``unreadable``) or is not an
                unencrypted Ed25519 private key (reason ``invalid``).
        """
        data = _read(path)
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise KeyFileError(f"{path} is not a PEM private key: {exc}", path=path) from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{path} is not an Ed25519 private key", path=path)
        return cls(private_key=key)

    @property
    def key_id(self) -> str:
        """The id that signed manifests carry."""
        return self._key_id

    @property
    def public_key(self) -> Ed25519PublicKey:
        """The public half, for :class:`TrustedKeys`."""
        return self._key.public_key()

    def sign(self, manifest: Manifest) -> SignedManifest:
        """Sign ``manifest``'s canonical JSON."""
        signature = self._key.sign(manifest.canonical())
        return SignedManifest(
            manifest=manifest,
            key_id=self._key_id,
            signature=base64.b64encode(signature).decode("ascii"),
        )


class TrustedKeys:
    """The public keys whose signatures a gateway or device accepts."""

    def __init__(self, *, keys: Iterable[Ed25519PublicKey]) -> None:
        """Trust ``keys``; use :meth:`load` to read them from ``.pub`` files."""
        self._keys: Mapping[str, Ed25519PublicKey] = {key_id_of(key): key for key in keys}

    @classmethod
    def load(cls, paths: Iterable[Path]) -> TrustedKeys:
        """Read public keys from ``.pub`` files, and from every ``*.pub`` file of directories.

        Raises:
            KeyFileError: a file cannot be read (reason ``unreadable``), is not a PEM Ed25519
                public key (reason ``invalid``), or no key was found at all (reason
                ``no_keys``: trusting nobody would refuse every update, silently).
        """
        files: list[Path] = []
        for path in paths:
            files.extend(sorted(path.glob(f"*{PUBLIC_SUFFIX}")) if path.is_dir() else [path])
        if not files:
            raise KeyFileError("no public keys to trust", reason="no_keys")
        return cls(keys=[_load_public(file) for file in files])

    @property
    def key_ids(self) -> frozenset[str]:
        """Ids of the trusted keys."""
        return frozenset(self._keys)

    def verify(self, signed: SignedManifest) -> Manifest:
        """Return the manifest if a trusted key signed exactly it.

        Raises:
            SignatureError: the key is not trusted (reason ``unknown_key``), or the signature
                does not verify (reason ``signature``): the manifest was changed after signing,
                or another key signed it while claiming a trusted key's id.
        """
        key = self._keys.get(signed.key_id)
        if key is None:
            raise SignatureError(
                f"{signed.manifest.label} is signed by untrusted key {signed.key_id}",
                reason="unknown_key",
            )
        try:
            key.verify(signed.signature_bytes, signed.manifest.canonical())
        except InvalidSignature as exc:
            raise SignatureError(
                f"{signed.manifest.label}: signature of key {signed.key_id} does not verify",
                reason="signature",
            ) from exc
        return signed.manifest

    def verify_payload(self, payload: bytes, *, max_bytes: int = MAX_MANIFEST_BYTES) -> Manifest:
        """Parse a signed manifest as it came off the wire and return it if a trusted key signed it.

        Raises:
            ManifestError: ``payload`` is longer than ``max_bytes`` (reason ``too_large``: it is
                refused before parsing, so a huge message costs no JSON work) or is not a signed
                manifest (reason ``manifest``).
            SignatureError: as :meth:`verify`.
        """
        if len(payload) > max_bytes:
            raise ManifestError(
                f"signed manifest of {len(payload)} bytes, at most {max_bytes}", reason="too_large"
            )
        return self.verify(SignedManifest.parse(payload))


def _load_public(path: Path) -> Ed25519PublicKey:
    data = _read(path)
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path} is not a PEM public key: {exc}", path=path) from exc
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path} is not an Ed25519 public key", path=path)
    return key


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"cannot read {path}: {exc}", path=path, reason="unreadable") from exc
