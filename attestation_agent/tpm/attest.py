"""TPMS_ATTEST (TPM 2.0 Part 2 §10.12.12): parse and marshal, quote bodies only.

This is the message an AK signs in ``TPM2_Quote``. Trustee's verifier unmarshals it to read
``extraData`` (the qualifying data carrying the KBS binding) and ``pcrDigest``; the stand-in does
the same from this module. All integers are big-endian. The parser is strict: every size is
bounded, the magic must be TPM_GENERATED_VALUE, the type must be TPM_ST_ATTEST_QUOTE and no
bytes may follow the structure, so a mutated body fails with :class:`TpmFormatError` naming the
field rather than being half-read.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from attestation_agent.tpm.errors import TpmFormatError
from attestation_agent.tpm.pcr import MAX_SELECT_BYTES

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
#: TPMU_NAME is a TPMT_HA (2 + 64) or a 4-byte handle
MAX_NAME = 68
#: TPM2B_DATA holds at most sizeof(TPMT_HA) = 2 + 64 bytes
MAX_EXTRA_DATA = 66
MAX_DIGEST = 64
#: HASH_COUNT: a TPM has at most a handful of banks; 16 is generous
MAX_SELECTIONS = 16
#: a marshalled quote body is a few hundred bytes; anything larger is not one
MAX_ATTEST_SIZE = 2048


@dataclass(frozen=True)
class ClockInfo:
    clock: int
    reset_count: int
    restart_count: int
    safe: bool


@dataclass(frozen=True)
class PcrSelection:
    """One TPMS_PCR_SELECTION: a hash algorithm id and its pcrSelect bitmap."""

    alg_id: int
    select: bytes


@dataclass(frozen=True)
class TpmsAttest:
    """A parsed quote body (TPMS_ATTEST with TPMS_QUOTE_INFO)."""

    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    pcr_select: tuple[PcrSelection, ...]
    pcr_digest: bytes
    magic: int = TPM_GENERATED_VALUE
    type: int = TPM_ST_ATTEST_QUOTE


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, size: int, what: str) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise TpmFormatError(f"TPMS_ATTEST is truncated in {what} (needs {size} bytes at offset "
                                 f"{self.offset}, {len(self.data) - self.offset} left)")
        chunk = self.data[self.offset:end]
        self.offset = end
        return chunk

    def uint(self, fmt: str, what: str) -> int:
        size = struct.calcsize(fmt)
        return int(struct.unpack(fmt, self.take(size, what))[0])

    def tpm2b(self, limit: int, what: str) -> bytes:
        size = self.uint(">H", f"{what} size")
        if size > limit:
            raise TpmFormatError(f"TPMS_ATTEST {what} is {size} bytes; at most {limit} are allowed")
        return self.take(size, what)


def parse_attest(data: bytes) -> TpmsAttest:
    """Parse a marshalled TPMS_ATTEST quote body (the TPM2B_ATTEST buffer without its size)."""
    if not isinstance(data, bytes | bytearray):
        raise TpmFormatError("TPMS_ATTEST must be bytes")
    if len(data) > MAX_ATTEST_SIZE:
        raise TpmFormatError(f"TPMS_ATTEST is {len(data)} bytes; a quote body is at most {MAX_ATTEST_SIZE}")
    reader = _Reader(bytes(data))
    magic = reader.uint(">I", "magic")
    if magic != TPM_GENERATED_VALUE:
        raise TpmFormatError(f"TPMS_ATTEST magic is 0x{magic:08x}, not TPM_GENERATED_VALUE 0xff544347",
                             hint="the attest body was not produced by a TPM (or is not a TPMS_ATTEST)")
    kind = reader.uint(">H", "type")
    if kind != TPM_ST_ATTEST_QUOTE:
        raise TpmFormatError(f"TPMS_ATTEST type is 0x{kind:04x}, not TPM_ST_ATTEST_QUOTE 0x8018",
                             hint="the evidence must carry a TPM2_Quote, not another attestation")
    signer = reader.tpm2b(MAX_NAME, "qualifiedSigner")
    extra = reader.tpm2b(MAX_EXTRA_DATA, "extraData")
    clock = reader.uint(">Q", "clockInfo.clock")
    resets = reader.uint(">I", "clockInfo.resetCount")
    restarts = reader.uint(">I", "clockInfo.restartCount")
    safe = reader.uint(">B", "clockInfo.safe")
    if safe > 1:
        raise TpmFormatError(f"TPMS_ATTEST clockInfo.safe is {safe}; TPMI_YES_NO is 0 or 1")
    firmware = reader.uint(">Q", "firmwareVersion")
    count = reader.uint(">I", "pcrSelect count")
    if count > MAX_SELECTIONS:
        raise TpmFormatError(f"TPMS_ATTEST selects {count} PCR banks; at most {MAX_SELECTIONS} exist")
    selections = []
    for i in range(count):
        alg = reader.uint(">H", f"pcrSelect[{i}].hash")
        size = reader.uint(">B", f"pcrSelect[{i}].sizeofSelect")
        if size > MAX_SELECT_BYTES:
            raise TpmFormatError(f"TPMS_ATTEST pcrSelect[{i}] bitmap is {size} bytes; at most {MAX_SELECT_BYTES}")
        selections.append(PcrSelection(alg, reader.take(size, f"pcrSelect[{i}].pcrSelect")))
    digest = reader.tpm2b(MAX_DIGEST, "pcrDigest")
    if reader.offset != len(reader.data):
        raise TpmFormatError(f"TPMS_ATTEST has {len(reader.data) - reader.offset} unexpected bytes after pcrDigest")
    return TpmsAttest(signer, extra, ClockInfo(clock, resets, restarts, bool(safe)), firmware,
                      tuple(selections), digest)


def marshal_attest(attest: TpmsAttest) -> bytes:
    """Marshal ``attest`` exactly as a TPM does (used by tests and fixtures; inverse of parse)."""
    def tpm2b(value: bytes, limit: int, what: str) -> bytes:
        if len(value) > limit:
            raise TpmFormatError(f"{what} is {len(value)} bytes; at most {limit} are allowed")
        return struct.pack(">H", len(value)) + value

    if len(attest.pcr_select) > MAX_SELECTIONS:
        raise TpmFormatError(f"at most {MAX_SELECTIONS} PCR selections fit a quote")
    out = [struct.pack(">IH", attest.magic, attest.type),
           tpm2b(attest.qualified_signer, MAX_NAME, "qualifiedSigner"),
           tpm2b(attest.extra_data, MAX_EXTRA_DATA, "extraData"),
           struct.pack(">QIIB", attest.clock_info.clock, attest.clock_info.reset_count,
                       attest.clock_info.restart_count, int(attest.clock_info.safe)),
           struct.pack(">Q", attest.firmware_version),
           struct.pack(">I", len(attest.pcr_select))]
    for selection in attest.pcr_select:
        if len(selection.select) > MAX_SELECT_BYTES:
            raise TpmFormatError(f"a pcrSelect bitmap is at most {MAX_SELECT_BYTES} bytes")
        out.append(struct.pack(">HB", selection.alg_id, len(selection.select)) + selection.select)
    out.append(tpm2b(attest.pcr_digest, MAX_DIGEST, "pcrDigest"))
    return b"".join(out)
