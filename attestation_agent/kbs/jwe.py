"""JWE resource responses in both encodings Trustee emits.

* Trustee <= 1.5.x (protocol 0.1.0): ``protected`` is raw JSON text (not base64url), the GCM tag
  is appended to ``ciphertext`` with ``tag`` empty, and GCM runs with *empty* AAD. No JOSE library
  accepts this, so it is decoded here with ``cryptography`` directly.
* Trustee >= 1.6 / CoCo (0.4.0): RFC 7516 flattened JSON (AAD = the ``protected`` string),
  handled by jwcrypto with the algorithm pinned to the TEE key's.

Both directions live here so the Trustee stand-in encrypts with the same code the client decrypts.
"""

from __future__ import annotations

import json
import os
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_wrap
from jwcrypto import jwe as jose_jwe
from jwcrypto import jwk as jose_jwk

from agents import jsonutil
from attestation_agent.errors import JweError
from attestation_agent.kbs.dialect import Dialect
from attestation_agent.kbs.encoding import b64url_decode, b64url_encode, int_to_b64url
from attestation_agent.kbs.tee_key import KeyAlgorithm, TeeKey, public_key_from_jwk

ENC = "A256GCM"
GCM_TAG_SIZE = 16
GCM_IV_SIZE = 12
MAX_JWE_SIZE = 64 * 1024 * 1024
_LEGACY_PROTECTED = '{"alg":"RSA1_5","enc":"A256GCM"}'
_REQUIRED = ("protected", "encrypted_key", "iv", "ciphertext")


