"""File names: Raw64 + EME with per-directory IVs, PKCS#7 padding, and long-name hashing.

Names are decrypted strictly: a name that is not canonical unpadded base64url, not a whole
number of AES blocks, badly padded, or not a valid POSIX name is rejected, so one ciphertext
name maps to exactly one plaintext name and nothing like ``..`` or ``a/b`` can be injected.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cachefs.errors import VolumeFormatError
from cachefs.gocryptfs.config import CONF_NAME, VolumeConfig
from cachefs.gocryptfs.eme import Eme

DIRIV_NAME = "gocryptfs.diriv"
DIRIV_LEN = 16
LONGNAME_PREFIX = "gocryptfs.longname."
LONGNAME_SUFFIX = ".name"
MAX_NAME_BYTES = 255
MAX_LONGNAME_FILE = 4096  # .name files hold ≤ 344 chars for 255-byte names; bound what we accept
_RAW64_RE = re.compile(r"^[A-Za-z0-9_-]+$")


def raw64_encode(data: bytes) -> str:
    """base64url without padding (Go's ``base64.RawURLEncoding``)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def raw64_decode(text: str) -> bytes:
    """Strict inverse of :func:`raw64_encode`; raises ``ValueError`` for any non-canonical input."""
    if not _RAW64_RE.match(text) or len(text) % 4 == 1:
        raise ValueError("not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not unpadded base64url") from None
    if raw64_encode(data) != text:  # non-zero trailing bits
        raise ValueError("not canonical base64url")
    return data


def pad16(data: bytes) -> bytes:
    """PKCS#7 padding to a multiple of 16 (a full block when already aligned)."""
    n = 16 - len(data) % 16
    return data + bytes([n]) * n


def unpad16(data: bytes) -> bytes:
    """Remove PKCS#7 padding; ``ValueError`` if it is malformed."""
    if not data or len(data) % 16:
        raise ValueError("padded length is not a positive multiple of 16")
    n = data[-1]
    if not 1 <= n <= 16 or data[-n:] != bytes([n]) * n:
        raise ValueError("invalid padding")
    return data[:-n]


def check_plain_name(name: bytes) -> bytes:
    """A plaintext directory entry name must be a single, non-special POSIX path component."""
    if not name or len(name) > MAX_NAME_BYTES or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise ValueError("not a valid file name")
    return name


def parse_diriv(data: bytes, where: str) -> bytes:
    """Validate a ``gocryptfs.diriv`` file: exactly 16 bytes, not all zero."""
    if len(data) != DIRIV_LEN or not any(data):
        raise VolumeFormatError(f"{where}: invalid {DIRIV_NAME} ({len(data)} bytes)",
                                hint="the cipher directory is damaged; restore it from the original upload")
    return data


def is_longname(stored: str) -> bool:
    """True for the content entry of a long name (``gocryptfs.longname.<hash>``, not its ``.name``)."""
    return stored.startswith(LONGNAME_PREFIX) and not stored.endswith(LONGNAME_SUFFIX)


def is_longname_file(stored: str) -> bool:
    """True for the ``gocryptfs.longname.<hash>.name`` companion file."""
    return stored.startswith(LONGNAME_PREFIX) and stored.endswith(LONGNAME_SUFFIX)


def longname_hash(encoded: str) -> str:
    """Stored name for an over-long encrypted name: prefix + Raw64(SHA-256(encoded name))."""
    return LONGNAME_PREFIX + raw64_encode(hashlib.sha256(encoded.encode("ascii")).digest())


def parse_longname_file(stored: str, content: bytes) -> str:
    """Check a ``.name`` file's content against the hash in its entry's name; return the encoded name."""
    if len(content) > MAX_LONGNAME_FILE:
        raise ValueError("long-name file too large")
    try:
        encoded = content.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("long-name file is not ASCII") from None
    if longname_hash(encoded) != stored:
        raise ValueError("long-name file does not match its hashed name")
    return encoded


def is_internal(stored: str, *, in_root: bool) -> bool:
    """Ciphertext entries that are format metadata, never shown as plaintext entries."""
    return stored == DIRIV_NAME or (in_root and stored == CONF_NAME) or is_longname_file(stored)


@dataclass(frozen=True)
class EncryptedName:
    """What the encryptor writes for one name: the stored entry and, for long names, the .name content."""

    stored: str
    longname_content: bytes | None = None


class NameCodec:
    """Encrypts and decrypts directory entry names of one volume."""

    def __init__(self, config: VolumeConfig, name_key: bytes) -> None:
        self.plaintext = config.plaintext_names
        self.long_names = config.long_names
        self.long_name_max = config.long_name_max
        self._eme = None if self.plaintext else Eme(name_key)

    def decrypt(self, encoded: str, iv: bytes) -> bytes:
        """Encoded (not hashed) stored name → plaintext name bytes; ``ValueError`` if invalid."""
        if self._eme is None:
            return check_plain_name(encoded.encode("utf-8", "surrogateescape"))
        raw = raw64_decode(encoded)
        if not raw or len(raw) % 16 or len(raw) > 2048:
            raise ValueError("encrypted name length is not a whole number of AES blocks")
        return check_plain_name(unpad16(self._eme.decrypt(iv, raw)))

    def encrypt(self, name: bytes, iv: bytes) -> EncryptedName:
        """Plaintext name → stored name (hashed when longer than the long-name limit)."""
        check_plain_name(name)
        if self._eme is None:
            return EncryptedName(name.decode("utf-8", "surrogateescape"))
        encoded = raw64_encode(self._eme.encrypt(iv, pad16(name)))
        if self.long_names and len(encoded) > self.long_name_max:
            return EncryptedName(longname_hash(encoded), encoded.encode("ascii"))
        return EncryptedName(encoded)

    def dir_iv(self, config: VolumeConfig) -> bool:
        """Whether directories carry a ``gocryptfs.diriv`` (else the IV is 16 zero bytes)."""
        return config.dir_iv and not self.plaintext


ZERO_IV = bytes(DIRIV_LEN)
