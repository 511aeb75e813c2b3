"""NVML access for GPU confidential-computing evidence (blocking; run it in a worker thread).

The NVML module is injected: production passes ``pynvml`` (nvidia-ml-py), tests pass a fake with
the same names. Everything read here is untrusted until :mod:`attestation_agent.nvidia.verify`
has checked it; this file only turns NVML calls, structs and ``NVMLError`` codes into plain
values and :class:`NvmlError` messages that say what to do.

NVML stays initialised for the agent's lifetime (``NvmlDevices.close`` shuts it down): in CC mode
the driver tears the GPU state down when the last NVML client exits unless persistence mode is on,
so an init/shutdown per attestation could reset the GPU under the workload.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from attestation_agent.nvidia.errors import NvmlError
from attestation_agent.nvidia.spdm import MAX_REPORT_SIZE, NONCE_SIZE

#: nvmlDeviceArchitecture_t values with CC attestation, by the names Trustee's verifier expects
ARCH_NAMES = {9: "HOPPER", 10: "BLACKWELL"}
_MULTI_GPU_MODES = {0: "none", 1: "protected-pcie", 2: "nvle"}
_ENVIRONMENTS = {0: "unavailable", 1: "simulation", 2: "production"}

_HINTS = {
    1: "NVML was used before nvmlInit; this is a bug in the agent",
    3: "the GPU or driver does not support confidential computing, or CC mode is off "
       "(nvidia-smi conf-compute -f)",
    4: "NVML needs root for this call; run the attestation agent as root",
    9: "the NVIDIA driver is not loaded in this VM",
    12: "no NVIDIA driver (libnvidia-ml.so.1) in this VM: install it, or set gpu_ra_enable = false",
    15: "the GPU fell off the bus; the VM needs a GPU reset",
    18: "the NVML library and the kernel driver versions differ; reboot or reinstall the driver",
}


def load_pynvml() -> Any:
    """Import nvidia-ml-py (imported lazily so machines without GPUs never need it)."""
    try:
        import pynvml
    except ImportError:
        raise NvmlError("the nvidia-ml-py package (pynvml) is not installed",
                        hint="pip install nvidia-ml-py, or set gpu_ra_enable = false") from None
    return pynvml


@dataclass(frozen=True)
class CcSettings:
    """System-wide confidential-computing settings (nvmlSystemGetConfComputeSettings)."""

    environment: int
    cc_feature: int
    devtools_mode: int
    multi_gpu_mode: int

    @property
    def cc_enabled(self) -> bool:
        return self.cc_feature == 1

    @property
    def protected_pcie(self) -> bool:
        return self.multi_gpu_mode == 1

    def describe(self) -> dict[str, Any]:
        return {
            "environment": _ENVIRONMENTS.get(self.environment, str(self.environment)),
            "cc_enabled": self.cc_enabled,
            "devtools_mode": bool(self.devtools_mode),
            "multi_gpu_mode": _MULTI_GPU_MODES.get(self.multi_gpu_mode, str(self.multi_gpu_mode)),
        }


@dataclass(frozen=True)
class RawGpuEvidence:
    """What NVML returned for one GPU (unverified)."""

    index: int
    uuid: str
    name: str
    arch: str
    driver_version: str
    vbios_version: str
    report: bytes
    cert_chain: bytes


class NvmlDevices:
    """Blocking NVML session: CC settings, per-GPU report + certificate chain, ready state."""

    def __init__(self, nvml: Any) -> None:
        self.nvml = nvml
        self._initialized = False

    @contextmanager
    def _call(self, function: str, where: str = "") -> Iterator[None]:
        error_type = getattr(self.nvml, "NVMLError", None)
        try:
            yield
        except Exception as exc:
            if error_type is None or not isinstance(exc, error_type):
                raise
            code = getattr(exc, "value", None)
            place = f" for {where}" if where else ""
            raise NvmlError(f"NVML {function}{place} failed: {exc} (NVML error {code})",
                            hint=_HINTS.get(code if isinstance(code, int) else -1)) from None

    def open(self) -> None:
        if not self._initialized:
            with self._call("nvmlInit"):
                self.nvml.nvmlInit()
            self._initialized = True

    def close(self) -> None:
        if self._initialized:
            self._initialized = False
            with self._call("nvmlShutdown"):
                self.nvml.nvmlShutdown()

    def cc_settings(self) -> CcSettings:
        self.open()
        settings_type = getattr(self.nvml, "c_nvmlSystemConfComputeSettings_v1_t", None)
        if settings_type is not None:
            settings = settings_type()
            code = self.nvml.nvmlSystemGetConfComputeSettings(ctypes.byref(settings))
            if code == 0:
                return CcSettings(settings.environment, settings.ccFeature, settings.devToolsMode,
                                  settings.multiGpuMode)
            if code not in (3, 13, 25):  # NOT_SUPPORTED, FUNCTION_NOT_FOUND, ARGUMENT_VERSION_MISMATCH
                raise NvmlError(f"NVML nvmlSystemGetConfComputeSettings failed (NVML error {code})",
                                hint=_HINTS.get(code))
        # Older drivers: no settings struct; the state has no multi-GPU mode.
        with self._call("nvmlSystemGetConfComputeState"):
            state = self.nvml.nvmlSystemGetConfComputeState()
        return CcSettings(state.environment, state.ccFeature, state.devToolsMode, 0)

    def collect(self, nonce: bytes) -> list[RawGpuEvidence]:
        """Report and certificate chain of every GPU, each report made for ``nonce`` (32 bytes)."""
        if len(nonce) != NONCE_SIZE:
            raise ValueError(f"GPU nonce must be {NONCE_SIZE} bytes")
        self.open()
        nvml = self.nvml
        with self._call("nvmlSystemGetDriverVersion"):
            driver = _text(nvml.nvmlSystemGetDriverVersion())
        with self._call("nvmlDeviceGetCount"):
            count = int(nvml.nvmlDeviceGetCount())
        gpus = []
        for index in range(count):
            where = f"GPU {index}"
            with self._call("nvmlDeviceGetHandleByIndex", where):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
            with self._call("nvmlDeviceGetUUID", where):
                uuid = _text(nvml.nvmlDeviceGetUUID(handle))
            where = f"GPU {index} ({uuid})"
            with self._call("nvmlDeviceGetName", where):
                name = _text(nvml.nvmlDeviceGetName(handle))
            with self._call("nvmlDeviceGetArchitecture", where):
                arch_code = int(nvml.nvmlDeviceGetArchitecture(handle))
            arch = ARCH_NAMES.get(arch_code)
            if arch is None:
                raise NvmlError(f"{where} {name!r} has NVML architecture {arch_code}, which has no "
                                "confidential-computing attestation (Hopper or Blackwell needed)",
                                hint="remove this GPU from the VM or set gpu_ra_enable = false")
            with self._call("nvmlDeviceGetVbiosVersion", where):
                vbios = _text(nvml.nvmlDeviceGetVbiosVersion(handle))
            with self._call("nvmlDeviceGetConfComputeGpuAttestationReport", where):
                report_struct = nvml.nvmlDeviceGetConfComputeGpuAttestationReport(handle, list(nonce))
            with self._call("nvmlDeviceGetConfComputeGpuCertificate", where):
                cert_struct = nvml.nvmlDeviceGetConfComputeGpuCertificate(handle)
            report = _buffer(report_struct.attestationReport, report_struct.attestationReportSize,
                             f"{where} attestation report")
            chain = _buffer(cert_struct.attestationCertChain, cert_struct.attestationCertChainSize,
                            f"{where} attestation certificate chain")
            if len(report) > MAX_REPORT_SIZE:
                raise NvmlError(f"{where} attestation report is {len(report)} bytes, larger than NVML's buffer")
            gpus.append(RawGpuEvidence(index, uuid, name, arch, driver, vbios, report, chain))
        return gpus

    def ready_state(self) -> int:
        self.open()
        with self._call("nvmlSystemGetConfComputeGpusReadyState"):
            return int(self.nvml.nvmlSystemGetConfComputeGpusReadyState())

    def set_ready_state(self, ready: bool) -> None:
        self.open()
        with self._call("nvmlSystemSetConfComputeGpusReadyState"):
            self.nvml.nvmlSystemSetConfComputeGpusReadyState(1 if ready else 0)


def _text(value: Any) -> str:
    """pynvml returns str (decoded by convertStrBytes); tolerate bytes from older bindings."""
    if isinstance(value, bytes):
        return value.split(b"\0", 1)[0].decode("utf-8", errors="replace")
    return str(value)


def _buffer(array: Any, size: int, what: str) -> bytes:
    size = int(size)
    if size <= 0:
        raise NvmlError(f"NVML returned an empty {what}",
                        hint="the GPU is not in confidential-computing mode or the driver failed to attest it")
    if size > len(array):
        raise NvmlError(f"NVML reported a {what} of {size} bytes in a {len(array)}-byte buffer")
    return bytes(array[:size])
