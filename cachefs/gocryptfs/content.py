"""File contents: header, 4 KiB AES-256-GCM blocks, holes, and size/offset arithmetic.

Layout: an empty plaintext file is an empty ciphertext file; otherwise an 18-byte header
(``uint16_be 2`` ‖ 16-byte file ID) is followed by blocks of ``nonce(16) ‖ ciphertext ‖ tag(16)``,
4128 bytes for a full 4096-byte plaintext block. Block *n* is authenticated with AAD
``uint64_be(n) ‖ file ID``, which pins it to its position and file.

A block of 4128 zero bytes is a *hole* and reads as 4096 zeros without authentication (gocryptfs
compatibility); ``strict=True`` refuses holes, because an attacker holding the ciphertext could
otherwise zero any 4 KiB of a model silently.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from cachefs.accel import make_batch
from cachefs.errors import BlockAuthError, VolumeFormatError

HEADER_LEN = 18
HEADER_VERSION = 2
FILE_ID_LEN = 16
NONCE_LEN = 16
TAG_LEN = 16
OVERHEAD = NONCE_LEN + TAG_LEN
PLAIN_BLOCK = 4096
CIPHER_BLOCK = PLAIN_BLOCK + OVERHEAD
_ZERO_BLOCK = bytes(CIPHER_BLOCK)
_ZERO_PLAIN = bytes(PLAIN_BLOCK)
_U64 = struct.Struct(">Q")


def parse_header(data: bytes, where: str = "file") -> bytes:
    """Validate an 18-byte header and return the file ID."""
    if len(data) != HEADER_LEN:
        raise VolumeFormatError(f"{where}: header is {len(data)} bytes, expected {HEADER_LEN}")
    version = int.from_bytes(data[:2], "big")
    if version != HEADER_VERSION:
        raise VolumeFormatError(f"{where}: header version {version} is not {HEADER_VERSION}",
                                hint="the file is corrupt or not part of a gocryptfs v2 volume")
    file_id = bytes(data[2:])
    if not any(file_id):
        raise VolumeFormatError(f"{where}: all-zero file ID in header", hint="the file is corrupt")
    return file_id


def make_header(file_id: bytes) -> bytes:
    """Header for a new file."""
    if len(file_id) != FILE_ID_LEN or not any(file_id):
        raise ValueError("file ID must be 16 bytes, not all zero")
    return HEADER_VERSION.to_bytes(2, "big") + file_id


def plain_size(cipher_size: int, where: str = "file") -> int:
    """Plaintext size from ciphertext size; refuses sizes no gocryptfs file can have."""
    if cipher_size < 0:
        raise ValueError("negative size")
    if cipher_size == 0:
        return 0
    body = cipher_size - HEADER_LEN
    if body < 0:
        raise VolumeFormatError(f"{where}: {cipher_size} bytes is shorter than the file header",
                                hint="the file is truncated; re-upload it")
    full, rest = divmod(body, CIPHER_BLOCK)
    if rest and rest <= OVERHEAD:
        raise VolumeFormatError(f"{where}: last block has {rest} bytes, no room for data",
                                hint="the file is truncated; re-upload it")
    return full * PLAIN_BLOCK + (rest - OVERHEAD if rest else 0)


def cipher_size(plain: int) -> int:
    """Ciphertext size of a plaintext of ``plain`` bytes."""
    if plain < 0:
        raise ValueError("negative size")
    if plain == 0:
        return 0
    full, rest = divmod(plain, PLAIN_BLOCK)
    return HEADER_LEN + full * CIPHER_BLOCK + (rest + OVERHEAD if rest else 0)


def block_span(offset: int, length: int, size: int) -> tuple[int, int]:
    """Blocks ``[first, end)`` covering plaintext ``[offset, offset+length)`` clipped to ``size``."""
    if offset < 0 or length < 0:
        raise ValueError("negative offset or length")
    stop = min(offset + length, size)
    if stop <= offset:
        return offset // PLAIN_BLOCK, offset // PLAIN_BLOCK
    return offset // PLAIN_BLOCK, (stop + PLAIN_BLOCK - 1) // PLAIN_BLOCK


def cipher_span(first: int, end: int, csize: int) -> tuple[int, int]:
    """Ciphertext ``(offset, length)`` holding blocks ``[first, end)`` of a file of ``csize`` bytes."""
    start = HEADER_LEN + first * CIPHER_BLOCK
    stop = min(HEADER_LEN + end * CIPHER_BLOCK, csize)
    return start, max(0, stop - start)


def block_aad(block: int, file_id: bytes) -> bytes:
    """AAD of block ``block``: ``uint64_be(block) ‖ file ID``."""
    return _U64.pack(block) + file_id


class ContentCipher:
    """AES-256-GCM block encryption/decryption for one volume; reuse one instance per volume.

    Bulk decryption goes through a batch engine from :mod:`cachefs.accel` (native OpenSSL when
    built, else pure Python; ``engine`` forces one). Hole and ``strict`` policy is applied here,
    identically for both engines.
    """

    def __init__(self, content_key: bytes, engine: str | None = None) -> None:
        self._aead = AESGCM(content_key)
        self._batch = make_batch(content_key, engine)

    @property
    def engine(self) -> str:
        """``native`` or ``python``: which batch engine decrypts file contents."""
        return self._batch.engine

    def decrypt_blocks(self, data: bytes | bytearray | memoryview, first_block: int, file_id: bytes, *,
                       strict: bool = False, out: bytearray | memoryview | None = None,
                       where: str = "file") -> bytearray:
        """Decrypt consecutive ciphertext blocks starting at block ``first_block``.

        ``data`` must start on a block boundary; only its last block may be short. Raises
        :class:`BlockAuthError` naming the first block that fails — the failing block's plaintext is
        wiped and nothing after it is written, so no unauthenticated byte escapes (blocks before it,
        already authenticated, may have been written into ``out``). Returns a fresh ``bytearray``, or
        with ``out`` (at least the plaintext length; must not overlap ``data``) decrypts into it and
        returns an empty ``bytearray``.
        """
        view = memoryview(data)
        total = len(view)
        nblocks = (total + CIPHER_BLOCK - 1) // CIPHER_BLOCK
        plain_len = total - nblocks * OVERHEAD
        if nblocks and (total - (nblocks - 1) * CIPHER_BLOCK) <= OVERHEAD:
            raise VolumeFormatError(f"{where}: block {first_block + nblocks - 1} is too short to hold data",
                                    hint="the file is truncated; re-upload it")
        if len(file_id) != FILE_ID_LEN:
            raise VolumeFormatError(f"{where}: file ID is {len(file_id)} bytes, expected {FILE_ID_LEN}")
        buf = bytearray(plain_len) if out is None else out
        target = memoryview(buf)
        if len(target) < plain_len:
            raise ValueError(f"{where}: output buffer holds {len(target)} bytes, {plain_len} needed")
        done = 0  # blocks already handled
        while done < nblocks:
            try:
                bad = self._batch.decrypt(view[done * CIPHER_BLOCK:], target[done * PLAIN_BLOCK:], file_id,
                                          first_block + done)
            except ValueError as exc:  # e.g. a block number past 2**64: not a gocryptfs file
                raise VolumeFormatError(f"{where}: cannot decrypt from block {first_block + done}: {exc}") from None
            if bad < 0:
                break
            index = done + bad
            block = first_block + index
            start = index * CIPHER_BLOCK
            if view[start:start + CIPHER_BLOCK] != _ZERO_BLOCK:  # also true for a short last block
                raise BlockAuthError(f"{where}: block {block} failed authentication (GCM tag mismatch)",
                                     block=block, hint="the ciphertext is corrupt or tampered with")
            if strict:
                raise BlockAuthError(f"{where}: block {block} is an all-zero hole, refused in strict mode",
                                     block=block, hint="the ciphertext was zeroed; re-upload it")
            target[index * PLAIN_BLOCK:(index + 1) * PLAIN_BLOCK] = _ZERO_PLAIN  # gocryptfs hole
            done = index + 1
        return buf if out is None else bytearray()

    def encrypt_block(self, plain: bytes, block: int, file_id: bytes | None, nonce: bytes | None = None) -> bytes:
        """One ciphertext block (``nonce ‖ ct ‖ tag``); ``file_id=None`` for symlink targets."""
        if not 0 < len(plain) <= PLAIN_BLOCK:
            raise ValueError("a block holds 1..4096 plaintext bytes")
        nonce = os.urandom(NONCE_LEN) if nonce is None else nonce
        aad = _U64.pack(block) + (file_id or b"")
        return nonce + self._aead.encrypt(nonce, plain, aad)

    def decrypt_single(self, data: bytes, block: int, file_id: bytes | None, where: str) -> bytes:
        """Decrypt one block with no hole semantics (symlink targets, xattr values)."""
        if len(data) <= OVERHEAD or len(data) > CIPHER_BLOCK:
            raise VolumeFormatError(f"{where}: encrypted block has an impossible length {len(data)}")
        aad = _U64.pack(block) + (file_id or b"")
        try:
            return self._aead.decrypt(data[:NONCE_LEN], data[NONCE_LEN:], aad)
        except InvalidTag:
            raise BlockAuthError(f"{where}: failed authentication (GCM tag mismatch)", block=block,
                                 hint="the ciphertext is corrupt or tampered with") from None

    def encrypt_file(self, plain: bytes, file_id: bytes | None = None) -> bytes:
        """Whole-file encryption (the encryptor uses a streaming loop; this is for tests and small files)."""
        if not plain:
            return b""
        file_id = os.urandom(FILE_ID_LEN) if file_id is None else file_id
        parts = [make_header(file_id)]
        for n, start in enumerate(range(0, len(plain), PLAIN_BLOCK)):
            parts.append(self.encrypt_block(plain[start:start + PLAIN_BLOCK], n, file_id))
        return b"".join(parts)
