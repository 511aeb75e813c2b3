"""Requests to the Trustee attestation service's REST API (``POST {as}/attestation``): pure builders.

Two shapes exist (see the reference note §3): Trustee >= 1.6 wants ``{"verification_requests":
[...], "policy_ids"}``, Trustee <= 1.5.2 the flat ``{"tee", "evidence", ...}``. TNG tries the new
shape first and falls back when the error names the missing ``tee`` field; so does our client.
The evidence travels base64url without padding; the runtime data is *structured* (the parsed
``aa_runtime_data`` object), so the AS canonicalises and hashes it itself and copies it into the
token, where the verifier finds the key binding again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agents import jsonutil
from attestation_agent.kbs.encoding import b64url_encode
from gateway.errors import CertFormatError
from gateway.ratls_cert import EvidenceRecord

NEW_SHAPE = "verification_requests"
FLAT_SHAPE = "flat"
MAX_AS_ERROR = 400


def attestation_request(record: EvidenceRecord, policy_ids: Sequence[str], shape: str = NEW_SHAPE
                        ) -> dict[str, Any]:
    """The JSON body of ``POST {as}/attestation`` for ``record``."""
    runtime = record.runtime_data_object()
    individual: dict[str, Any] = {
        "tee": record.tee_type,
        "evidence": b64url_encode(record.aa_evidence),
        "runtime_data": {"structured": runtime},
        "runtime_data_hash_algorithm": record.hash_name,
        "init_data": None,
    }
    if shape == NEW_SHAPE:
        return {"verification_requests": [individual], "policy_ids": list(policy_ids)}
    if shape == FLAT_SHAPE:
        return {**individual, "init_data_hash_algorithm": None, "policy_ids": list(policy_ids)}
    raise ValueError(f"unknown attestation request shape {shape!r}")


def wants_flat_shape(status: int, body: str) -> bool:
    """True when an old (<= 1.5.2) AS rejected the 1.6 shape, so the flat shape should be tried."""
    return status in (400, 422) and "missing field `tee`" in body


def error_text(body: bytes) -> str:
    """A short, printable excerpt of an AS error answer (Problem Details JSON or text)."""
    text = body[:4096].decode("utf-8", "replace")
    try:
        obj = jsonutil.loads(text)
        if isinstance(obj, dict):
            text = str(obj.get("detail") or obj.get("message") or obj.get("title") or text)
    except ValueError:
        pass
    text = " ".join(text.split())
    return text[:MAX_AS_ERROR]


def record_from_json_evidence(obj: Any) -> EvidenceRecord:
    """Evidence in the JSON form TNG's OHTTP key-config uses (``aa_evidence`` base64 standard)."""
    import base64

    if not isinstance(obj, dict):
        raise CertFormatError("evidence must be a JSON object")
    try:
        algo = {"sha256": 1, "sha384": 7, "sha512": 8}[obj.get("aa_runtime_data_hash_algo", "sha384")]
        additional = obj.get("aa_additional_evidence")
        return EvidenceRecord(
            tee_type=str(obj["aa_tee_type"]),
            aa_evidence=base64.b64decode(obj["aa_evidence"], validate=True),
            aa_runtime_data=str(obj["aa_runtime_data"]),
            aa_additional_evidence=base64.b64decode(additional, validate=True) if additional else None,
            hash_algo=algo,
        )
    except (KeyError, TypeError, ValueError):
        raise CertFormatError("evidence JSON lacks aa_tee_type/aa_evidence/aa_runtime_data or is not "
                              "base64") from None
