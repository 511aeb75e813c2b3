"""Trustee "Simple" attestation tokens: issue (AS side) and verify (KBS side).

Development and tests only. The layout follows openanolis Trustee v1.5.2
``attestation-service/src/token/simple.rs``: a compact JWS whose header carries the signing key as
``jwk`` (with the certificate chain as ``jwk.x5c``, base64url without padding, as Trustee encodes
it), claims ``iss, iat, nbf, exp, jti, tee, evaluation-reports, tcb-status`` (a JSON *string* of
the flattened verifier claims) and ``customized_claims``. serde_json without ``preserve_order``
sorts object keys, so headers and claims are serialized sorted and compact here too.
"""

from __future__ import annotations

import json
import secrets
import string
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwcrypto import jwk as jose_jwk
from jwcrypto import jws as jose_jws

from agents import jsonutil
from agents.errors import CaiError
from attestation_agent.kbs.encoding import b64url_encode, int_to_b64url
from trustee_standin.ca import Signer
from trustee_standin.policies import policy_hash

ISSUER = "CoCo-Attestation-Service"
KBS_TOKEN_ALG = "RS384"  # noqa: S105 - the Simple broker always signs RS384
MAX_TOKEN = 256 * 1024
_JTI_ALPHABET = string.ascii_letters + string.digits


class TokenError(CaiError):
    """A presented token is malformed, not signed by this stand-in, or expired."""

    http_status = 401


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def flatten_claims(tee: str, claims: Mapping[str, Any]) -> dict[str, Any]:
    """Trustee's ``flatten_claims``: ``<tee>.<a>.<b>`` keys; ``report_data``/``init_data`` unprefixed."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        else:
            flat[prefix] = value

    for key, value in claims.items():
        if key not in ("report_data", "init_data"):
            walk(f"{tee}.{key}", value)
    flat["report_data"] = claims.get("report_data", "")
    flat["init_data"] = claims.get("init_data", "")
    return flat


def public_jwk(signer: Signer) -> dict[str, Any]:
    """The header ``jwk``: public key, ``alg`` and the chain ``[leaf, root]`` as ``x5c``."""
    x5c = [b64url_encode(c.public_bytes(serialization.Encoding.DER)) for c in signer.chain]
    key = signer.key
    if isinstance(key, rsa.RSAPrivateKey):
        pub = key.public_key().public_numbers()
        return {"kty": "RSA", "alg": signer.alg, "n": int_to_b64url(pub.n), "e": int_to_b64url(pub.e),
                "x5c": x5c}
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    numbers = key.public_key().public_numbers()
    return {"kty": "EC", "crv": "P-256", "alg": signer.alg, "x": int_to_b64url(numbers.x, 32),
            "y": int_to_b64url(numbers.y, 32), "x5c": x5c}


class TokenService:
    """Issues tokens with the stand-in's signers and verifies tokens presented to the KBS."""

    def __init__(self, signers: Mapping[str, Signer], *, duration_s: float, leeway_s: float,
                 clock: Callable[[], float], policies: Mapping[str, str]) -> None:
        self._signers = dict(signers)
        self._duration = duration_s
        self._leeway = leeway_s
        self._clock = clock
        self._policies = dict(policies)

    def signer(self, alg: str) -> Signer:
        return self._signers[alg]

    def issue(self, *, tee_claims: Iterable[tuple[str, Mapping[str, Any]]], runtime_data: Any,
              init_data: Any, policy_ids: Iterable[str], alg: str = KBS_TOKEN_ALG) -> str:
        """Sign a Simple token; ``tee_claims`` is ``[(tee, verifier claims), ...]``, primary first."""
        tee_claims = list(tee_claims)
        flattened: dict[str, Any] = {}
        for tee, claims in tee_claims:
            flattened.update(flatten_claims(tee, claims))
        now = int(self._clock())
        claims = {
            "iss": ISSUER,
            "iat": now,
            "nbf": now,
            "exp": int(now + self._duration),
            "jti": "".join(secrets.choice(_JTI_ALPHABET) for _ in range(10)),
            "tee": tee_claims[0][0],
            "evaluation-reports": [
                {"policy-id": pid, "policy-hash": policy_hash(self._policies[pid])} for pid in policy_ids
            ],
            "tcb-status": _compact(flattened),
            "customized_claims": {"init_data": init_data, "runtime_data": runtime_data},
        }
        signer = self._signers[alg]
        header = {"typ": "JWT", "alg": alg, "jwk": public_jwk(signer)}
        token = jose_jws.JWS(_compact(claims).encode("utf-8"))
        token.add_signature(jose_jwk.JWK.from_pyca(signer.key), alg=alg, protected=_compact(header))
        return str(token.serialize(compact=True))

    def challenge_jwt(self, nonce: str, *, alg: str = KBS_TOKEN_ALG, lifetime_s: float = 300.0) -> str:
        """The AS ``/challenge`` JWT (Trustee >= 1.6): the nonce, signed, so the AS can later check a
        challenge it issued without keeping state."""
        now = int(self._clock())
        signer = self._signers[alg]
        header = {"typ": "JWT", "alg": alg, "jwk": public_jwk(signer)}
        token = jose_jws.JWS(_compact({"nonce": nonce, "iat": now, "exp": int(now + lifetime_s)}).encode())
        token.add_signature(jose_jwk.JWK.from_pyca(signer.key), alg=alg, protected=_compact(header))
        return str(token.serialize(compact=True))

    def verify(self, token: str) -> dict[str, Any]:
        """Verify signature (own signers only, algorithm pinned by key type) and ``exp``."""
        if not isinstance(token, str) or not token or len(token) > MAX_TOKEN or token.count(".") != 2:
            raise TokenError("token is not a compact JWS")
        parsed = jose_jws.JWS()
        try:
            parsed.deserialize(token)
            alg = parsed.jose_header.get("alg")
        except Exception:  # jwcrypto raises several types for malformed input
            raise TokenError("token is not a parseable JWS") from None
        signer = self._signers.get(alg) if isinstance(alg, str) else None
        if signer is None:
            raise TokenError(f"token algorithm {alg!r} is not one this service signs with")
        try:
            parsed.verify(jose_jwk.JWK.from_pyca(signer.key.public_key()), alg=alg)
            claims = jsonutil.loads(parsed.payload)
        except Exception:
            raise TokenError("token signature does not verify against the stand-in's signing key") from None
        if not isinstance(claims, dict):
            raise TokenError("token claims are not a JSON object")
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise TokenError("token has no numeric 'exp' claim")
        if self._clock() > exp + self._leeway:
            raise TokenError("token has expired")
        return claims
