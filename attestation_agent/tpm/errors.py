"""Errors of the pure TPM formats.

The attester maps them to :class:`EvidenceError` for its callers; the stand-in verifier maps them
to ``VerificationError``. Messages name the field that failed and never carry key material.
"""

from __future__ import annotations

from attestation_agent.errors import AttestationError


class TpmError(AttestationError):
    """Base class for TPM format and verification failures."""

    http_status = 400


class TpmFormatError(TpmError):
    """Bytes or JSON do not follow the TPM structure or the evidence format (truncated, oversize, bad value)."""


class TpmVerifyError(TpmError):
    """Well-formed TPM evidence that does not verify (signature, PCR digest or qualifying data)."""

    http_status = 403
