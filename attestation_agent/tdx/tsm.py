"""Getting a TDX quote through the kernel's configfs-tsm report interface (Linux >= 6.7).

Protocol (ABI ``configfs-tsm-report``; guest-components' ``tsm_report``): make a private
directory under ``/sys/kernel/config/tsm/report``; check ``provider`` reads ``tdx_guest``; write
exactly 64 bytes to ``inblob`` in one ``write()`` (they become TDREPORT.REPORTDATA); read
``outblob`` (the quote, generated on that read); then read ``generation`` and reject a value
other than 1 — a higher one means someone else wrote to our directory between our write and our
read, so the quote may carry their data. An empty ``outblob`` without an error is what QEMU
returns when it cannot reach the host's quote generation service. The directory is always
removed with a plain ``rmdir`` (configfs refuses unlinking the attribute files).

File operations go through :class:`TsmFilesystem` so tests can substitute an emulation of the
configfs semantics (``mkdir`` creating attribute files, ``outblob`` generated on read), which a
plain directory cannot provide. Blocking: async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import errno
import os
import secrets
from pathlib import Path
from typing import Protocol

from attestation_agent.tdx.errors import TsmError

TSM_REPORT_ROOT = Path("/sys/kernel/config/tsm/report")
INBLOB_SIZE = 64
MAX_OUTBLOB = 256 * 1024
EXPECTED_PROVIDER = "tdx_guest"
_RETRYABLE = {errno.EBUSY, errno.EINTR, errno.ETIMEDOUT, errno.EAGAIN}


class TsmFilesystem(Protocol):
    """The few filesystem operations the configfs-tsm protocol needs."""

    def mkdir(self, path: Path) -> None: ...

    def rmdir(self, path: Path) -> None: ...

    def read(self, path: Path, limit: int) -> bytes: ...

    def write(self, path: Path, data: bytes) -> int: ...


class OsTsmFilesystem:
    """The real configfs: plain os calls, one ``write()`` per attribute."""

    def mkdir(self, path: Path) -> None:
        os.mkdir(path, 0o700)

    def rmdir(self, path: Path) -> None:
        os.rmdir(path)

    def read(self, path: Path, limit: int) -> bytes:
        with open(path, "rb", buffering=0) as f:
            return f.read(limit + 1)

    def write(self, path: Path, data: bytes) -> int:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        try:
            return os.write(fd, data)
        finally:
            os.close(fd)


def _os_error(action: str, path: Path, exc: OSError) -> TsmError:
    retryable = exc.errno in _RETRYABLE
    hint = {
        errno.ENOENT: "configfs-tsm is missing: mount configfs (mount -t configfs none /sys/kernel/config) "
                      "on Linux >= 6.7 with the tdx_guest driver loaded",
        errno.EACCES: "the attestation agent must run as root to use configfs-tsm",
        errno.EPERM: "the attestation agent must run as root to use configfs-tsm",
        errno.EBUSY: "another quote request is in flight; retry shortly",
        errno.ETIMEDOUT: "the host quote service did not answer within the driver timeout; check the QGS",
        errno.EINVAL: "the tdx_guest provider requires exactly 64 bytes of report data",
        errno.EIO: "the GetQuote hypercall failed; check the host's quote generation service (QGS)",
    }.get(exc.errno or 0)
    return TsmError(f"configfs-tsm {action} {path} failed: {exc.strerror or exc}", hint=hint, retryable=retryable)


def get_quote(report_data: bytes, *, root: Path = TSM_REPORT_ROOT, fs: TsmFilesystem | None = None) -> bytes:
    """A quote whose REPORTDATA is ``report_data`` (exactly 64 bytes)."""
    if len(report_data) != INBLOB_SIZE:
        raise TsmError(f"TDX report data must be exactly {INBLOB_SIZE} bytes, got {len(report_data)}")
    fs = fs or OsTsmFilesystem()
    entry = Path(root) / f"cai-{os.getpid()}-{secrets.token_hex(6)}"
    try:
        fs.mkdir(entry)
    except OSError as exc:
        raise _os_error("mkdir", entry, exc) from None
    try:
        try:
            provider = fs.read(entry / "provider", 64).decode("ascii", "replace").strip()
        except OSError as exc:
            raise _os_error("read", entry / "provider", exc) from None
        if provider != EXPECTED_PROVIDER:
            raise TsmError(f"configfs-tsm provider at {root} is {provider!r}, not {EXPECTED_PROVIDER!r}",
                           hint="this is not a TDX guest; select the attester for this platform")
        try:
            written = fs.write(entry / "inblob", report_data)
        except OSError as exc:
            raise _os_error("write", entry / "inblob", exc) from None
        if written != INBLOB_SIZE:
            raise TsmError(f"configfs-tsm accepted {written} of {INBLOB_SIZE} report-data bytes at {entry}")
        try:
            quote = fs.read(entry / "outblob", MAX_OUTBLOB)
        except OSError as exc:
            raise _os_error("read", entry / "outblob", exc) from None
        try:
            generation_text = fs.read(entry / "generation", 32).decode("ascii", "replace").strip()
        except OSError as exc:
            raise _os_error("read", entry / "generation", exc) from None
        if not generation_text.isdigit():
            raise TsmError(f"configfs-tsm generation at {entry} is not a number: {generation_text[:20]!r}")
        generation = int(generation_text)
        if generation != 1:
            raise TsmError(f"configfs-tsm inblob write conflict at {entry} (generation={generation}, expected 1)",
                           hint="another process wrote to this report directory; retry", retryable=True)
        if not quote:
            raise TsmError(f"configfs-tsm returned an empty quote at {entry}",
                           hint="the host quote generation service (QGS) is unreachable: check the VM's "
                                "quote-generation-socket / vsock configuration and that qgsd runs on the host")
        if len(quote) > MAX_OUTBLOB:
            raise TsmError(f"configfs-tsm quote exceeds {MAX_OUTBLOB} bytes at {entry}")
        return quote
    finally:
        try:
            fs.rmdir(entry)
        except OSError:
            pass  # configfs drops the entry with the process anyway; nothing secret is left behind
