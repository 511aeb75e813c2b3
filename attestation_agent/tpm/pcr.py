"""PCR banks, PCR selection bitmaps and PCR digests (TPM 2.0 Part 2, TPMS_PCR_SELECTION).

The names of banks follow the openanolis evidence keys (``SHA1``, ``SHA256``, ...) because that is
how Trustee 1.5.2 labels each quote; the TPM itself only knows algorithm ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from attestation_agent.tpm.errors import TpmFormatError

#: PCRs a PC-client TPM implements (IMPLEMENTATION_PCR); quotes select from these.
PCR_COUNT = 24
#: Largest pcrSelect bitmap accepted from outside (PCR_SELECT_MAX is 3 or 4 on real TPMs).
MAX_SELECT_BYTES = 32


@dataclass(frozen=True)
class Bank:
    """One PCR bank: its evidence name, TPM_ALG_ID, digest size and hashlib name."""

    name: str
    alg_id: int
    digest_size: int
    hashlib_name: str

    def hash(self, data: bytes) -> bytes:
        return hashlib.new(self.hashlib_name, data).digest()


BANKS: tuple[Bank, ...] = (
    Bank("SHA1", 0x0004, 20, "sha1"),
    Bank("SHA256", 0x000B, 32, "sha256"),
    Bank("SHA384", 0x000C, 48, "sha384"),
    Bank("SHA512", 0x000D, 64, "sha512"),
)
_BY_NAME = {bank.name: bank for bank in BANKS}
_BY_ALG = {bank.alg_id: bank for bank in BANKS}


def bank(name: str) -> Bank:
    """The bank called ``name`` (case-insensitive: ``sha256`` or ``SHA256``)."""
    found = _BY_NAME.get(name.upper()) if isinstance(name, str) else None
    if found is None:
        raise TpmFormatError(f"unknown PCR bank {name!r}", hint="use one of " + ", ".join(_BY_NAME))
    return found


def bank_by_alg(alg_id: int) -> Bank | None:
    """The bank for a TPM_ALG_ID, or None for algorithms this code does not hash."""
    return _BY_ALG.get(alg_id)


def check_indices(indices: Iterable[int]) -> tuple[int, ...]:
    """Sorted, de-duplicated PCR indices, each within 0..23."""
    result = sorted(set(indices))
    if not result:
        raise TpmFormatError("the PCR selection is empty", hint="select at least one PCR (e.g. 0-23)")
    for index in result:
        if not isinstance(index, int) or not 0 <= index < PCR_COUNT:
            raise TpmFormatError(f"PCR index {index!r} is outside 0..{PCR_COUNT - 1}")
    return tuple(result)


def select_bitmap(indices: Iterable[int], size: int = 3) -> bytes:
    """The pcrSelect bitmap for ``indices`` (bit ``i % 8`` of byte ``i // 8`` selects PCR ``i``)."""
    bitmap = bytearray(size)
    for index in indices:
        if not 0 <= index < size * 8:
            raise TpmFormatError(f"PCR index {index} does not fit a {size}-byte selection bitmap")
        bitmap[index // 8] |= 1 << (index % 8)
    return bytes(bitmap)


def selected_indices(bitmap: bytes) -> tuple[int, ...]:
    """PCR indices selected by a pcrSelect bitmap, ascending (the order the TPM hashes them)."""
    return tuple(i for i in range(len(bitmap) * 8) if bitmap[i // 8] >> (i % 8) & 1)


def pcr_digest(values: Sequence[bytes], hash_name: str = "sha256") -> bytes:
    """The quote's pcrDigest: hash of the concatenated PCR values, in selection order.

    The TPM uses the signing scheme's hash (SHA-256 for an RSASSA-SHA256 AK) whatever the bank,
    which is why Trustee hashes SHA-1 bank values with SHA-256 too.
    """
    return hashlib.new(hash_name, b"".join(values)).digest()


def extend(value: bytes, digest: bytes, target: Bank) -> bytes:
    """The PCR value after ``TPM2_PCR_Extend(digest)``: ``H(value ‖ digest)``."""
    if len(value) != target.digest_size or len(digest) != target.digest_size:
        raise TpmFormatError(f"{target.name} PCR values and extend digests are {target.digest_size} bytes")
    return target.hash(value + digest)
