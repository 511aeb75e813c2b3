"""Checks on a Trustee attestation-service token, as TNG's verifier performs them: pure.

Order and rules (reference note §3): the JOSE header carries the signing key as ``jwk`` (with
``alg``) and its chain as ``jwk.x5c``; the chain must lead to one of the trust anchors (the AS's
signer certificate or its root, from ``trusted_certs_paths`` or ``GET {as}/certificate``) and
``x5c[0]`` must hold the very key of the ``jwk``; the signature verifies with that key and its
``alg``; ``exp`` is required and ``nbf`` enforced; then the flavour decides where policy results
and runtime data live:

* Simple (Trustee <= 1.5 default): ``evaluation-reports[].policy-id``, runtime data at
  ``customized_claims.runtime_data``;
* EAR (``eat_profile`` = Trustee's): every submodule ``ear.status == "affirming"``, one
  ``ear.appraisal-policy-id``, runtime data at ``submods.cpu0."ear.veraison.annotated-evidence".
  runtime_data_claims``.

Every configured policy id must have been evaluated, and the token's runtime data must contain
(key by key) the claims we expect, which binds the verdict to the peer's key. Every failure raises
``VerificationFailed`` whose message says which check failed.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from jwcrypto import jwk as jose_jwk
from jwcrypto import jws as jose_jws

from agents import jsonutil
from gateway.errors import VerificationFailed

EAR_PROFILE = "tag:github.com,2024:confidential-containers/Trustee"
ALLOWED_ALGS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384")
MAX_TOKEN = 512 * 1024
MAX_CHAIN = 8


@dataclass(frozen=True)
class TokenVerdict:
    """What a verified token says: when it expires, which policies passed, and its claims."""

    exp: float
    policy_ids: tuple[str, ...]
    runtime_data: Mapping[str, Any]
    tee: str | None
    claims: Mapping[str, Any]


def load_anchors(pem: bytes) -> list[x509.Certificate]:
    """Trust anchors from PEM text (one or several certificates)."""
    try:
        anchors = x509.load_pem_x509_certificates(pem)
    except ValueError:
        raise VerificationFailed("trusted certificate file is not PEM") from None
    return anchors


def _b64_any(text: str) -> bytes:
    """x5c entries: base64url without padding (Trustee) or standard base64 (RFC 7515)."""
    padded = text + "=" * (-len(text) % 4)
    if "-" in text or "_" in text:
        return base64.urlsafe_b64decode(padded)
    return base64.b64decode(padded)


def _check_chain(x5c: Any, header_key: jose_jwk.JWK, anchors: Sequence[x509.Certificate],
                 now: datetime.datetime) -> None:
    if not isinstance(x5c, list) or not x5c or len(x5c) > MAX_CHAIN or not all(isinstance(c, str) for c in x5c):
        raise VerificationFailed("token header jwk has no x5c certificate chain")
    try:
        chain = [x509.load_der_x509_certificate(_b64_any(c)) for c in x5c]
    except (ValueError, x509.InvalidVersion):
        raise VerificationFailed("token header x5c holds a certificate that is not valid base64 DER") from None
    try:
        leaf_spki = chain[0].public_key().public_bytes(serialization.Encoding.DER,
                                                        serialization.PublicFormat.SubjectPublicKeyInfo)
        jwk_spki = header_key.export_to_pem().replace(b"\r", b"")
        jwk_der = serialization.load_pem_public_key(jwk_spki).public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    except Exception:  # hostile keys: cryptography and jwcrypto raise ValueError, UnsupportedAlgorithm, JWException
        raise VerificationFailed("token header jwk (or its x5c[0] certificate) is not a usable public key") from None
    if jwk_der != leaf_spki:
        raise VerificationFailed("token header jwk does not match the key of its x5c[0] certificate")
    for cert in chain:
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            raise VerificationFailed(f"token signer certificate {cert.subject.rfc4514_string()} is outside "
                                     "its validity period")
    anchor_der = {a.public_bytes(serialization.Encoding.DER) for a in anchors}
    current = chain[0]
    for depth in range(len(chain)):
        if current.public_bytes(serialization.Encoding.DER) in anchor_der:
            return
        if any(_issued_by(current, anchor) for anchor in anchors):
            return
        if depth + 1 >= len(chain):
            break
        issuer = chain[depth + 1]
        if not _issued_by(current, issuer):
            raise VerificationFailed("token signer certificate chain is broken: a certificate is not issued by "
                                     "the next one in x5c")
        current = issuer
    raise VerificationFailed("token signer certificate chain does not lead to a trusted certificate",
                             hint="check verify.trusted_certs_paths: it must hold the attestation service's "
                             "token-signing CA")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # InvalidSignature, mismatched names, key types
        return False
    return True


def _claims_at(obj: Any, path: Sequence[str]) -> Any:
    for part in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(part)
    return obj


def _flavour(claims: Mapping[str, Any]) -> tuple[tuple[str, ...], Any, str | None]:
    """(evaluated policy ids, runtime data, tee) for Simple or EAR tokens."""
    if "eat_profile" in claims:
        if claims["eat_profile"] != EAR_PROFILE:
            raise VerificationFailed(f"token eat_profile {str(claims['eat_profile'])[:80]!r} is not Trustee's EAR")
        submods = claims.get("submods")
        if not isinstance(submods, Mapping) or not submods:
            raise VerificationFailed("EAR token has no submods")
        policy_ids = set()
        for name, sub in submods.items():
            status = _claims_at(sub, ["ear.status"])
            if status != "affirming":
                raise VerificationFailed(f"EAR token submodule {str(name)[:40]!r} status is {status!r}, "
                                         "not 'affirming'")
            policy_ids.add(str(_claims_at(sub, ["ear.appraisal-policy-id"])))
        if len(policy_ids) != 1:
            raise VerificationFailed("EAR token must carry exactly one appraisal policy id")
        runtime = _claims_at(submods, ["cpu0", "ear.veraison.annotated-evidence", "runtime_data_claims"])
        return tuple(policy_ids), runtime, None
    reports = claims.get("evaluation-reports")
    if not isinstance(reports, list):
        raise VerificationFailed("token has no evaluation-reports (neither a Simple nor an EAR token)")
    ids = tuple(str(r.get("policy-id")) for r in reports if isinstance(r, Mapping))
    runtime = _claims_at(claims, ["customized_claims", "runtime_data"])
    tee = claims.get("tee") if isinstance(claims.get("tee"), str) else None
    return ids, runtime, tee


def verify_token(token: str, *, anchors: Sequence[x509.Certificate], policy_ids: Sequence[str],
                 expected_runtime_data: Mapping[str, Any], now: float, leeway: float = 0.0) -> TokenVerdict:
    """Verify ``token`` completely; ``now`` is Unix time (the caller's clock)."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN or token.count(".") != 2:
        raise VerificationFailed("attestation service answer is not a compact JWS token")
    parsed = jose_jws.JWS()
    try:
        parsed.deserialize(token.strip())
        header = parsed.jose_header
    except Exception:
        raise VerificationFailed("attestation token is not a parseable JWS") from None
    jwk_obj = header.get("jwk") if isinstance(header, Mapping) else None
    if not isinstance(jwk_obj, Mapping):
        raise VerificationFailed("attestation token header carries no jwk")
    alg = jwk_obj.get("alg")
    if alg not in ALLOWED_ALGS or header.get("alg") != alg:
        raise VerificationFailed(f"attestation token algorithm {str(header.get('alg'))[:20]!r} (jwk alg "
                                 f"{str(alg)[:20]!r}) is not an accepted signature algorithm")
    try:
        key = jose_jwk.JWK(**{k: v for k, v in jwk_obj.items() if k != "x5c"})
    except Exception:
        raise VerificationFailed("attestation token header jwk is malformed") from None
    _check_chain(jwk_obj.get("x5c"), key, anchors, datetime.datetime.fromtimestamp(now, datetime.UTC))
    try:
        parsed.verify(key, alg=alg)
        claims = jsonutil.loads(parsed.payload)
    except Exception:
        raise VerificationFailed("attestation token signature does not verify") from None
    if not isinstance(claims, dict):
        raise VerificationFailed("attestation token claims are not a JSON object")
    exp, nbf = claims.get("exp"), claims.get("nbf")
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise VerificationFailed("attestation token has no numeric exp claim")
    if now > exp + leeway:
        raise VerificationFailed("attestation token has expired")
    if nbf is not None and (isinstance(nbf, bool) or not isinstance(nbf, int | float) or now + leeway < nbf):
        raise VerificationFailed("attestation token is not valid yet (nbf)")
    evaluated, runtime, tee = _flavour(claims)
    missing = [p for p in policy_ids if p not in evaluated]
    if missing:
        raise VerificationFailed(f"attestation token does not satisfy policy id(s) {missing}; it was evaluated "
                                 f"against {list(evaluated)[:8]}")
    if not isinstance(runtime, Mapping):
        raise VerificationFailed("attestation token carries no structured runtime data")
    for name, value in expected_runtime_data.items():
        if runtime.get(name) != value:
            raise VerificationFailed(f"attestation token runtime data does not match the peer: {name!r} differs "
                                     "(the evidence is bound to another key)")
    return TokenVerdict(exp=float(exp), policy_ids=evaluated, runtime_data=dict(runtime), tee=tee, claims=claims)
