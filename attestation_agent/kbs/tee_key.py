"""The ephemeral TEE key pair: the KBS wraps every resource to its public half.

The public JWK goes into the runtime data that the TEE evidence binds, so the member set must be
exactly what Trustee deserializes: RSA ``{kty, alg, n, e}``, EC ``{kty, crv, alg, x, y}``.
The private half lives only in this process's memory.
"""

from __future__ import annotations

import enum
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from attestation_agent.kbs.dialect import Dialect
from attestation_agent.kbs.encoding import b64url_to_int, int_to_b64url


class KeyAlgorithm(enum.StrEnum):
    """JWE key-management algorithms a TEE key can be used with."""

    RSA1_5 = "RSA1_5"
    RSA_OAEP_256 = "RSA-OAEP-256"
    ECDH_ES_A256KW = "ECDH-ES+A256KW"


DEFAULT_ALGORITHM: dict[Dialect, KeyAlgorithm] = {
    # Trustee 1.5 only ever wraps with RSA1_5 and fails (400 JweError) for any other alg.
    Dialect.V0_1_0: KeyAlgorithm.RSA1_5,
    # Upstream clients default to EC P-256; it is also the cheapest to generate.
    Dialect.V0_4_0: KeyAlgorithm.ECDH_ES_A256KW,
}

ALLOWED_ALGORITHMS: dict[Dialect, frozenset[KeyAlgorithm]] = {
    Dialect.V0_1_0: frozenset({KeyAlgorithm.RSA1_5}),
    Dialect.V0_4_0: frozenset(KeyAlgorithm),
}

RSA_BITS = 2048


class TeeKey:
    """A private key plus the algorithm the KBS must use to wrap content keys to it."""

    __slots__ = ("algorithm", "private_key")

    def __init__(self, algorithm: KeyAlgorithm, private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        if algorithm is KeyAlgorithm.ECDH_ES_A256KW:
            if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
                private_key.curve, ec.SECP256R1
            ):
                raise ValueError("ECDH-ES+A256KW needs a P-256 key")
        elif not isinstance(private_key, rsa.RSAPrivateKey):
            raise ValueError(f"{algorithm} needs an RSA key")
        self.algorithm = algorithm
        self.private_key = private_key

    @classmethod
    def generate(cls, algorithm: KeyAlgorithm) -> TeeKey:
        if algorithm is KeyAlgorithm.ECDH_ES_A256KW:
            return cls(algorithm, ec.generate_private_key(ec.SECP256R1()))
        return cls(algorithm, rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS))

    def public_jwk(self) -> dict[str, str]:
        """The ``tee-pubkey`` object, members in Trustee's serialization order."""
        if isinstance(self.private_key, ec.EllipticCurvePrivateKey):
            numbers = self.private_key.public_key().public_numbers()
            return {
                "kty": "EC",
                "crv": "P-256",
                "alg": self.algorithm.value,
                "x": int_to_b64url(numbers.x, 32),
                "y": int_to_b64url(numbers.y, 32),
            }
        pub = self.private_key.public_key().public_numbers()
        return {"kty": "RSA", "alg": self.algorithm.value, "n": int_to_b64url(pub.n), "e": int_to_b64url(pub.e)}

    def __repr__(self) -> str:  # never show key material
        return f"TeeKey(algorithm={self.algorithm.value})"


def public_key_from_jwk(jwk: Any) -> tuple[KeyAlgorithm, rsa.RSAPublicKey | ec.EllipticCurvePublicKey]:
    """Validate a ``tee-pubkey`` JWK as Trustee does and return its algorithm and key.

    Raises ValueError with a message naming the offending member.
    """
    if not isinstance(jwk, dict):
        raise ValueError("tee-pubkey must be a JSON object")
    kty = jwk.get("kty")
    try:
        alg = KeyAlgorithm(jwk.get("alg"))
    except ValueError:
        raise ValueError(f"tee-pubkey alg {jwk.get('alg')!r} is not supported") from None
    if kty == "RSA":
        if set(jwk) != {"kty", "alg", "n", "e"}:
            raise ValueError("RSA tee-pubkey must have exactly kty, alg, n, e")
        if alg is KeyAlgorithm.ECDH_ES_A256KW:
            raise ValueError("RSA tee-pubkey cannot use ECDH-ES+A256KW")
        n, e = b64url_to_int(jwk["n"]), b64url_to_int(jwk["e"])
        if n.bit_length() < 2048 or n.bit_length() > 8192 or e < 3 or e % 2 == 0:
            raise ValueError("RSA tee-pubkey modulus must be 2048..8192 bits with an odd exponent")
        return alg, rsa.RSAPublicNumbers(e, n).public_key()
    if kty == "EC":
        if set(jwk) != {"kty", "crv", "alg", "x", "y"}:
            raise ValueError("EC tee-pubkey must have exactly kty, crv, alg, x, y")
        if jwk.get("crv") != "P-256" or alg is not KeyAlgorithm.ECDH_ES_A256KW:
            raise ValueError("EC tee-pubkey must be P-256 with ECDH-ES+A256KW")
        numbers = ec.EllipticCurvePublicNumbers(b64url_to_int(jwk["x"]), b64url_to_int(jwk["y"]), ec.SECP256R1())
        return alg, numbers.public_key()  # raises ValueError for a point off the curve
    raise ValueError(f"tee-pubkey kty {kty!r} is not supported (RSA or EC)")
