"""Evidence appraisal shared by the stand-in's KBS and AS routes (development and tests only).

Both paths do the same thing Trustee's AS does: pick the verifier for the TEE, check the evidence
against the expected runtime-data bytes, and return its claims; only the caller differs in how it
derives the expected bytes.
"""

from __future__ import annotations

from typing import Any

from trustee_standin.verifiers import VerificationError, get_verifier


def appraise(tee: str, evidence: Any, expected_report_data: bytes | None,
             allowed_tees: frozenset[str] | None) -> dict[str, Any]:
    """Verify ``evidence`` of TEE ``tee``; raise VerificationError with the reason."""
    if allowed_tees is not None and tee not in allowed_tees:
        raise VerificationError(f"TEE `{tee}` is not allowed by this stand-in's configuration")
    verifier = get_verifier(tee)
    if verifier is None:
        raise VerificationError(f"TEE `{tee}` verifier is not implemented")
    claims = verifier(evidence, expected_report_data)
    if not isinstance(claims, dict):
        raise VerificationError(f"verifier for TEE `{tee}` returned claims that are not a JSON object")
    return claims
