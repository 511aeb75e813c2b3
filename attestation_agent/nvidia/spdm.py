"""NVIDIA GPU attestation report: SPDM 1.1 GET_MEASUREMENTS request ‖ MEASUREMENTS response (sans-IO).

What NVML's ``nvmlDeviceGetConfComputeGpuAttestationReport`` returns is the 37-byte request the
driver sent to the GPU followed by the GPU's signed response (DSP0274 1.1.1 §10.11):

request  ``version u8 (0x11) | code u8 (0xE0) | param1 u8 (bit0: signature requested) |
param2 u8 (0xFF: all blocks) | nonce[32] | slot_id u8``

response ``version u8 | code u8 (0x60) | param1 u8 | param2 u8 | number_of_blocks u8 |
record_length u24 LE | record | nonce[32] | opaque_length u16 LE | opaque | signature[96]``

Each record block is ``index u8 | spec u8 (bit0 = DMTF) | size u16 LE | DMTF value`` and the DMTF
value is ``type u8 | size u16 LE | bytes``. The opaque data is NVIDIA's TLV list
``{type u16 LE, size u16 LE, data}`` (driver version, VBIOS version, FWID, ...). The signature is a
raw P-384 ECDSA ``r ‖ s`` over SHA-384 of every byte before it, request included.

The parser is strict where a lax reading would change the meaning (counts, lengths, duplicate
indices or opaque types, non-DMTF blocks) and bounded (at most NVML's 8 KiB report buffer). It
tolerates up to 16 trailing bytes after the signature, because real captures carry one (trustee's
``hopper_coco_report1.txt``); those bytes are outside the signed span and are reported, not used.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from attestation_agent.nvidia.errors import SpdmError

SPDM_VERSION_1_1 = 0x11
GET_MEASUREMENTS = 0xE0
MEASUREMENTS = 0x60
REQUEST_SIZE = 37
NONCE_SIZE = 32
SIGNATURE_SIZE = 96  # ECDSA P-384 r ‖ s
MAX_REPORT_SIZE = 0x2000  # NVML_CC_GPU_ATTESTATION_REPORT_SIZE
MAX_TRAILING = 16
DMTF_SPEC = 0x01
_RESPONSE_HEADER = 8  # version, code, param1, param2, number_of_blocks, record_length u24

#: NVIDIA opaque-data field types (nvtrust / NVAT ``OpaqueDataType``); unknown types are kept raw.
OPAQUE_FIELD_NAMES: Mapping[int, str] = {
    1: "CERT_ISSUER_NAME",
    2: "CERT_AUTHORITY_KEY_IDENTIFIER",
    3: "DRIVER_VERSION",
    4: "GPU_INFO",
    5: "SKU",
    6: "VBIOS_VERSION",
    7: "MANUFACTURER_ID",
    8: "TAMPER_DETECTION",
    9: "SMC",
    10: "VPR",
    11: "NVDEC0_STATUS",
    12: "MSRSCNT",
    13: "CPRINFO",
    14: "BOARD_ID",
    15: "CHIP_SKU",
    16: "CHIP_SKU_MOD",
    17: "PROJECT",
    18: "PROJECT_SKU",
    19: "PROJECT_SKU_MOD",
    20: "FWID",
    21: "PROTECTED_PCIE_STATUS",
    22: "SWITCH_PDI",
    23: "FLOORSWEPT_PORTS",
    24: "POSITION_ID",
    25: "LOCK_SWITCH_STATUS",
    32: "GPU_LINK_CONN",
    33: "SYS_ENABLE_STATUS",
    34: "OPAQUE_DATA_VERSION",
    35: "CHIP_INFO",
    36: "FEATURE_FLAG",
}
FEATURE_FLAGS: Mapping[int, str] = {0: "SPT", 1: "MPT", 2: "PPCIE"}


def opaque_field_name(field_type: int) -> str:
    return OPAQUE_FIELD_NAMES.get(field_type, f"UNKNOWN_{field_type}")


@dataclass(frozen=True)
class MeasurementRequest:
    """The GET_MEASUREMENTS request NVML sent; its nonce is the caller's challenge."""

    version: int
    code: int
    param1: int
    param2: int
    nonce: bytes
    slot_id: int

    @property
    def signature_requested(self) -> bool:
        return bool(self.param1 & 0x01)


@dataclass(frozen=True)
class MeasurementBlock:
    """One DMTF measurement block (index 1..N; Hopper: 64 blocks of 48-byte SHA-384 values)."""

    index: int
    spec: int
    value_type: int
    value: bytes


