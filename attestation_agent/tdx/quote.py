"""Intel DCAP TDX quote, versions 4 and 5: a sans-IO parser and encoder.

Layout (all integers little-endian), per Intel's "TDX DCAP Quoting Library API" and checked
against the real quotes in ``fixtures/upstream``:

* header, 48 bytes: ``version`` u16, ``att_key_type`` u16 (2 = ECDSA P-256), ``tee_type`` u32
  (0x81 = TDX), 4 reserved bytes, ``qe_vendor_id`` 16, ``user_data`` 20;
* v4: the 584-byte TD report body follows at 48. v5: ``body_type`` u16 (2 = TDX 1.0 body of 584
  bytes, 3 = TDX 1.5 body of 648 bytes), ``body_size`` u32, then the body at 54;
* ``sig_data_len`` u32, then the signature data: ECDSA signature (r||s, 64), attestation key
  (x||y, 64), certification data (type u16, size u32, data). Type 6 (QE report certification
  data) holds the 384-byte QE report, its 64-byte signature by the PCK key, the QE
  authentication data (u16 length + bytes) and a nested certification data whose type 5 is the
  PEM PCK certificate chain.

The signed region is everything before ``sig_data_len`` (header plus, for v5, type and size,
plus body). Real quotes carry trailing padding after the signature data (zero bytes, up to the
kernel's buffer size); it is ignored, never interpreted. Every length is checked against the
bytes actually present so a hostile quote yields :class:`QuoteError`, not an IndexError.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace

from attestation_agent.tdx.errors import QuoteError

HEADER_SIZE = 48
TD_BODY_10_SIZE = 584
TD_BODY_15_SIZE = 648
QE_REPORT_SIZE = 384
ECDSA_SIG_SIZE = 64
ECDSA_KEY_SIZE = 64
MR_SIZE = 48
REPORT_DATA_SIZE = 64
RTMR_COUNT = 4

TEE_TYPE_TDX = 0x81
ATT_KEY_TYPE_ECDSA_P256 = 2
BODY_TYPE_SGX = 1
BODY_TYPE_TDX_10 = 2
BODY_TYPE_TDX_15 = 3
CERT_TYPE_PCK_CHAIN = 5
CERT_TYPE_QE_REPORT = 6
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

#: Upper bound on what we accept; real quotes are ~5 KiB, the kernel buffer is a few pages.
MAX_QUOTE_SIZE = 256 * 1024

# TD attribute bits, with the claim names Trustee uses.
TD_ATTRIBUTE_BITS = {"debug": 0, "septve_disable": 28, "protection_keys": 30, "key_locker": 31, "perfmon": 63}


@dataclass(frozen=True)
class QuoteHeader:
    version: int
    att_key_type: int
    tee_type: int
    reserved: bytes
    qe_vendor_id: bytes
    user_data: bytes

    def to_bytes(self) -> bytes:
        return struct.pack("<HHI4s16s20s", self.version, self.att_key_type, self.tee_type, self.reserved,
                           self.qe_vendor_id, self.user_data)


@dataclass(frozen=True)
class TdReportBody:
    """TD report body 1.0 (584 bytes) or 1.5 (648 bytes: adds TEE_TCB_SVN2 and MRSERVICETD)."""

    tee_tcb_svn: bytes
    mr_seam: bytes
    mrsigner_seam: bytes
    seam_attributes: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    report_data: bytes
    tee_tcb_svn2: bytes | None = None
    mr_servicetd: bytes | None = None

    @property
    def is_tdx15(self) -> bool:
        return self.tee_tcb_svn2 is not None

    def td_attribute_flags(self) -> dict[str, bool]:
        return td_attribute_flags(self.td_attributes)

    def to_bytes(self) -> bytes:
        out = b"".join((self.tee_tcb_svn, self.mr_seam, self.mrsigner_seam, self.seam_attributes,
                        self.td_attributes, self.xfam, self.mr_td, self.mr_config_id, self.mr_owner,
                        self.mr_owner_config, *self.rtmrs, self.report_data))
        if self.tee_tcb_svn2 is not None:
            out += self.tee_tcb_svn2 + (self.mr_servicetd or b"")
        return out


# (name, size) in body order; offsets follow from the sizes.
_BODY_FIELDS = (("tee_tcb_svn", 16), ("mr_seam", 48), ("mrsigner_seam", 48), ("seam_attributes", 8),
                ("td_attributes", 8), ("xfam", 8), ("mr_td", 48), ("mr_config_id", 48), ("mr_owner", 48),
                ("mr_owner_config", 48), ("rtmr0", 48), ("rtmr1", 48), ("rtmr2", 48), ("rtmr3", 48),
                ("report_data", 64))
_BODY15_FIELDS = (("tee_tcb_svn2", 16), ("mr_servicetd", 48))


def _split(data: bytes, fields: tuple[tuple[str, int], ...]) -> dict[str, bytes]:
    values, offset = {}, 0
    for name, size in fields:
        values[name] = data[offset:offset + size]
        offset += size
    return values


def parse_td_report_body(data: bytes) -> TdReportBody:
    """Parse a 584-byte (TDX 1.0) or 648-byte (TDX 1.5) TD report body."""
    if len(data) not in (TD_BODY_10_SIZE, TD_BODY_15_SIZE):
        raise QuoteError(f"TD report body is {len(data)} bytes; expected {TD_BODY_10_SIZE} (TDX 1.0) "
                         f"or {TD_BODY_15_SIZE} (TDX 1.5)")
    v = _split(data, _BODY_FIELDS)
    extra = _split(data[TD_BODY_10_SIZE:], _BODY15_FIELDS) if len(data) == TD_BODY_15_SIZE else {}
    return TdReportBody(
        tee_tcb_svn=v["tee_tcb_svn"], mr_seam=v["mr_seam"], mrsigner_seam=v["mrsigner_seam"],
        seam_attributes=v["seam_attributes"], td_attributes=v["td_attributes"], xfam=v["xfam"],
        mr_td=v["mr_td"], mr_config_id=v["mr_config_id"], mr_owner=v["mr_owner"],
        mr_owner_config=v["mr_owner_config"], rtmrs=(v["rtmr0"], v["rtmr1"], v["rtmr2"], v["rtmr3"]),
        report_data=v["report_data"], tee_tcb_svn2=extra.get("tee_tcb_svn2"),
        mr_servicetd=extra.get("mr_servicetd"),
    )


@dataclass(frozen=True)
class QeReport:
    """The quoting enclave's SGX report body (384 bytes); only the fields verifiers use are named."""

    raw: bytes

    @property
    def report_data(self) -> bytes:
        return self.raw[320:384]

    @property
    def mr_enclave(self) -> bytes:
        return self.raw[64:96]

    @property
    def mr_signer(self) -> bytes:
        return self.raw[128:160]

    @property
    def isv_prod_id(self) -> int:
        return int.from_bytes(self.raw[256:258], "little")

    @property
    def isv_svn(self) -> int:
        return int.from_bytes(self.raw[258:260], "little")

    def with_report_data(self, report_data: bytes) -> QeReport:
        if len(report_data) != REPORT_DATA_SIZE:
            raise QuoteError(f"QE report data must be {REPORT_DATA_SIZE} bytes, got {len(report_data)}")
        return QeReport(self.raw[:320] + report_data)


