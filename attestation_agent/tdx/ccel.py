"""The ACPI CCEL table and the TCG2 crypto-agile event log it points to — sans-IO.

* ACPI table (``/sys/firmware/acpi/tables/CCEL``, 56 bytes): the 36-byte ACPI header (signature
  ``CCEL``, length, revision, checksum, OEM ids), CC type u8 @36 (2 = TDX), CC subtype u8 @37,
  2 reserved bytes, LAML (log area minimum length) u64 @40, LASA (log area start address) u64 @48.
* Event log (``/sys/firmware/acpi/tables/data/CCEL``, LAML bytes, unused tail 0xFF): a legacy
  SHA-1 format ``TCG_PCClientPCREvent`` carrying the ``Spec ID Event03`` structure (which lists
  the digest algorithms and sizes), then ``TCG_PCR_EVENT2`` records (MR index u32, event type u32,
  digest count u32, {alg id u16, digest}..., event size u32, event data). The log ends at the
  data's end or where eight 0xFF (or 0x00) bytes stand in place of the next record, as Trustee's
  parser does.
* Replay: CC measurement register *i* (1..4 = RTMR0..3 on TDX; 0 = MRTD, never extended) is the
  fold ``R = SHA-384(R || digest)`` from 48 zero bytes over its events, ``EV_NO_ACTION`` excluded
  (TCG: informational only, never extended).

Everything is bounded by the input length; malformed input raises :class:`EventLogError`.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from attestation_agent.tdx.errors import EventLogError

ACPI_TABLE_SIZE = 56
CC_TYPE_TDX = 2
MAX_EVENT_LOG_SIZE = 16 * 1024 * 1024
MAX_DIGESTS_PER_EVENT = 8
MAX_ALGORITHMS = 8

EV_NO_ACTION = 0x3
EV_EVENT_TAG = 0x6
ALG_SHA1, ALG_SHA256, ALG_SHA384, ALG_SHA512, ALG_SM3 = 0x0004, 0x000B, 0x000C, 0x000D, 0x0012
ALGORITHM_NAMES = {ALG_SHA1: "SHA-1", ALG_SHA256: "SHA-256", ALG_SHA384: "SHA-384", ALG_SHA512: "SHA-512",
                   ALG_SM3: "SM3"}
_HASHLIB = {ALG_SHA1: "sha1", ALG_SHA256: "sha256", ALG_SHA384: "sha384", ALG_SHA512: "sha512"}
RTMR_FIRST_MR_INDEX = 1  # CC MR index 1..4 -> RTMR0..3 (UEFI spec, "TDX vendor-specific information")

# TCG PC Client PFP event types, with the names Trustee reports.
EVENT_TYPE_NAMES = {
    0x0: "EV_PREBOOT_CERT", 0x1: "EV_POST_CODE", 0x2: "EV_UNUSED", 0x3: "EV_NO_ACTION", 0x4: "EV_SEPARATOR",
    0x5: "EV_ACTION", 0x6: "EV_EVENT_TAG", 0x7: "EV_S_CRTM_CONTENTS", 0x8: "EV_S_CRTM_VERSION",
    0x9: "EV_CPU_MICROCODE", 0xA: "EV_PLATFORM_CONFIG_FLAGS", 0xB: "EV_TABLE_OF_DEVICES",
    0xC: "EV_COMPACT_HASH", 0xD: "EV_IPL", 0xE: "EV_IPL_PARTITION_DATA", 0xF: "EV_NONHOST_CODE",
    0x10: "EV_NONHOST_CONFIG", 0x11: "EV_NONHOST_INFO", 0x12: "EV_OMIT_BOOT_DEVICE_EVENTS",
    0x13: "EV_POST_CODE2",
    0x80000000: "EV_EFI_EVENT_BASE", 0x80000001: "EV_EFI_VARIABLE_DRIVER_CONFIG",
    0x80000002: "EV_EFI_VARIABLE_BOOT", 0x80000003: "EV_EFI_BOOT_SERVICES_APPLICATION",
    0x80000004: "EV_EFI_BOOT_SERVICES_DRIVER", 0x80000005: "EV_EFI_RUNTIME_SERVICES_DRIVER",
    0x80000006: "EV_EFI_GPT_EVENT", 0x80000007: "EV_EFI_ACTION", 0x80000008: "EV_EFI_PLATFORM_FIRMWARE_BLOB",
    0x80000009: "EV_EFI_HANDOFF_TABLES", 0x8000000A: "EV_EFI_PLATFORM_FIRMWARE_BLOB2",
    0x8000000B: "EV_EFI_HANDOFF_TABLES2", 0x8000000C: "EV_EFI_VARIABLE_BOOT2",
    0x8000000D: "EV_EFI_GPT_EVENT2", 0x80000010: "EV_EFI_HCRTM_EVENT",
    0x800000E0: "EV_EFI_VARIABLE_AUTHORITY", 0x800000E1: "EV_EFI_SPDM_FIRMWARE_BLOB",
    0x800000E2: "EV_EFI_SPDM_FIRMWARE_CONFIG", 0x800000E3: "EV_EFI_SPDM_DEVICE_POLICY",
    0x800000E4: "EV_EFI_SPDM_DEVICE_AUTHORITY",
}


def event_type_name(event_type: int) -> str:
    return EVENT_TYPE_NAMES.get(event_type, f"EV_UNKNOWN_{event_type:#x}")


@dataclass(frozen=True)
class CcelTable:
    revision: int
    oem_id: bytes
    oem_table_id: bytes
    cc_type: int
    cc_subtype: int
    laml: int
    lasa: int


def parse_acpi_table(data: bytes) -> CcelTable:
    """Parse and validate the 56-byte CCEL ACPI table (signature, length, checksum, CC type)."""
    if len(data) < ACPI_TABLE_SIZE:
        raise EventLogError(f"CCEL ACPI table is {len(data)} bytes; it needs {ACPI_TABLE_SIZE}")
    signature, length, revision, _checksum, oem_id, oem_table_id = struct.unpack_from("<4sIBB6s8s", data)
    if signature != b"CCEL":
        raise EventLogError(f"ACPI table signature is {signature!r}, not b'CCEL'",
                            hint="point ccel_table_path at /sys/firmware/acpi/tables/CCEL")
    if length != ACPI_TABLE_SIZE or len(data) != length:
        raise EventLogError(f"CCEL ACPI table length field is {length} for {len(data)} bytes; expected 56")
    if sum(data) % 256:
        raise EventLogError("CCEL ACPI table checksum does not add up to zero; the table is corrupt")
    cc_type, cc_subtype = data[36], data[37]
    laml, lasa = struct.unpack_from("<QQ", data, 40)
    return CcelTable(revision, oem_id, oem_table_id, cc_type, cc_subtype, laml, lasa)


@dataclass(frozen=True)
class SpecIdEvent:
    """The ``Spec ID Event03`` header: which digests each later record carries, and their sizes."""

    platform_class: int
    spec_version: tuple[int, int, int]
    uintn_size: int
    digest_sizes: dict[int, int]
    vendor_info: bytes
    #: the raw first record (legacy format), needed when re-emitting a log
    raw: bytes


@dataclass(frozen=True)
class Event:
    mr_index: int
    event_type: int
    digests: tuple[tuple[int, bytes], ...]
    data: bytes
    offset: int

    @property
    def type_name(self) -> str:
        return event_type_name(self.event_type)

    def digest(self, alg: int = ALG_SHA384) -> bytes | None:
        for alg_id, value in self.digests:
            if alg_id == alg:
                return value
        return None

    def digest_matches_data(self) -> bool:
        """True when every digest is the plain hash of the event data (Trustee's
        ``digest_matches_event``; false for events that hash something else, e.g. a PE image)."""
        for alg_id, value in self.digests:
            name = _HASHLIB.get(alg_id)
            if name is None or hashlib.new(name, self.data).digest() != value:
                return False
        return bool(self.digests)


@dataclass(frozen=True)
class EventLog:
    spec_id: SpecIdEvent
    events: tuple[Event, ...]
    #: offset just past the last record (where padding or the terminator starts)
    end: int


class _Reader:
    def __init__(self, data: bytes, offset: int = 0) -> None:
        self.data = data
        self.offset = offset

    def take(self, size: int, what: str) -> bytes:
        if size < 0 or self.offset + size > len(self.data):
            raise EventLogError(f"event log truncated: {what} needs {size} bytes at offset {self.offset}, "
                                f"only {max(0, len(self.data) - self.offset)} remain")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        return struct.unpack("<H", self.take(2, what))[0]

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]


def _parse_spec_id(data: bytes) -> SpecIdEvent:
    r = _Reader(data)
    r.u32("header MR index")
    event_type = r.u32("header event type")
    if event_type != EV_NO_ACTION:
        raise EventLogError(f"first event log record has type {event_type:#x}, not EV_NO_ACTION (3)",
                            hint="a crypto-agile log starts with the Spec ID event; is this a CCEL log?")
    r.take(20, "header SHA-1 digest")
    size = r.u32("header event size")
    body = _Reader(r.take(size, "Spec ID event"))
    signature = body.take(16, "Spec ID signature")
    if signature != b"Spec ID Event03\0":
        raise EventLogError(f"Spec ID signature is {signature!r}, not 'Spec ID Event03'",
                            hint="only TCG2 crypto-agile event logs are supported")
    platform_class = body.u32("platform class")
    minor, major, errata, uintn = body.take(4, "spec version")
    count = body.u32("number of algorithms")
    if not 0 < count <= MAX_ALGORITHMS:
        raise EventLogError(f"Spec ID event lists {count} digest algorithms; expected 1..{MAX_ALGORITHMS}")
    sizes: dict[int, int] = {}
    for _ in range(count):
        alg = body.u16("algorithm id")
        sizes[alg] = body.u16("digest size")
        expected = hashlib.new(_HASHLIB[alg]).digest_size if alg in _HASHLIB else None
        if (expected is not None and sizes[alg] != expected) or not 0 < sizes[alg] <= 64:
            raise EventLogError(f"Spec ID event gives digest size {sizes[alg]} for algorithm {alg:#06x}")
    vendor = body.take(body.u8("vendor info size"), "vendor info")
    if body.offset != len(body.data):
        raise EventLogError(f"Spec ID event has {len(body.data) - body.offset} unexplained trailing bytes")
    return SpecIdEvent(platform_class, (major, minor, errata), uintn, sizes, vendor, data[:r.offset])


def _at_terminator(data: bytes, offset: int) -> bool:
    rest = data[offset:offset + 8]
    return (len(rest) < 8 and set(rest) <= {0xFF}) or rest in (b"\xff" * 8, b"\0" * 8)


def parse_events(data: bytes, digest_sizes: dict[int, int], offset: int = 0) -> tuple[list[Event], int]:
    """Parse ``TCG_PCR_EVENT2`` records from ``offset`` until the data ends or a terminator."""
    events: list[Event] = []
    r = _Reader(data, offset)
    while r.offset < len(data) and not _at_terminator(data, r.offset):
        start = r.offset
        mr_index = r.u32("MR index")
        event_type = r.u32("event type")
        count = r.u32("digest count")
        if not 0 < count <= MAX_DIGESTS_PER_EVENT:
            raise EventLogError(f"event at offset {start} claims {count} digests; expected 1..{MAX_DIGESTS_PER_EVENT}")
        digests = []
        for _ in range(count):
            alg = r.u16("digest algorithm")
            size = digest_sizes.get(alg)
            if size is None:
                raise EventLogError(f"event at offset {start} uses digest algorithm {alg:#06x}, which the Spec ID "
                                    "event does not declare")
            digests.append((alg, r.take(size, "digest")))
        size = r.u32("event data size")
        payload = r.take(size, "event data")
        events.append(Event(mr_index, event_type, tuple(digests), payload, start))
    return events, r.offset


def parse_event_log(data: bytes) -> EventLog:
    """Parse a whole CCEL (or TCG2) event log; trailing 0xFF padding is accepted."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise EventLogError("an event log must be bytes")
    data = bytes(data)
    if len(data) > MAX_EVENT_LOG_SIZE:
        raise EventLogError(f"event log is {len(data)} bytes, over the {MAX_EVENT_LOG_SIZE}-byte limit")
    spec = _parse_spec_id(data)
    events, end = parse_events(data, spec.digest_sizes, len(spec.raw))
    return EventLog(spec, tuple(events), end)


