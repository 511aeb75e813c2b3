"""TDX runtime measurement registers through the kernel's sysfs files (Linux >= 6.16).

``/sys/devices/virtual/misc/tdx_guest/measurements/rtmr<N>:sha384``: reading returns the current
48-byte value (binary); writing *extends* it, and the kernel accepts only one 48-byte write at
offset 0 (anything else is ``EINVAL``). The kernel keeps no log of these extends, so callers must
log first (see :mod:`attestation_agent.tdx.runtime_log`).

:class:`MeasurementRegister` is the seam the runtime log uses; :class:`SysfsRtmr` is the real
implementation, and tests substitute an emulation that computes ``SHA-384(old || data)`` on
extend like the TDX module. These calls block: async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

from attestation_agent.tdx.errors import MeasurementError

RTMR_SIZE = 48
MEASUREMENTS_DIR = Path("/sys/devices/virtual/misc/tdx_guest/measurements")


def rtmr_path(index: int, directory: Path = MEASUREMENTS_DIR) -> Path:
    return directory / f"rtmr{index}:sha384"


class MeasurementRegister(Protocol):
    """A register that can be read and extended with exactly 48 bytes."""

    def read(self) -> bytes: ...

    def extend(self, data: bytes) -> None: ...


class SysfsRtmr:
    """An RTMR exposed by the tdx_guest driver's ``measurements`` sysfs directory."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"SysfsRtmr({str(self.path)!r})"

    def read(self) -> bytes:
        try:
            with open(self.path, "rb", buffering=0) as f:
                value = f.read(RTMR_SIZE + 1)
        except FileNotFoundError:
            raise MeasurementError(f"RTMR file {self.path} does not exist",
                                   hint="runtime measurement needs Linux >= 6.16 with the tdx_guest driver; "
                                        "otherwise disable the AA event log") from None
        except OSError as exc:
            raise MeasurementError(f"reading RTMR {self.path} failed: {exc.strerror or exc}") from None
        if len(value) != RTMR_SIZE:
            raise MeasurementError(f"RTMR {self.path} returned {len(value)} bytes, expected {RTMR_SIZE}")
        return value

    def extend(self, data: bytes) -> None:
        if len(data) != RTMR_SIZE:
            raise MeasurementError(f"an RTMR extend takes exactly {RTMR_SIZE} bytes, got {len(data)}")
        try:
            fd = os.open(self.path, os.O_WRONLY)
        except FileNotFoundError:
            raise MeasurementError(f"RTMR file {self.path} does not exist",
                                   hint="runtime measurement needs Linux >= 6.16 with the tdx_guest driver") from None
        except OSError as exc:
            raise MeasurementError(f"opening RTMR {self.path} for extend failed: {exc.strerror or exc}") from None
        try:
            written = os.write(fd, data)  # one write at offset 0, as the kernel requires
        except OSError as exc:
            raise MeasurementError(f"extending RTMR {self.path} failed: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        if written != RTMR_SIZE:
            raise MeasurementError(f"RTMR {self.path} accepted {written} of {RTMR_SIZE} bytes; "
                                   "the extend is incomplete")
