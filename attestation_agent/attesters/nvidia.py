"""NVIDIA H100/H20 (Hopper) and Blackwell GPUs as additional attested devices, through NVML.

Per attestation the attester asks NVML for every GPU's SPDM report with the 32-byte nonce derived
from the binding digest (``canonical.gpu_nonce``: the first 32 bytes, as guest-components and
Trustee do), plus the attestation certificate chain, and then **verifies each report locally**
(chain to the trusted NVIDIA root, FWID, P-384 signature, nonce echo, NVML-reported driver and
VBIOS versions equal the signed ones). Evidence from a GPU that fails is never sent: the whole
call fails with that GPU's specific error, because a verifier cannot notice a GPU that is silently
left out (Trustee RFC #650). All GPUs are included; protected-PCIe (multi-GPU) mode is read from
the CC settings and reported in :meth:`describe` and in the logs.

Two evidence shapes (see :mod:`attestation_agent.nvidia.evidence`): :meth:`evidence` is the 0.4.0
``nvidia`` additional evidence, :meth:`evidence_embedded` the Trustee 1.5 ``gpu_evidence`` field.
After the KBS accepted the evidence, :meth:`set_ready_state` marks the GPUs as accepting work
(CUDA refuses work in CC mode until then); it is skipped when disabled, when the last collection
did not verify, or when the caller reports a failed attestation.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509

from agents.logsetup import get_logger
from attestation_agent.attesters.base import DeviceAttester, check_report_data
from attestation_agent.kbs import canonical
from attestation_agent.nvidia import evidence as formats
from attestation_agent.nvidia.chain import nvidia_device_root
from attestation_agent.nvidia.errors import GpuEvidenceError, NvmlError
from attestation_agent.nvidia.nvml import CcSettings, NvmlDevices, RawGpuEvidence, load_pynvml
from attestation_agent.nvidia.verify import VerifiedGpuReport, verify_report

log = get_logger("aa.nvidia")

#: Settings for ``[aa]`` (the lead adds them to ``AA_SETTINGS``); caiOptions ``gpu-ra-enable``.


@dataclass(frozen=True)
class GpuAttestation:
    """Verified evidence of every GPU, collected for one nonce."""

    settings: CcSettings
    gpus: tuple[tuple[RawGpuEvidence, VerifiedGpuReport], ...]
    collected_at: dt.datetime

    def devices(self) -> list[formats.DeviceEvidence]:
        return [formats.DeviceEvidence(raw.arch, raw.uuid, raw.report, raw.cert_chain, raw.index, raw.name,
                                       raw.driver_version, raw.vbios_version, self.settings.cc_enabled)
                for raw, _ in self.gpus]


class NvidiaGpuAttester(DeviceAttester):
    tee_type = "nvidia"
    embedded_field = "gpu_evidence"

    def __init__(self, nvml: Any = None, *, trusted_roots: Sequence[x509.Certificate] | None = None,
                 nonce_source: Callable[[bytes], bytes] = canonical.gpu_nonce, set_ready: bool = True,
                 clock: Callable[[], dt.datetime] | None = None, allow_devtools: bool = False) -> None:
        """``nvml`` is the pynvml module (default: imported on first use) or a fake with its names.

        ``nonce_source`` maps report data to the 32-byte GPU nonce; tests override it to replay
        fixture reports whose nonce is fixed. ``trusted_roots`` defaults to NVIDIA's device CA.
        """
        self._nvml_module = nvml
        self._devices: NvmlDevices | None = None
        self.trusted_roots = tuple(trusted_roots) if trusted_roots is not None else (nvidia_device_root(),)
        self.nonce_source = nonce_source
        self.set_ready = set_ready
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.allow_devtools = allow_devtools
        self._lock = asyncio.Lock()
        self._last: GpuAttestation | None = None
        self._last_settings: CcSettings | None = None

    # -- NVML plumbing -------------------------------------------------------------------------
    def _nvml(self) -> NvmlDevices:
        if self._devices is None:
            self._devices = NvmlDevices(self._nvml_module if self._nvml_module is not None else load_pynvml())
        return self._devices

    async def close(self) -> None:
        async with self._lock:
            if self._devices is not None:
                await asyncio.to_thread(self._devices.close)

    # -- collection + local verification ---------------------------------------------------------
    def _collect_blocking(self, nonce: bytes) -> GpuAttestation:
        devices = self._nvml()
        settings = devices.cc_settings()
        self._last_settings = settings
        if not settings.cc_enabled and not settings.protected_pcie:
            raise GpuEvidenceError(
                "NVIDIA confidential computing is off (CC feature disabled, not in protected-PCIe mode)",
                hint="enable CC mode on the host (nvidia-smi conf-compute -scc on / gpu-admin-tools), "
                     "or set gpu_ra_enable = false",
            )
        if settings.devtools_mode and not self.allow_devtools:
            raise GpuEvidenceError("the GPUs run in CC DevTools mode, which is not production confidential computing",
                                   hint="switch the GPUs to CC production mode (DevTools measurements never match)")
        raws = devices.collect(nonce)
        if not raws:
            raise NvmlError("NVML lists no GPU although GPU attestation is enabled",
                            hint="check that the GPUs are passed through to this VM, or set gpu_ra_enable = false")
        now = self.clock()
        verified = []
        for raw in raws:
            where = f"GPU {raw.index} ({raw.uuid})"
            try:
                result = verify_report(raw.report, raw.cert_chain, expected_nonce=nonce,
                                       trusted_roots=self.trusted_roots, now=now)
            except GpuEvidenceError as exc:
                raise type(exc)(f"{where}: {exc.message}", hint=exc.hint) from None
            _check_versions(raw, result, where)
            verified.append((raw, result))
        return GpuAttestation(settings, tuple(verified), now)

    async def collect(self, report_data: bytes) -> GpuAttestation:
        """Collect and locally verify every GPU's evidence for ``report_data``; fail closed."""
        nonce = self.nonce_source(check_report_data(report_data))
        async with self._lock:
            self._last = None
            try:
                result = await asyncio.to_thread(self._collect_blocking, nonce)
            except GpuEvidenceError as exc:
                log.error("nvidia.evidence_refused", error=str(exc))
                raise
            self._last = result
        log.info("nvidia.evidence", gpus=len(result.gpus), **result.settings.describe(),
                 uuids=[raw.uuid for raw, _ in result.gpus],
                 protected_pcie_reports=[v.report.response.opaque.protected_pcie for _, v in result.gpus])
        return result

    async def evidence(self, report_data: bytes) -> dict[str, Any]:
        """Protocol 0.4.0 ``additional_evidence["nvidia"]``."""
        return formats.additional_evidence((await self.collect(report_data)).devices())

    async def evidence_embedded(self, report_data: bytes) -> dict[str, Any]:
        """Trustee 1.5 (protocol 0.1.0) ``gpu_evidence`` embedded in the TDX evidence."""
        result = await self.collect(report_data)
        return formats.embedded_evidence(result.devices(), result.collected_at)

    # -- ready state ---------------------------------------------------------------------------
    async def set_ready_state(self, ok: bool) -> bool:
        """After the KBS answered, mark GPUs ready if ``ok`` and the last collection verified.

        Returns True when the ready state was set. The NVML ready state is system-wide, so one GPU
        that failed verification keeps all of them not-ready (fail closed).
        """
        if not self.set_ready:
            return False
        if not ok or self._last is None:
            log.warning("nvidia.not_ready", reason="attestation failed" if not ok else "no verified GPU evidence")
            return False
        async with self._lock:
            await asyncio.to_thread(self._nvml().set_ready_state, True)
        log.info("nvidia.ready", gpus=len(self._last.gpus))
        return True

    async def attestation_result(self, accepted: bool) -> None:
        await self.set_ready_state(accepted)

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {"tee": self.tee_type, "embedded_field": self.embedded_field,
                                "set_ready": self.set_ready}
        if self._last_settings is not None:
            info["cc"] = self._last_settings.describe()
        if self._last is not None:
            info["gpus"] = [{"index": raw.index, "uuid": raw.uuid, "name": raw.name, "arch": raw.arch,
                             "driver_version": raw.driver_version, "vbios_version": raw.vbios_version,
                             "protected_pcie": verified.report.response.opaque.protected_pcie}
                            for raw, verified in self._last.gpus]
        return info


def _check_versions(raw: RawGpuEvidence, verified: VerifiedGpuReport, where: str) -> None:
    """NVML's driver/VBIOS strings must equal the signed ones (as nvtrust checks)."""
    opaque = verified.report.response.opaque
    if opaque.driver_version is not None and opaque.driver_version != raw.driver_version:
        raise GpuEvidenceError(f"{where}: NVML reports driver {raw.driver_version!r} but the signed report says "
                               f"{opaque.driver_version!r}", hint="the driver changed or NVML is not trustworthy")
    if opaque.vbios_version is not None and opaque.vbios_version.lower() != raw.vbios_version.lower():
        raise GpuEvidenceError(f"{where}: NVML reports VBIOS {raw.vbios_version!r} but the signed report says "
                               f"{opaque.vbios_version!r}", hint="the VBIOS changed or NVML is not trustworthy")