@dataclass(frozen=True)
class QuoteSignature:
    """The ECDSA signature data of a quote with type-6 (QE report) certification data."""

    signature: bytes
    attestation_key: bytes
    qe_report: QeReport
    qe_report_signature: bytes
    qe_auth_data: bytes
    pck_cert_type: int
    pck_cert_data: bytes

    def to_bytes(self) -> bytes:
        inner = struct.pack("<HI", self.pck_cert_type, len(self.pck_cert_data)) + self.pck_cert_data
        qe_cert = (self.qe_report.raw + self.qe_report_signature
                   + struct.pack("<H", len(self.qe_auth_data)) + self.qe_auth_data + inner)
        return (self.signature + self.attestation_key
                + struct.pack("<HI", CERT_TYPE_QE_REPORT, len(qe_cert)) + qe_cert)


@dataclass(frozen=True)
class Quote:
    header: QuoteHeader
    body_type: int
    body: TdReportBody
    signature: QuoteSignature
    #: bytes consumed (trailing padding of the input excluded)
    length: int = field(default=0, compare=False)

    @property
    def version(self) -> int:
        return self.header.version

    @property
    def report_data(self) -> bytes:
        return self.body.report_data

    @property
    def rtmrs(self) -> tuple[bytes, bytes, bytes, bytes]:
        return self.body.rtmrs

    def signed_bytes(self) -> bytes:
        """The bytes the attestation key signs: header, v5 type and size, and body."""
        body = self.body.to_bytes()
        prefix = self.header.to_bytes()
        if self.header.version == 5:
            prefix += struct.pack("<HI", self.body_type, len(body))
        return prefix + body

    def to_bytes(self) -> bytes:
        sig = self.signature.to_bytes()
        return self.signed_bytes() + struct.pack("<I", len(sig)) + sig

    def with_body(self, body: TdReportBody) -> Quote:
        return replace(self, body=body)


class _Reader:
    """Bounds-checked little-endian reader; every short read names the structure being read."""

    def __init__(self, data: bytes, offset: int = 0, end: int | None = None) -> None:
        self.data = data
        self.offset = offset
        self.end = len(data) if end is None else end

    def take(self, size: int, what: str) -> bytes:
        if size < 0 or self.offset + size > self.end:
            raise QuoteError(f"quote truncated: {what} needs {size} bytes at offset {self.offset}, "
                             f"only {max(0, self.end - self.offset)} remain",
                             hint="the quote is incomplete or corrupt; request a new one")
        chunk = self.data[self.offset:self.offset + size]
        self.offset += size
        return chunk

    def u16(self, what: str) -> int:
        return struct.unpack("<H", self.take(2, what))[0]

    def u32(self, what: str) -> int:
        return struct.unpack("<I", self.take(4, what))[0]


