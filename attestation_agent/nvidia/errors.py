"""Errors of the NVIDIA GPU evidence code: one class per way a GPU report can be wrong.

They derive from :class:`EvidenceError` because the agent's answer to every one of them is the
same — refuse to send that GPU's evidence — while the distinct classes (and messages) let an
operator tell a corrupt report from an untrusted chain, an expired certificate, a forged
signature or a replayed nonce. Messages carry sizes, offsets, certificate subjects and hex of
public values (nonces, fingerprints) only; nothing here is secret.
"""

from __future__ import annotations

from attestation_agent.errors import EvidenceError


class GpuEvidenceError(EvidenceError):
    """Base class: NVIDIA GPU evidence could not be collected, parsed or verified."""


class SpdmError(GpuEvidenceError):
    """The SPDM GET_MEASUREMENTS request/response bytes are malformed or out of bounds."""


class CertChainError(GpuEvidenceError):
    """The attestation certificate chain is malformed, incomplete, or not rooted in a trusted CA."""


class CertExpiredError(CertChainError):
    """A certificate of the chain is outside its validity period at the verification time."""


class FwidMismatchError(CertChainError):
    """The leaf certificate's FWID is missing or differs from the FWID inside the signed report."""


class SignatureError(GpuEvidenceError):
    """The report signature does not verify with the leaf certificate's public key."""


class NonceMismatchError(GpuEvidenceError):
    """The nonce in the signed report is not the expected challenge nonce (stale or replayed)."""


class NvmlError(GpuEvidenceError):
    """The NVML library (driver) refused or failed a call."""
