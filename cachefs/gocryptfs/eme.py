"""EME (ECB-Mix-ECB, Halevi-Rogaway 2003), the wide-block mode gocryptfs encrypts names with.

There is no maintained EME package for Python, so this is a direct implementation over the
AES-ECB primitive of ``cryptography``, following ``rfjakob/eme``. A wide-block mode is used
because names have no room for a nonce: every ciphertext bit depends on every plaintext bit, so
equal name prefixes do not show. Names are few and short; this is not on the read path.

GF(2^128) doubling uses ``eme.go``'s little-endian byte convention, which makes it a plain
left shift of the little-endian integer with reduction by x^128 + x^7 + x^2 + x + 1.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 16
MAX_BLOCKS = 128  # eme.go refuses inputs above 2048 bytes
_MASK = (1 << 128) - 1


def _double(x: int) -> int:
    x <<= 1
    if x >> 128:
        x = (x & _MASK) ^ 0x87
    return x


def _ints(data: bytes) -> list[int]:
    return [int.from_bytes(data[i:i + BLOCK], "little") for i in range(0, len(data), BLOCK)]


def _bytes(values: list[int]) -> bytes:
    return b"".join(v.to_bytes(BLOCK, "little") for v in values)


class Eme:
    """EME-32 with AES-256 (any AES key size works): ``encrypt``/``decrypt`` (tweak, data)."""

    def __init__(self, key: bytes) -> None:
        # ECB is only the raw AES permutation here; EME's mixing makes the mode.
        cipher = Cipher(algorithms.AES(key), modes.ECB())  # noqa: S305
        self._enc = cipher.encryptor()
        self._dec = cipher.decryptor()
        self._l0 = int.from_bytes(self._enc.update(bytes(BLOCK)), "little")

    def encrypt(self, tweak: bytes, data: bytes) -> bytes:
        """Encrypt ``data`` (a positive multiple of 16 bytes, at most 2048) under ``tweak``."""
        return self._transform(tweak, data, self._enc)

    def decrypt(self, tweak: bytes, data: bytes) -> bytes:
        """Inverse of :meth:`encrypt`."""
        return self._transform(tweak, data, self._dec)

    def _transform(self, tweak: bytes, data: bytes, ecb: object) -> bytes:
        if len(tweak) != BLOCK:
            raise ValueError("EME tweak must be 16 bytes")
        if not data or len(data) % BLOCK or len(data) > MAX_BLOCKS * BLOCK:
            raise ValueError("EME input must be 16..2048 bytes in whole 16-byte blocks")
        update = ecb.update  # type: ignore[attr-defined]
        m = len(data) // BLOCK
        lj = []
        li = self._l0
        for _ in range(m):
            li = _double(li)
            lj.append(li)
        p = _ints(data)
        ppp = _ints(update(_bytes([p[j] ^ lj[j] for j in range(m)])))
        t = int.from_bytes(tweak, "little")
        mp = t
        for v in ppp:
            mp ^= v
        mc = int.from_bytes(update(mp.to_bytes(BLOCK, "little")), "little")
        mm = mp ^ mc
        ccc = [0] * m
        acc = 0
        for j in range(1, m):
            mm = _double(mm)
            ccc[j] = ppp[j] ^ mm
            acc ^= ccc[j]
        ccc[0] = mc ^ t ^ acc
        c = _ints(update(_bytes(ccc)))
        return _bytes([c[j] ^ lj[j] for j in range(m)])