def _load(body: bytes | str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(body, dict):
        obj = body
    else:
        if len(body) > MAX_JWE_SIZE:
            raise JweError(f"JWE response is larger than {MAX_JWE_SIZE} bytes")
        try:
            obj = jsonutil.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise JweError("resource response is not a JSON JWE object") from None
    if not isinstance(obj, dict):
        raise JweError("resource response is not a JSON JWE object")
    for name in _REQUIRED:
        if not isinstance(obj.get(name), str):
            raise JweError(f"JWE member {name!r} is missing or not a string")
    if not isinstance(obj.get("tag", ""), str):
        raise JweError("JWE member 'tag' is not a string")
    return obj


def _protected_header(protected: str) -> tuple[dict[str, Any], bool]:
    """Return the header and whether it was raw JSON (the Trustee 1.5 quirk)."""
    if protected.lstrip().startswith("{"):
        raw = True
        text = protected
    else:
        raw = False
        try:
            text = b64url_decode(protected).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            raise JweError("JWE protected header is neither JSON nor base64url JSON") from None
    try:
        header = jsonutil.loads(text)
    except ValueError:
        raise JweError("JWE protected header is not valid JSON") from None
    if not isinstance(header, dict):
        raise JweError("JWE protected header is not a JSON object")
    return header, raw


def decrypt_resource(body: bytes | str | dict[str, Any], key: TeeKey) -> bytes:
    """Decrypt a KBS resource response with the TEE key; raises JweError on any failure."""
    obj = _load(body)
    header, raw = _protected_header(obj["protected"])
    if header.get("enc") != ENC:
        raise JweError(f"JWE enc {header.get('enc')!r} is not supported (expected {ENC})")
    if header.get("alg") != key.algorithm.value:
        raise JweError(
            f"JWE alg {header.get('alg')!r} does not match the TEE key algorithm {key.algorithm.value}"
        )
    try:
        ciphertext = b64url_decode(obj["ciphertext"])
        iv = b64url_decode(obj["iv"])
        tag = b64url_decode(obj.get("tag", ""))
        b64url_decode(obj["encrypted_key"])
    except ValueError:
        raise JweError("JWE member is not valid base64url") from None
    if not tag:
        if len(ciphertext) < GCM_TAG_SIZE:
            raise JweError("JWE ciphertext is shorter than the GCM tag (truncated response?)")
        ciphertext, tag = ciphertext[:-GCM_TAG_SIZE], ciphertext[-GCM_TAG_SIZE:]
    if len(iv) != GCM_IV_SIZE or len(tag) != GCM_TAG_SIZE:
        raise JweError("JWE iv or tag has the wrong length (truncated response?)")
    if raw:
        return _decrypt_legacy(obj, key, iv, ciphertext, tag)
    return _decrypt_rfc7516(obj, key, ciphertext, tag)


def _decrypt_legacy(obj: dict[str, Any], key: TeeKey, iv: bytes, ciphertext: bytes, tag: bytes) -> bytes:
    if key.algorithm is not KeyAlgorithm.RSA1_5 or not isinstance(key.private_key, rsa.RSAPrivateKey):
        raise JweError("raw-JSON (Trustee 1.5) JWE requires an RSA1_5 TEE key")
    try:
        cek = key.private_key.decrypt(b64url_decode(obj["encrypted_key"]), padding.PKCS1v15())
        if len(cek) != 32:
            raise ValueError
        return AESGCM(cek).decrypt(iv, ciphertext + tag, None)
    except (ValueError, InvalidTag):
        raise JweError("JWE decryption failed: wrong TEE key or tampered response") from None


def _decrypt_rfc7516(obj: dict[str, Any], key: TeeKey, ciphertext: bytes, tag: bytes) -> bytes:
    flattened = {
        "protected": obj["protected"],
        "encrypted_key": obj["encrypted_key"],
        "iv": obj["iv"],
        "ciphertext": b64url_encode(ciphertext),
        "tag": b64url_encode(tag),
    }
    if isinstance(obj.get("aad"), str):
        flattened["aad"] = obj["aad"]
    token = jose_jwe.JWE(algs=[key.algorithm.value, ENC])
    try:
        token.deserialize(json.dumps(flattened), key=jose_jwk.JWK.from_pyca(key.private_key))
    except Exception:  # jwcrypto raises several unrelated types; none may leak key material
        raise JweError("JWE decryption failed: wrong TEE key or tampered response") from None
    return bytes(token.payload)


def encrypt_resource(plaintext: bytes, tee_pubkey: dict[str, Any], dialect: Dialect) -> dict[str, str]:
    """Server side: wrap ``plaintext`` to ``tee_pubkey`` exactly as Trustee of ``dialect`` does.

    Raises ValueError when the key cannot be used in that dialect (Trustee: 400 JweError).
    """
    alg, public_key = public_key_from_jwk(tee_pubkey)
    if dialect is Dialect.V0_1_0:
        if alg is not KeyAlgorithm.RSA1_5 or not isinstance(public_key, rsa.RSAPublicKey):
            raise ValueError(f"Trustee 1.5 only wraps resources with RSA1_5, not {alg.value}")
        cek, iv = os.urandom(32), os.urandom(GCM_IV_SIZE)
        sealed = AESGCM(cek).encrypt(iv, plaintext, None)
        return {
            "protected": _LEGACY_PROTECTED,
            "encrypted_key": b64url_encode(public_key.encrypt(cek, padding.PKCS1v15())),
            "iv": b64url_encode(iv),
            "ciphertext": b64url_encode(sealed),
            "tag": "",
        }
    cek, iv = os.urandom(32), os.urandom(GCM_IV_SIZE)
    header: dict[str, Any] = {"alg": alg.value, "enc": ENC}
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        # Trustee carries the ephemeral key inside the protected header (jwcrypto would put it in
        # the unprotected one), so ECDH-ES+A256KW is done here per RFC 7518 section 4.6.
        ephemeral = ec.generate_private_key(ec.SECP256R1())
        numbers = ephemeral.public_key().public_numbers()
        header["epk"] = {"crv": "P-256", "kty": "EC", "x": int_to_b64url(numbers.x, 32),
                         "y": int_to_b64url(numbers.y, 32)}
        kek = _concat_kdf(ephemeral.exchange(ec.ECDH(), public_key), alg.value)
        encrypted_key = aes_key_wrap(kek, cek)
    elif alg is KeyAlgorithm.RSA_OAEP_256:
        encrypted_key = public_key.encrypt(cek, _OAEP_SHA256)
    else:
        encrypted_key = public_key.encrypt(cek, padding.PKCS1v15())
    protected = b64url_encode(json.dumps(header, separators=(",", ":")).encode())
    sealed = AESGCM(cek).encrypt(iv, plaintext, protected.encode("ascii"))
    return {
        "protected": protected,
        "encrypted_key": b64url_encode(encrypted_key),
        "iv": b64url_encode(iv),
        "ciphertext": b64url_encode(sealed[:-GCM_TAG_SIZE]),
        "tag": b64url_encode(sealed[-GCM_TAG_SIZE:]),
    }


_OAEP_SHA256 = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def _concat_kdf(shared_secret: bytes, algorithm_id: str) -> bytes:
    """RFC 7518 4.6.2: Concat KDF (SHA-256), empty PartyUInfo/PartyVInfo, 256-bit key."""
    alg = algorithm_id.encode("ascii")
    other_info = (len(alg).to_bytes(4, "big") + alg + (0).to_bytes(4, "big") + (0).to_bytes(4, "big")
                  + (256).to_bytes(4, "big"))
    return ConcatKDFHash(algorithm=hashes.SHA256(), length=32, otherinfo=other_info).derive(shared_secret)
