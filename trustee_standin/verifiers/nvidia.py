"""The stand-in's NVIDIA GPU verifier (development and tests only).

Two entry points, one verification (:func:`attestation_agent.nvidia.verify.verify_report`: chain
to the trusted root, FWID, P-384 signature, nonce echo):

- :func:`verify_nvidia` — upstream CoCo's ``nvidia`` additional evidence (KBS 0.4.0):
  ``{"device_evidence_list": [...]}``, nonce = first 32 bytes of the device binding ``H(D)``.
  Registered as the ``nvidia`` verifier on import.
- :func:`verify_embedded_gpu_evidence` — Alibaba Trustee 1.5's ``gpu_evidence`` inside TDX
  evidence (KBS 0.1.0), nonce = first 32 bytes of the report-data digest. The TDX verifier calls
  it and merges the result (``{"nvidia_gpu": {"0": ...}}``) into its claims. **Stricter than
  Trustee 1.5**, which checks neither the signature, the chain nor the nonce (it only compares
  measurements with RIMs) and merely logs a failing GPU: here any GPU that fails rejects the
  evidence, and the unsigned ``driver_version``/``vbios_version`` fields must equal the signed ones.

Like Trustee's local verifier there is no OCSP and no RIM comparison (no network); claims carry
the measurements for policy. ``TRUSTED_ROOTS`` (None = NVIDIA's Device Identity CA) and ``CLOCK``
are module settings tests replace, e.g. with the fake NVML's test CA.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509

from attestation_agent.nvidia import evidence as formats
from attestation_agent.nvidia.chain import nvidia_device_root
from attestation_agent.nvidia.errors import GpuEvidenceError
from attestation_agent.nvidia.spdm import NONCE_SIZE
from attestation_agent.nvidia.verify import VerifiedGpuReport, verify_report
from trustee_standin.verifiers.registry import VerificationError, register_verifier

#: trust anchors; None means the NVIDIA Device Identity CA shipped with the agent
TRUSTED_ROOTS: Sequence[x509.Certificate] | None = None
#: verification clock; None means the current time
CLOCK: Callable[[], dt.datetime] | None = None


def _roots() -> Sequence[x509.Certificate]:
    return TRUSTED_ROOTS if TRUSTED_ROOTS is not None else (nvidia_device_root(),)


def _nonce(expected: bytes | None, what: str) -> bytes | None:
    if expected is None:
        return None
    if len(expected) < NONCE_SIZE:
        raise VerificationError(f"{what}: expected report data is {len(expected)} bytes; the GPU nonce needs "
                                f"{NONCE_SIZE}")
    return bytes(expected[:NONCE_SIZE])


def _verify(device: formats.DeviceEvidence, nonce: bytes | None, where: str) -> VerifiedGpuReport:
    try:
        return verify_report(device.report, device.cert_chain, expected_nonce=nonce, trusted_roots=_roots(),
                             now=CLOCK() if CLOCK is not None else None)
    except GpuEvidenceError as exc:
        raise VerificationError(f"{where}: {exc.message}", hint=exc.hint) from None


def verify_nvidia(evidence: Any, expected_report_data: bytes | None) -> dict[str, Any]:
    """Verify 0.4.0 ``nvidia`` additional evidence; claims per device."""
    try:
        devices = formats.parse_additional_evidence(evidence)
    except GpuEvidenceError as exc:
        raise VerificationError(f"NVIDIA evidence: {exc.message}") from None
    nonce = _nonce(expected_report_data, "NVIDIA evidence")
    claims = []
    for n, device in enumerate(devices):
        verified = _verify(device, nonce, f"NVIDIA device {n} ({device.uuid})")
        claims.append({"arch": device.arch, "uuid": device.uuid, **verified.claims()})
    return {"device_count": len(claims), "devices": claims}


def verify_embedded_gpu_evidence(gpu_evidence: Any, report_data_digest: bytes | None) -> dict[str, Any]:
    """Verify Trustee 1.5 ``gpu_evidence``; returns ``{"nvidia_gpu": {"<index>": claims}}``.

    The shape merges into the TDX claims as Trustee 1.5 names them (``tdx.nvidia_gpu.0.measurement``).
    """
    try:
        devices, _collected = formats.parse_embedded_evidence(gpu_evidence)
    except GpuEvidenceError as exc:
        raise VerificationError(f"gpu_evidence: {exc.message}") from None
    nonce = _nonce(report_data_digest, "gpu_evidence")
    claims: dict[str, Any] = {}
    for device in devices:
        where = f"gpu_evidence GPU {device.index} ({device.uuid})"
        verified = _verify(device, nonce, where)
        signed = verified.report.response.opaque
        if signed.driver_version is not None and device.driver_version != signed.driver_version:
            raise VerificationError(f"{where}: driver_version {device.driver_version!r} differs from the signed "
                                    f"{signed.driver_version!r}")
        if signed.vbios_version is not None and (device.vbios_version or "").lower() != signed.vbios_version.lower():
            raise VerificationError(f"{where}: vbios_version {device.vbios_version!r} differs from the signed "
                                    f"{signed.vbios_version!r}")
        key = str(device.index)
        if key in claims:
            raise VerificationError(f"gpu_evidence lists GPU index {key} twice")
        claims[key] = {"uuid": device.uuid, "name": device.name, "cc_enabled": device.cc_enabled,
                       **verified.claims()}
    return {"nvidia_gpu": claims}


register_verifier("nvidia", verify_nvidia)