def parse_header(data: bytes) -> QuoteHeader:
    if len(data) < HEADER_SIZE:
        raise QuoteError(f"quote header needs {HEADER_SIZE} bytes, got {len(data)}")
    version, key_type, tee_type, reserved, vendor, user = struct.unpack_from("<HHI4s16s20s", data)
    return QuoteHeader(version, key_type, tee_type, reserved, vendor, user)


def parse_quote(data: bytes) -> Quote:
    """Parse a TDX DCAP quote v4/v5; raises :class:`QuoteError` on anything else."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise QuoteError("a TDX quote must be bytes")
    data = bytes(data)
    if len(data) > MAX_QUOTE_SIZE:
        raise QuoteError(f"TDX quote is {len(data)} bytes, larger than the {MAX_QUOTE_SIZE}-byte limit",
                         hint="quotes over 8 KiB are DICE/CWT format, not DCAP; check the provider")
    header = parse_header(data)
    if header.version not in (4, 5):
        raise QuoteError(f"unsupported quote version {header.version} at offset 0; only TDX quotes v4 and v5 "
                         "are supported (v3 is SGX)")
    if header.tee_type != TEE_TYPE_TDX:
        raise QuoteError(f"quote TEE type is {header.tee_type:#x}, not TDX (0x81)")
    if header.att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        raise QuoteError(f"quote attestation key type {header.att_key_type} is not ECDSA P-256 (2)")
    reader = _Reader(data, HEADER_SIZE)
    if header.version == 4:
        body_type, body_size = BODY_TYPE_TDX_10, TD_BODY_10_SIZE
    else:
        body_type = reader.u16("v5 body type")
        body_size = reader.u32("v5 body size")
        expected = {BODY_TYPE_TDX_10: TD_BODY_10_SIZE, BODY_TYPE_TDX_15: TD_BODY_15_SIZE}.get(body_type)
        if expected is None:
            raise QuoteError(f"quote v5 body type {body_type} at offset 48 is not a TD report (2 = TDX 1.0, "
                             "3 = TDX 1.5)")
        if body_size != expected:
            raise QuoteError(f"quote v5 body size {body_size} does not match body type {body_type} "
                             f"(expected {expected})")
    body = parse_td_report_body(reader.take(body_size, "TD report body"))
    sig_len = reader.u32("signature data length")
    sig_end = reader.offset + sig_len
    if sig_end > len(data):
        raise QuoteError(f"quote signature data length {sig_len} at offset {reader.offset - 4} runs past the "
                         f"end of the {len(data)}-byte quote")
    signature = _parse_signature_data(_Reader(data, reader.offset, sig_end))
    return Quote(header, body_type, body, signature, length=sig_end)


def _parse_signature_data(reader: _Reader) -> QuoteSignature:
    sig = reader.take(ECDSA_SIG_SIZE, "quote ECDSA signature")
    key = reader.take(ECDSA_KEY_SIZE, "attestation public key")
    cert_type = reader.u16("certification data type")
    cert_size = reader.u32("certification data size")
    if cert_type != CERT_TYPE_QE_REPORT:
        raise QuoteError(f"quote certification data type {cert_type} is not 6 (QE report certification data)",
                         hint="only TDX quotes with an embedded QE report and PCK chain are supported")
    if reader.offset + cert_size > reader.end:
        raise QuoteError(f"QE report certification data size {cert_size} runs past the signature data")
    inner = _Reader(reader.data, reader.offset, reader.offset + cert_size)
    qe_report = QeReport(inner.take(QE_REPORT_SIZE, "QE report"))
    qe_sig = inner.take(ECDSA_SIG_SIZE, "QE report signature")
    auth_len = inner.u16("QE authentication data length")
    auth = inner.take(auth_len, "QE authentication data")
    pck_type = inner.u16("PCK certification data type")
    pck_size = inner.u32("PCK certification data size")
    if pck_type != CERT_TYPE_PCK_CHAIN:
        raise QuoteError(f"nested certification data type {pck_type} is not 5 (PCK certificate chain)",
                         hint="the verifier needs the PCK chain embedded in the quote")
    pck_data = inner.take(pck_size, "PCK certificate chain")
    return QuoteSignature(sig, key, qe_report, qe_sig, auth, pck_type, pck_data)


def td_attribute_flags(td_attributes: bytes) -> dict[str, bool]:
    """Trustee's named TD attribute bits (``debug``, ``septve_disable``, ...)."""
    value = int.from_bytes(td_attributes, "little")
    return {name: bool(value >> bit & 1) for name, bit in TD_ATTRIBUTE_BITS.items()}
