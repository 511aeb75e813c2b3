"""cachefs's exception hierarchy.

Every message names the file or block that failed and says what to do; none ever contains a
password, a key or plaintext (the codec never formats those into strings).
"""

from __future__ import annotations

from agents.errors import CaiError


class CachefsError(CaiError):
    """Base of every cachefs error."""


class VolumeFormatError(CachefsError):
    """The ciphertext volume is malformed: config, header, name, directory IV or block layout."""

    http_status = 422


class UnsupportedVolumeError(VolumeFormatError):
    """A well-formed volume that uses a gocryptfs feature cachefs does not implement."""


class WrongPasswordError(CachefsError):
    """The password does not unlock the volume's master key."""

    http_status = 403


class BlockAuthError(CachefsError):
    """A content block failed authentication (GCM tag), or is a hole refused by strict mode.

    Carries the block number so the filesystem can log each bad block once.
    """

    def __init__(self, message: str, *, block: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.block = block


class ManifestError(CachefsError):
    """A volume manifest is malformed, does not match its trusted digest, or a file contradicts it."""