@dataclass(frozen=True)
class OpaqueField:
    type: int
    data: bytes

    @property
    def name(self) -> str:
        return opaque_field_name(self.type)


@dataclass(frozen=True)
class OpaqueData:
    """NVIDIA's opaque TLV fields, in report order, with typed accessors for what verifiers need."""

    fields: tuple[OpaqueField, ...]

    def __iter__(self) -> Iterator[OpaqueField]:
        return iter(self.fields)

    def get(self, name: str) -> bytes | None:
        for field in self.fields:
            if field.name == name:
                return field.data
        return None

    def text(self, name: str) -> str | None:
        """A NUL-padded ASCII field (DRIVER_VERSION, PROJECT, CHIP_SKU, ...) as text."""
        data = self.get(name)
        if data is None:
            return None
        return data.split(b"\0", 1)[0].decode("ascii", errors="replace")

    @property
    def driver_version(self) -> str | None:
        return self.text("DRIVER_VERSION")

    @property
    def vbios_version(self) -> str | None:
        """Printed as NVML prints it: ``96.00.9F.00.01`` (reversed first half, then one byte)."""
        data = self.get("VBIOS_VERSION")
        if data is None or len(data) < 5:
            return None
        half = len(data) // 2
        parts = [*reversed(data[:half]), data[half]]
        return ".".join(f"{b:02X}" for b in parts)

    @property
    def fwid(self) -> bytes | None:
        return self.get("FWID")

    @property
    def measurement_counts(self) -> tuple[int, ...]:
        """MSRSCNT: how many valid values each measurement index has (u32 LE per block)."""
        data = self.get("MSRSCNT") or b""
        return tuple(v for (v,) in struct.iter_unpack("<I", data[: len(data) - len(data) % 4]))

    @property
    def protected_pcie(self) -> bool:
        """True when the report says the GPU runs in protected-PCIe (multi-GPU) mode.

        ``PROTECTED_PCIE_STATUS`` is 0x55 in single-GPU samples and 0xAA in PPCIe samples, and
        newer drivers add ``FEATURE_FLAG`` = 2 (PPCIE); either one counts.
        """
        status = self.get("PROTECTED_PCIE_STATUS")
        return (status is not None and status[:1] == b"\xaa") or self.feature_flag == "PPCIE"

    @property
    def feature_flag(self) -> str | None:
        data = self.get("FEATURE_FLAG")
        if not data:
            return None
        value = int.from_bytes(data[:8], "little")
        return FEATURE_FLAGS.get(value, f"UNKNOWN_{value}")


@dataclass(frozen=True)
class MeasurementResponse:
    version: int
    code: int
    param1: int
    param2: int
    number_of_blocks: int
    record_length: int
    blocks: tuple[MeasurementBlock, ...]
    nonce: bytes
    opaque_length: int
    opaque: OpaqueData
    signature: bytes

    def measurements(self) -> dict[int, bytes]:
        return {block.index: block.value for block in self.blocks}


@dataclass(frozen=True)
class SpdmReport:
    """A parsed report. ``signed`` is exactly the byte span the signature covers."""

    request: MeasurementRequest
    response: MeasurementResponse
    signed: bytes
    trailing: bytes

    @property
    def signature(self) -> bytes:
        return self.response.signature


class _Reader:
    """Bounds-checked cursor; every short read names the field and offset."""

    def __init__(self, data: bytes, base: int = 0) -> None:
        self.data = data
        self.pos = 0
        self.base = base

    def take(self, size: int, what: str) -> bytes:
        if size < 0 or self.pos + size > len(self.data):
            raise SpdmError(
                f"SPDM report truncated: {what} needs {size} bytes at offset {self.base + self.pos}, "
                f"only {len(self.data) - self.pos} left",
                hint="the report is incomplete or corrupt; collect it again from NVML",
            )
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return int.from_bytes(self.take(2, what), "little")

    def u24(self, what: str) -> int:
        return int.from_bytes(self.take(3, what), "little")

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos


def parse_request(data: bytes) -> MeasurementRequest:
    """Parse the 37-byte GET_MEASUREMENTS request that prefixes every NVML report."""
    if len(data) != REQUEST_SIZE:
        raise SpdmError(f"SPDM GET_MEASUREMENTS request must be {REQUEST_SIZE} bytes, got {len(data)}")
    version, code, param1, param2 = data[0], data[1], data[2], data[3]
    if version != SPDM_VERSION_1_1:
        raise SpdmError(f"SPDM request version is 0x{version:02x}; only SPDM 1.1 (0x11) reports are supported",
                        hint="this GPU/driver produces a report format this agent does not know")
    if code != GET_MEASUREMENTS:
        raise SpdmError(f"SPDM request code is 0x{code:02x}, expected GET_MEASUREMENTS (0xe0)")
    request = MeasurementRequest(version, code, param1, param2, bytes(data[4:36]), data[36])
    if not request.signature_requested:
        raise SpdmError("SPDM request did not ask for a signature (param1 bit 0 clear): the report is unsigned",
                        hint="an unsigned report proves nothing; NVML always requests a signature")
    return request


def _parse_blocks(record: bytes, count: int, base: int) -> tuple[MeasurementBlock, ...]:
    reader = _Reader(record, base)
    blocks: list[MeasurementBlock] = []
    seen: set[int] = set()
    for n in range(count):
        index = reader.u8(f"measurement block {n} index")
        spec = reader.u8(f"measurement block {index} specification")
        size = reader.u16(f"measurement block {index} size")
        body = _Reader(reader.take(size, f"measurement block {index}"), base + reader.pos - size)
        if not spec & DMTF_SPEC:
            raise SpdmError(f"measurement block {index} uses specification 0x{spec:02x}, not DMTF (bit 0)")
        if index in seen:
            raise SpdmError(f"measurement block index {index} appears twice in the measurement record")
        seen.add(index)
        value_type = body.u8(f"block {index} DMTF value type")
        value_size = body.u16(f"block {index} DMTF value size")
        value = body.take(value_size, f"block {index} DMTF value")
        if body.remaining:
            raise SpdmError(f"measurement block {index} is {size} bytes but its DMTF value uses {3 + value_size}")
        blocks.append(MeasurementBlock(index, spec, value_type, value))
    if reader.remaining:
        raise SpdmError(f"measurement record has {reader.remaining} bytes after its {count} blocks",
                        hint="NumberOfBlocks and MeasurementRecordLength disagree; the report is corrupt")
    return tuple(blocks)


def parse_opaque(data: bytes, base: int = 0) -> OpaqueData:
    """Parse NVIDIA's opaque TLV list; duplicate types are rejected (one value per field)."""
    reader = _Reader(data, base)
    fields: list[OpaqueField] = []
    seen: set[int] = set()
    while reader.remaining:
        field_type = reader.u16("opaque field type")
        size = reader.u16(f"opaque field {opaque_field_name(field_type)} size")
        value = reader.take(size, f"opaque field {opaque_field_name(field_type)}")
        if field_type in seen:
            raise SpdmError(f"opaque field {opaque_field_name(field_type)} appears twice in the report")
        seen.add(field_type)
        fields.append(OpaqueField(field_type, value))
    return OpaqueData(tuple(fields))


