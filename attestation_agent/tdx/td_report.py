"""The raw 1024-byte TDREPORT (``TDG.MR.REPORT``), as returned by ``TDX_CMD_GET_REPORT0``.

A TD report is MAC-ed for the local platform only: it is *not* remote evidence (the quoting
enclave turns it into a quote). It is useful inside the guest to read RTMRs, MRCONFIGID and
REPORTDATA on kernels without the sysfs measurement files. Layout (Intel TDX module ABI):
REPORTMACSTRUCT 256 bytes (REPORTTYPE @0, CPUSVN @16, TEE_TCB_INFO_HASH @32, TEE_INFO_HASH @80,
REPORTDATA @128, MAC @224), TEE_TCB_INFO 239 bytes @256, 17 reserved, TDINFO 512 bytes @512
(ATTRIBUTES @512, XFAM @520, MRTD @528, MRCONFIGID @576, MROWNER @624, MROWNERCONFIG @672,
RTMR0..3 @720/768/816/864, SERVTD_HASH @912).
"""

from __future__ import annotations

from dataclasses import dataclass

from attestation_agent.tdx.errors import QuoteError

TD_REPORT_SIZE = 1024
REPORT_TYPE_TDX = 0x81


@dataclass(frozen=True)
class TdReport:
    report_type: bytes
    cpu_svn: bytes
    report_data: bytes
    mac: bytes
    tee_tcb_svn: bytes
    mr_seam: bytes
    td_attributes: bytes
    xfam: bytes
    mr_td: bytes
    mr_config_id: bytes
    mr_owner: bytes
    mr_owner_config: bytes
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    servtd_hash: bytes


def parse_td_report(data: bytes) -> TdReport:
    """Parse a TDREPORT; raises :class:`QuoteError` if it is not 1024 bytes of type 0x81."""
    if not isinstance(data, bytes | bytearray) or len(data) != TD_REPORT_SIZE:
        size = len(data) if isinstance(data, bytes | bytearray) else "non-bytes"
        raise QuoteError(f"TD report must be exactly {TD_REPORT_SIZE} bytes, got {size}")
    data = bytes(data)
    if data[0] != REPORT_TYPE_TDX:
        raise QuoteError(f"TD report type byte is {data[0]:#x}, not TDX (0x81)",
                         hint="this is not a TDX TDREPORT (SGX and other report types are not supported)")

    def at(offset: int, size: int) -> bytes:
        return data[offset:offset + size]

    return TdReport(
        report_type=at(0, 4), cpu_svn=at(16, 16), report_data=at(128, 64), mac=at(224, 32),
        tee_tcb_svn=at(256 + 8, 16), mr_seam=at(256 + 24, 48),
        td_attributes=at(512, 8), xfam=at(520, 8), mr_td=at(528, 48), mr_config_id=at(576, 48),
        mr_owner=at(624, 48), mr_owner_config=at(672, 48),
        rtmrs=(at(720, 48), at(768, 48), at(816, 48), at(864, 48)), servtd_hash=at(912, 48),
    )
