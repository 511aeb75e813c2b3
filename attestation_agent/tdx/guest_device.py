"""The legacy ``/dev/tdx_guest`` ioctl — only for a raw TD report, never for a quote.

``TDX_CMD_GET_REPORT0 = _IOWR('T', 1, struct tdx_report_req)`` with ``struct tdx_report_req {
u8 reportdata[64]; u8 tdreport[1024]; }``: the kernel fills the 1024-byte TDREPORT. A TD report
is MAC-ed for this platform only and is not remote evidence; it is useful to read RTMRs and
MRCONFIGID on kernels without the sysfs measurement files. Quotes go through configfs-tsm
(:mod:`attestation_agent.tdx.tsm`): the out-of-tree GET_QUOTE ioctl was never merged upstream and
is deliberately not implemented.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from attestation_agent.tdx.errors import TsmError
from attestation_agent.tdx.td_report import TD_REPORT_SIZE

TDX_GUEST_DEVICE = Path("/dev/tdx_guest")
TDX_CMD_GET_REPORT0 = 0xC4405401
REPORT_DATA_SIZE = 64


def get_td_report(report_data: bytes, device: Path = TDX_GUEST_DEVICE) -> bytes:
    """The raw TDREPORT binding ``report_data`` (exactly 64 bytes). Blocking."""
    if len(report_data) != REPORT_DATA_SIZE:
        raise TsmError(f"TD report data must be exactly {REPORT_DATA_SIZE} bytes, got {len(report_data)}")
    request = bytearray(report_data + bytes(TD_REPORT_SIZE))
    try:
        fd = os.open(device, os.O_RDWR)
    except OSError as exc:
        raise TsmError(f"opening {device} failed: {exc.strerror or exc}",
                       hint="the tdx_guest driver is not loaded or this is not a TDX guest") from None
    try:
        fcntl.ioctl(fd, TDX_CMD_GET_REPORT0, request, True)
    except OSError as exc:
        hint = ("this file is not the tdx_guest device" if exc.errno == errno.ENOTTY
                else "the TDCALL failed; check dmesg for tdx_guest errors")
        raise TsmError(f"TDX_CMD_GET_REPORT0 on {device} failed: {exc.strerror or exc}", hint=hint) from None
    finally:
        os.close(fd)
    return bytes(request[REPORT_DATA_SIZE:])
