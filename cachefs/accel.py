"""Batch decryption engines for gocryptfs content blocks: native (OpenSSL, C) or pure Python.

Why two engines: per-block ``AESGCM`` calls from Python spend as much time in the interpreter as in
AES-GCM, which kept the FUSE read path below stock gocryptfs (shared/reference/cachefs.md §3). The
optional C extension ``cachefs._accel`` decrypts a whole request in one call with the GIL released.
It is built by ``pip install`` when a compiler and the OpenSSL headers exist; otherwise, or when
forced with ``CAI_CACHEFS_DECRYPT_ENGINE=python``, the pure-Python engine (``cryptography``) is used.

Both engines have the same contract (tests run them against each other):
``decrypt(src, dst, file_id, first_block) -> int`` decrypts consecutive ciphertext blocks of ``src``
into ``dst`` and returns ``-1`` when every tag verified, else the index of the first failing block.
The failing block's plaintext region in ``dst`` is wiped and later blocks are not written, so no
unauthenticated byte is left behind. Hole (all-zero block) and ``strict`` policy is *not* here: it
lives once in :mod:`cachefs.gocryptfs.content`, shared by both engines.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Mapping
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from agents.errors import ConfigError
from agents.logsetup import get_logger

log = get_logger("cachefs.accel")

ENGINE_ENV = "CAI_CACHEFS_DECRYPT_ENGINE"
ENGINES = ("auto", "native", "python")
NONCE_LEN = 16
TAG_LEN = 16
OVERHEAD = NONCE_LEN + TAG_LEN
PLAIN_BLOCK = 4096
CIPHER_BLOCK = PLAIN_BLOCK + OVERHEAD
_U64 = struct.Struct(">Q")

try:
    from cachefs import _accel as _native
except ImportError as exc:  # no compiler/headers at install time, or a broken build
    _native = None
    _IMPORT_ERROR: str | None = str(exc)
else:
    _IMPORT_ERROR = None


class BatchDecryptor(Protocol):
    """One volume's content key bound to a decryption engine."""

    engine: str

    def decrypt(self, src: bytes | bytearray | memoryview, dst: bytearray | memoryview, file_id: bytes,
                first_block: int) -> int:
        """Decrypt blocks of ``src`` into ``dst``; ``-1`` or the index of the first failing block."""
        ...


def _check_shape(src_len: int, dst_len: int) -> int:
    nblocks = (src_len + CIPHER_BLOCK - 1) // CIPHER_BLOCK
    if nblocks and src_len - (nblocks - 1) * CIPHER_BLOCK <= OVERHEAD:
        raise ValueError("decrypt: the last ciphertext block holds no data")
    if dst_len < src_len - nblocks * OVERHEAD:
        raise ValueError("decrypt: dst is smaller than the plaintext")
    return nblocks


class PythonBatch:
    """Pure-Python engine: one ``AESGCM.decrypt_into`` per block (cryptography >= 42)."""

    engine = "python"

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("PythonBatch: key must be 32 bytes")
        self._aead = AESGCM(key)

    def decrypt(self, src: bytes | bytearray | memoryview, dst: bytearray | memoryview, file_id: bytes,
                first_block: int) -> int:
        view = memoryview(src)
        target = memoryview(dst)
        if len(file_id) != 16:
            raise ValueError("decrypt: file_id must be 16 bytes")
        nblocks = _check_shape(len(view), len(target))
        if not 0 <= first_block < 1 << 64:
            raise ValueError("decrypt: first_block must be in 0..2**64-1")
        if nblocks and first_block + nblocks - 1 >= 1 << 64:
            raise ValueError("decrypt: block number overflows 64 bits")
        aad = bytearray(8) + file_id
        decrypt_into = self._aead.decrypt_into
        pack = _U64.pack_into
        total = len(view)
        pos = wpos = 0
        for index in range(nblocks):
            end = min(pos + CIPHER_BLOCK, total)
            clen = end - pos - OVERHEAD
            pack(aad, 0, first_block + index)
            out = target[wpos:wpos + clen]
            try:
                decrypt_into(view[pos:pos + NONCE_LEN], view[pos + NONCE_LEN:end], aad, out)
            except InvalidTag:
                out[:] = bytes(clen)  # never leave unauthenticated plaintext behind
                return index
            pos = end
            wpos += clen
        return -1


