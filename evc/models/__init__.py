"""Model updates: manifests, signatures, chunked transfer and the content-addressed cache.

Shared by the three tiers: the cloud publishes and signs, the fog gateway fetches each artifact
once and serves it from its cache, devices verify, fetch from the fog and swap.
"""

from evc.models.cache import ArtifactCache, CacheError, PartialArtifact
from evc.models.manifest import (
    DEFAULT_CHUNK_BYTES,
    Compatibility,
    Manifest,
    ManifestError,
)
from evc.models.signing import (
    KeyFileError,
    KeyPair,
    SignatureError,
    SignedManifest,
    SigningKey,
    TrustedKeys,
    generate_keypair,
)
from evc.models.transfer import ChunkFetcher, ChunkServer, TransferError

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "ArtifactCache",
    "CacheError",
    "ChunkFetcher",
    "ChunkServer",
    "Compatibility",
    "KeyFileError",
    "KeyPair",
    "Manifest",
    "ManifestError",
    "PartialArtifact",
    "SignatureError",
    "SignedManifest",
    "SigningKey",
    "TransferError",
    "TrustedKeys",
    "generate_keypair",
]
