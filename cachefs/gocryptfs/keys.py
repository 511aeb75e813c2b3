"""HKDF-SHA256 key derivation from the gocryptfs master key.

gocryptfs never uses the master key directly: each purpose gets its own key derived with
HKDF-SHA256 (no salt) and a fixed ASCII info string, so a weakness in one use cannot leak into
another. The info strings below are part of the on-disk format and must match byte for byte.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

INFO_GCM_CONTENT = b"AES-GCM file content encryption"
INFO_EME_NAMES = b"EME filename encryption"
INFO_SIV_CONTENT = b"AES-SIV file content encryption"
INFO_XCHACHA_CONTENT = b"XChaCha20-Poly1305 file content encryption"

MASTER_KEY_LEN = 32


def hkdf_sha256(ikm: bytes, info: bytes, length: int = 32) -> bytes:
    """HKDF-SHA256 with an empty salt, as gocryptfs' ``cryptocore.hkdfDerive``."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(ikm)


@dataclass(frozen=True)
class VolumeKeys:
    """The per-purpose keys of an unlocked volume (repr hides them so they never reach a log)."""

    content: bytes = field(repr=False)
    names: bytes = field(repr=False)


def derive_keys(master_key: bytes) -> VolumeKeys:
    """Content (AES-256-GCM) and EME filename keys for a volume with the ``HKDF`` flag."""
    if len(master_key) != MASTER_KEY_LEN:
        raise ValueError(f"master key must be {MASTER_KEY_LEN} bytes")
    return VolumeKeys(content=hkdf_sha256(master_key, INFO_GCM_CONTENT), names=hkdf_sha256(master_key, INFO_EME_NAMES))