class NativeBatch:
    """C engine: one GIL-free OpenSSL EVP loop per call (``cachefs._accel.GcmBatch``)."""

    engine = "native"

    def __init__(self, key: bytes) -> None:
        if _native is None:
            raise RuntimeError("the native decryption engine is not built")
        if len(key) != 32:
            raise ValueError("GcmBatch: key must be 32 bytes")
        self.decrypt = _native.GcmBatch(key).decrypt  # type: ignore[method-assign]

    def decrypt(self, src: bytes | bytearray | memoryview, dst: bytearray | memoryview, file_id: bytes,
                first_block: int) -> int:
        raise NotImplementedError  # replaced per instance by the C method (no Python frame per call)


def _self_test() -> str | None:
    """Known-answer check of the native engine against ``cryptography``; the reason it is unusable, or None."""
    if _native is None:
        return f"not built ({_IMPORT_ERROR})"
    try:
        key, fid = bytes(range(32)), bytes(range(1, 17))
        aead = AESGCM(key)
        blocks = []
        plain = bytes(range(256)) * 16 + b"tail"
        for n, start in enumerate((0, PLAIN_BLOCK)):
            nonce = bytes([n + 7]) * NONCE_LEN
            blocks.append(nonce + aead.encrypt(nonce, plain[start:start + PLAIN_BLOCK], _U64.pack(5 + n) + fid))
        src = bytearray(b"".join(blocks))
        out = bytearray(len(plain))
        if NativeBatch(key).decrypt(src, out, fid, 5) != -1 or out != plain:
            return "self-test produced wrong plaintext"
        src[-1] ^= 1
        if NativeBatch(key).decrypt(src, out, fid, 5) != 1 or any(out[PLAIN_BLOCK:]):
            return "self-test accepted a tampered block"
    except Exception as exc:  # any failure means: do not trust it, fall back
        return f"self-test failed: {exc}"
    return None


_NATIVE_PROBLEM: str | None = _self_test()


def native_available() -> bool:
    """True when the C extension is importable and passed its known-answer self-test."""
    return _NATIVE_PROBLEM is None


def resolve_engine(requested: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """``native`` or ``python`` from a setting (or ``CAI_CACHEFS_DECRYPT_ENGINE``; default ``auto``).

    ``auto`` takes the native engine when it works; ``native`` fails closed when it does not.
    """
    environ = os.environ if environ is None else environ
    choice = (requested or environ.get(ENGINE_ENV) or "auto").strip().lower()
    if choice not in ENGINES:
        raise ConfigError(f"unknown decryption engine {choice!r} (from {ENGINE_ENV} or the decrypt_engine setting)",
                          hint="use auto, native or python")
    if choice == "python":
        return "python"
    if native_available():
        return "native"
    if choice == "native":
        raise ConfigError(f"the native decryption engine was requested but is unusable: {_NATIVE_PROBLEM}",
                          hint="install gcc and libssl-dev and reinstall (pip install -e .), or use python")
    return "python"


def make_batch(key: bytes, engine: str | None = None) -> BatchDecryptor:
    """A :class:`BatchDecryptor` for ``key`` on the engine chosen by :func:`resolve_engine`."""
    if resolve_engine(engine) == "native":
        return NativeBatch(key)
    return PythonBatch(key)


def describe() -> dict[str, str]:
    """Engine facts for a start-up log line (no secrets)."""
    info = {"default_engine": resolve_engine(), "native": "ok" if _NATIVE_PROBLEM is None else _NATIVE_PROBLEM}
    if _native is not None:
        info["openssl"] = _native.openssl_version()
    return info