def trim(data: bytes) -> bytes:
    """The log without its padding: bytes up to the end of the last record (guest-components'
    ``trim_ccel``), validated by a full parse."""
    return bytes(data[:parse_event_log(data).end])


def replay(events: Iterable[Event], alg: int = ALG_SHA384) -> dict[int, bytes]:
    """Fold each MR index's digests: ``R = H(R || digest)`` from zero; EV_NO_ACTION skipped."""
    name = _HASHLIB.get(alg)
    if name is None:
        raise EventLogError(f"cannot replay digest algorithm {alg:#06x}")
    size = hashlib.new(name).digest_size
    registers: dict[int, bytes] = {}
    for event in events:
        if event.event_type == EV_NO_ACTION:
            continue
        digest = event.digest(alg)
        if digest is None:
            raise EventLogError(f"event at offset {event.offset} (MR {event.mr_index}) has no "
                                f"{ALGORITHM_NAMES.get(alg, hex(alg))} digest to replay")
        previous = registers.get(event.mr_index, bytes(size))
        registers[event.mr_index] = hashlib.new(name, previous + digest).digest()
    return registers


def replay_rtmrs(events: Iterable[Event]) -> tuple[bytes, bytes, bytes, bytes]:
    """RTMR0..3 as the log predicts them (CC MR index 1..4, SHA-384)."""
    registers = replay(events, ALG_SHA384)
    zero = bytes(48)
    return tuple(registers.get(RTMR_FIRST_MR_INDEX + i, zero) for i in range(4))  # type: ignore[return-value]


def encode_event(mr_index: int, event_type: int, digests: Iterable[tuple[int, bytes]], data: bytes) -> bytes:
    """Serialize one ``TCG_PCR_EVENT2`` record."""
    digests = tuple(digests)
    out = struct.pack("<III", mr_index, event_type, len(digests))
    for alg, value in digests:
        out += struct.pack("<H", alg) + value
    return out + struct.pack("<I", len(data)) + data


def spec_id_header(algorithms: dict[int, int] | None = None, vendor_info: bytes = b"") -> bytes:
    """A minimal legacy-format Spec ID header record (for logs that have no CCEL of their own)."""
    algorithms = algorithms or {ALG_SHA384: 48}
    body = b"Spec ID Event03\0" + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(algorithms))
    for alg, size in algorithms.items():
        body += struct.pack("<HH", alg, size)
    body += bytes([len(vendor_info)]) + vendor_info
    return struct.pack("<II", 0, EV_NO_ACTION) + bytes(20) + struct.pack("<I", len(body)) + body
