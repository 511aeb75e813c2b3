"""Attestation-token helpers for the client: read claims without verifying them.

The client cannot verify a Trustee token (it has no trust anchor for the AS signing key); it only
needs ``exp`` to decide when to re-attest, so the claims are decoded, bounded and type-checked.
"""

from __future__ import annotations

from typing import Any

from agents import jsonutil
from attestation_agent.errors import ProtocolError
from attestation_agent.kbs.encoding import b64url_decode

MAX_TOKEN_SIZE = 256 * 1024


def unverified_claims(token: str) -> dict[str, Any]:
    """Decode the claims of a compact JWS without checking its signature."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_SIZE:
        raise ProtocolError("attestation token is empty, not a string, or too large")
    parts = token.split(".")
    if len(parts) != 3:
        raise ProtocolError("attestation token is not a compact JWS (expected 3 dot-separated parts)")
    try:
        header = jsonutil.loads(b64url_decode(parts[0]))
        claims = jsonutil.loads(b64url_decode(parts[1]))
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("attestation token header or claims are not base64url JSON") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise ProtocolError("attestation token header or claims are not JSON objects")
    return claims


def expiry(token: str) -> float | None:
    """The token's ``exp`` (seconds since the epoch), or None when it has none."""
    exp = unverified_claims(token).get("exp")
    if exp is None:
        return None
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise ProtocolError("attestation token 'exp' claim is not a number")
    return float(exp)