def parse_report(data: bytes) -> SpdmReport:
    """Parse an NVML attestation report (request ‖ response). Raises :class:`SpdmError`."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SpdmError("SPDM report must be bytes")
    data = bytes(data)
    if len(data) > MAX_REPORT_SIZE:
        raise SpdmError(f"SPDM report is {len(data)} bytes; NVML reports are at most {MAX_REPORT_SIZE}")
    if len(data) < REQUEST_SIZE + _RESPONSE_HEADER:
        raise SpdmError(f"SPDM report is {len(data)} bytes: too short for a request and a response header")
    request = parse_request(data[:REQUEST_SIZE])
    reader = _Reader(data[REQUEST_SIZE:], REQUEST_SIZE)
    version = reader.u8("response version")
    code = reader.u8("response code")
    param1 = reader.u8("response param1")
    param2 = reader.u8("response param2")
    if version != request.version:
        raise SpdmError(f"SPDM response version 0x{version:02x} differs from the request's 0x{request.version:02x}")
    if code != MEASUREMENTS:
        hint = "the GPU answered with an SPDM ERROR" if code == 0x7F else None
        raise SpdmError(f"SPDM response code is 0x{code:02x}, expected MEASUREMENTS (0x60)", hint=hint)
    number_of_blocks = reader.u8("NumberOfBlocks")
    record_length = reader.u24("MeasurementRecordLength")
    record_base = REQUEST_SIZE + reader.pos
    blocks = _parse_blocks(reader.take(record_length, "measurement record"), number_of_blocks, record_base)
    nonce = reader.take(NONCE_SIZE, "response nonce")
    opaque_length = reader.u16("OpaqueLength")
    opaque_base = REQUEST_SIZE + reader.pos
    opaque = parse_opaque(reader.take(opaque_length, "opaque data"), opaque_base)
    signed_end = REQUEST_SIZE + reader.pos
    signature = reader.take(SIGNATURE_SIZE, "P-384 signature")
    trailing = reader.take(reader.remaining, "trailing bytes")
    if len(trailing) > MAX_TRAILING:
        raise SpdmError(f"SPDM report has {len(trailing)} unexpected bytes after the signature "
                        f"(at most {MAX_TRAILING} tolerated)",
                        hint="the report length does not match its contents; it is corrupt or not a GPU report")
    response = MeasurementResponse(version, code, param1, param2, number_of_blocks, record_length, blocks,
                                   nonce, opaque_length, opaque, signature)
    return SpdmReport(request, response, data[:signed_end], trailing)


def _hex(data: bytes) -> str:
    return "0x" + data.hex()


def to_nvidia_sdk_json(report: SpdmReport) -> dict[str, Any]:
    """The response in the field layout of NVIDIA's SDK dump (``spdm_parsed_output.json``).

    Used to cross-check this parser field by field against NVIDIA's golden output, and handy for
    debugging; MSRSCNT is a list of integers, every other opaque field the hex of its bytes.
    """
    response = report.response
    opaque: dict[str, Any] = {}
    for field in response.opaque:
        key = f"OPAQUE_FIELD_ID_{field.name}"
        if field.name == "MSRSCNT":
            opaque[key] = list(OpaqueData((field,)).measurement_counts)
        else:
            opaque[key] = _hex(field.data)
    return {
        "SPDMVersion": f"0x{response.version:02x}",
        "RequestResponseCode": f"0x{response.code:02x}",
        "Param1": f"0x{response.param1:02x}",
        "Param2": f"0x{response.param2:02x}",
        "NumberOfBlocks": response.number_of_blocks,
        "MeasurementRecordLength": response.record_length,
        "Nonce": _hex(response.nonce),
        "OpaqueLength": response.opaque_length,
        "Signature": _hex(response.signature),
        "MeasurementRecord": {
            "NumberOfBlocks": len(response.blocks),
            "MeasurementBlocks": {
                str(block.index): {
                    "DMTFSpecMeasurementValueType": block.value_type,
                    "DMTFSpecMeasurementValueSize": len(block.value),
                    "DMTFSpecMeasurementValue": _hex(block.value),
                }
                for block in response.blocks
            },
        },
        "OpaqueData": {"OpaqueDataField": opaque},
    }


def request_to_nvidia_sdk_json(request: MeasurementRequest) -> dict[str, str]:
    """The request in the layout of NVIDIA's ``spdm_req_parsed_output.json``."""
    return {
        "SPDMVersion": f"0x{request.version:02x}",
        "RequestResponseCode": f"0x{request.code:02x}",
        "Param1": f"0x{request.param1:02x}",
        "Param2": f"0x{request.param2:02x}",
        "Nonce": _hex(request.nonce),
        "SlotIDParam": f"0x{request.slot_id:02x}",
    }


def build_report(request_nonce: bytes, blocks: tuple[MeasurementBlock, ...], response_nonce: bytes,
                 opaque: OpaqueData, *, param2: int = 0) -> bytes:
    """Serialize request ‖ response *without* the signature (the bytes a signer signs).

    The inverse of :func:`parse_report` up to the signature; used to emulate a GPU in tests and
    to prove round trips. Append a 96-byte signature to obtain a complete report.
    """
    if len(request_nonce) != NONCE_SIZE or len(response_nonce) != NONCE_SIZE:
        raise SpdmError(f"SPDM nonces must be {NONCE_SIZE} bytes")
    request = bytes([SPDM_VERSION_1_1, GET_MEASUREMENTS, 0x01, 0xFF]) + request_nonce + b"\0"
    record = b""
    for block in blocks:
        dmtf = struct.pack("<BH", block.value_type, len(block.value)) + block.value
        record += struct.pack("<BBH", block.index, block.spec, len(dmtf)) + dmtf
    opaque_bytes = b"".join(struct.pack("<HH", f.type, len(f.data)) + f.data for f in opaque)
    if len(blocks) > 0xFF or len(record) > 0xFFFFFF or len(opaque_bytes) > 0xFFFF:
        raise SpdmError("SPDM report fields exceed their length fields")
    response = (bytes([SPDM_VERSION_1_1, MEASUREMENTS, 0x00, param2, len(blocks)]) + len(record).to_bytes(3, "little")
                + record + response_nonce + struct.pack("<H", len(opaque_bytes)) + opaque_bytes)
    return request + response
