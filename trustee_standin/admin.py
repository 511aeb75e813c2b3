"""Admin authentication of the stand-in KBS (resource writes/deletes); development and tests only.

Trustee's ``[admin] auth_public_key``: ``Authorization: Bearer <JWT>`` signed EdDSA (Ed25519),
verified against the configured public key; ``insecure_api = true`` turns the check off.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from jwcrypto import jwk as jose_jwk
from jwcrypto import jws as jose_jws

from agents import jsonutil
from agents.errors import ConfigError
from trustee_standin.errors import KbsHttpError


def _admin_error(reason: str) -> KbsHttpError:
    return KbsHttpError("AdminAuth", f"Admin auth error: {reason}")


class AdminAuth:
    def __init__(self, public_key_pem: bytes | None, *, insecure: bool,
                 clock: Callable[[], float] = time.time) -> None:
        self._insecure = insecure
        self._clock = clock
        self._key: jose_jwk.JWK | None = None
        if public_key_pem is not None:
            key = serialization.load_pem_public_key(public_key_pem)
            if not isinstance(key, ed25519.Ed25519PublicKey):
                raise ConfigError("admin public key must be an Ed25519 key (PEM)")
            self._key = jose_jwk.JWK.from_pyca(key)

    def check(self, authorization: str | None) -> None:
        """Raise ``AdminAuth`` (401) unless the header carries a valid admin JWT."""
        if self._insecure:
            return
        if self._key is None:
            raise _admin_error("no admin public key is configured")
        if not authorization or not authorization.startswith("Bearer "):
            raise _admin_error("Authorization header with a Bearer token is missing")
        token = jose_jws.JWS()
        try:
            token.deserialize(authorization[len("Bearer "):].strip())
            token.verify(self._key, alg="EdDSA")
            claims = jsonutil.loads(token.payload)
        except Exception:  # jwcrypto raises several types; all mean "not a valid admin token"
            raise _admin_error("admin token signature is invalid") from None
        exp = claims.get("exp") if isinstance(claims, dict) else None
        if isinstance(exp, int | float) and not isinstance(exp, bool) and self._clock() > exp:
            raise _admin_error("admin token has expired")
