"""Model updates: manifests, signatures, chunked transfer and the content-addressed cache.

Shared by the three tiers: the cloud publishes and signs, the fog gateway fetches each artifact
once and serves it from its cache, devices verify, fetch from the fog and swap.
"""

from evc.models.manifest import (
    DEFAULT_CHUNK_BYTES,
    Compatibility,
    Manifest,
    ManifestError,
)

__all__ = ["DEFAULT_CHUNK_BYTES", "Compatibility", "Manifest", "ManifestError"]
