"""HPKE (RFC 9180) base mode for DHKEM(X25519, HKDF-SHA256) + HKDF-SHA256, from ``cryptography`` primitives.

``cryptography`` 50 ships a single-shot HPKE (``Suite.encrypt/decrypt``), but chunked OHTTP needs the
HPKE *context*: consecutive ``Seal``/``Open`` calls with sequence-number nonces and ``Export`` for the
response keys, which it does not expose. This module is that context and nothing more. Verified
against RFC 9180 Appendix A.1.1 (tests). Auth/PSK modes are not implemented: TNG uses the Auth
mode only for client attestation, which this gateway refuses with a clear error.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import x25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

KEM_X25519_SHA256 = 0x0020
KDF_HKDF_SHA256 = 0x0001
AEAD_AES_128_GCM = 0x0001
AEAD_AES_256_GCM = 0x0002
AEAD_CHACHA20_POLY1305 = 0x0003
AEAD_KEY_SIZES = {AEAD_AES_128_GCM: 16, AEAD_AES_256_GCM: 32, AEAD_CHACHA20_POLY1305: 32}
NN = 12  # nonce size of all three AEADs
NT = 16  # tag size
NENC = 32
MODE_BASE = 0x00


class HpkeError(ValueError):
    """Decryption failed or parameters are unsupported (no secret material in the message)."""


def _extract(salt: bytes, ikm: bytes) -> bytes:
    return hmac.new(salt or b"\0" * 32, ikm, hashlib.sha256).digest()


def _expand(prk: bytes, info: bytes, length: int) -> bytes:
    out, block, counter = b"", b"", 1
    while len(out) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        out += block
        counter += 1
    return out[:length]


def _labeled_extract(suite_id: bytes, salt: bytes, label: bytes, ikm: bytes) -> bytes:
    return _extract(salt, b"HPKE-v1" + suite_id + label + ikm)


def _labeled_expand(suite_id: bytes, prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    return _expand(prk, struct.pack(">H", length) + b"HPKE-v1" + suite_id + label + info, length)


_KEM_SUITE = b"KEM" + struct.pack(">H", KEM_X25519_SHA256)


def _kem_shared_secret(dh: bytes, enc: bytes, pk_r: bytes) -> bytes:
    prk = _labeled_extract(_KEM_SUITE, b"", b"eae_prk", dh)
    return _labeled_expand(_KEM_SUITE, prk, b"shared_secret", enc + pk_r, 32)


def _raw(public: x25519.X25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _aead(aead_id: int, key: bytes) -> AESGCM | ChaCha20Poly1305:
    return ChaCha20Poly1305(key) if aead_id == AEAD_CHACHA20_POLY1305 else AESGCM(key)


@dataclass
class Context:
    """An HPKE context (either role): sequence-numbered Seal/Open plus Export."""

    aead_id: int
    key: bytes
    base_nonce: bytes
    exporter_secret: bytes
    suite_id: bytes
    seq: int = 0

    def __post_init__(self) -> None:
        self._cipher = _aead(self.aead_id, self.key)

    def _nonce(self) -> bytes:
        if self.seq >= 2**64 - 1:
            raise HpkeError("HPKE sequence number overflow")
        return bytes(a ^ b for a, b in zip(self.base_nonce, self.seq.to_bytes(NN, "big"), strict=True))

    def seal(self, aad: bytes, plaintext: bytes) -> bytes:
        ct = self._cipher.encrypt(self._nonce(), plaintext, aad)
        self.seq += 1
        return ct

    def open(self, aad: bytes, ciphertext: bytes) -> bytes:
        try:
            pt = self._cipher.decrypt(self._nonce(), ciphertext, aad)
        except InvalidTag:
            raise HpkeError("HPKE open failed: ciphertext or key does not match") from None
        self.seq += 1
        return pt

    def export(self, context: bytes, length: int) -> bytes:
        return _labeled_expand(self.suite_id, self.exporter_secret, b"sec", context, length)


def _key_schedule(shared_secret: bytes, info: bytes, kdf_id: int, aead_id: int) -> Context:
    if kdf_id != KDF_HKDF_SHA256 or aead_id not in AEAD_KEY_SIZES:
        raise HpkeError(f"unsupported HPKE suite kdf={kdf_id:#06x} aead={aead_id:#06x}")
    suite_id = b"HPKE" + struct.pack(">HHH", KEM_X25519_SHA256, kdf_id, aead_id)
    psk_id_hash = _labeled_extract(suite_id, b"", b"psk_id_hash", b"")
    info_hash = _labeled_extract(suite_id, b"", b"info_hash", info)
    context = bytes([MODE_BASE]) + psk_id_hash + info_hash
    secret = _labeled_extract(suite_id, shared_secret, b"secret", b"")
    nk = AEAD_KEY_SIZES[aead_id]
    return Context(aead_id=aead_id,
                   key=_labeled_expand(suite_id, secret, b"key", context, nk),
                   base_nonce=_labeled_expand(suite_id, secret, b"base_nonce", context, NN),
                   exporter_secret=_labeled_expand(suite_id, secret, b"exp", context, 32),
                   suite_id=suite_id)


def setup_base_sender(pk_r: bytes, info: bytes, kdf_id: int, aead_id: int,
                      ephemeral: x25519.X25519PrivateKey | None = None) -> tuple[bytes, Context]:
    """Encapsulate to ``pk_r`` (raw 32 bytes); returns ``(enc, context)``."""
    eph = ephemeral or x25519.X25519PrivateKey.generate()
    try:
        dh = eph.exchange(x25519.X25519PublicKey.from_public_bytes(pk_r))
    except ValueError:
        raise HpkeError("recipient public key is not a valid X25519 key") from None
    enc = _raw(eph.public_key())
    return enc, _key_schedule(_kem_shared_secret(dh, enc, pk_r), info, kdf_id, aead_id)


def setup_base_receiver(enc: bytes, sk_r: x25519.X25519PrivateKey, info: bytes, kdf_id: int,
                        aead_id: int) -> Context:
    """Decapsulate ``enc`` with our private key; returns the receiver context."""
    if len(enc) != NENC:
        raise HpkeError(f"HPKE enc must be {NENC} bytes")
    try:
        dh = sk_r.exchange(x25519.X25519PublicKey.from_public_bytes(enc))
    except ValueError:
        raise HpkeError("HPKE enc is not a valid X25519 public key") from None
    return _key_schedule(_kem_shared_secret(dh, enc, _raw(sk_r.public_key())), info, kdf_id, aead_id)


def raw_public(key: x25519.X25519PrivateKey) -> bytes:
    return _raw(key.public_key())
