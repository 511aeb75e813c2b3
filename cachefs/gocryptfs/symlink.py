"""Symlink targets: one content block (block 0, no file ID), Raw64-encoded, stored as the link target."""

from __future__ import annotations

from cachefs.errors import VolumeFormatError
from cachefs.gocryptfs.content import CIPHER_BLOCK, PLAIN_BLOCK, ContentCipher
from cachefs.gocryptfs.names import raw64_decode, raw64_encode

MAX_STORED_TARGET = (CIPHER_BLOCK * 4 + 2) // 3 + 4


def decrypt_target(cipher: ContentCipher, stored: str, where: str = "symlink") -> bytes:
    """Stored (encrypted) link target → plaintext target bytes."""
    if stored == "":
        return b""
    if len(stored) > MAX_STORED_TARGET:
        raise VolumeFormatError(f"{where}: encrypted link target is too long")
    try:
        raw = raw64_decode(stored)
    except ValueError:
        raise VolumeFormatError(f"{where}: link target is not gocryptfs-encrypted (bad base64)") from None
    return cipher.decrypt_single(raw, 0, None, where)


def encrypt_target(cipher: ContentCipher, target: bytes) -> str:
    """Plaintext link target → stored form."""
    if target == b"":
        return ""
    if len(target) > PLAIN_BLOCK:
        raise ValueError("symlink target longer than 4096 bytes")
    return raw64_encode(cipher.encrypt_block(target, 0, None))
