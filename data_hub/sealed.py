"""CoCo sealed secrets: ``sealed.<JWS protected header>.<JWS payload>.<JWS signature>`` (sans-IO).

The payload is CoCo's secret JSON, ``{"version": "0.1.0", "type": "vault"|"envelope", ...}``.
Upstream CDH verifies an ES256 JWS whose ``kid`` names the verification key (a ``kbs://`` URI or a
local file); Trustiflux <= 1.5 skips the check entirely. We always verify unless explicitly told not
to, because an unverified sealed secret lets whoever writes the pod spec choose which KBS resource
the workload receives.

Envelope secrets with provider ``kbs`` (our extension; upstream has KMS providers only) are
decrypted with a key-encryption key (KEK, 32 bytes) held by Trustee under ``key_id``:
``encrypted_key`` = base64(nonce[12] ‖ AES-256-GCM(KEK, DEK) ‖ tag), and ``encrypted_data`` =
base64(AES-256-GCM(DEK, plaintext) ‖ tag) with nonce ``iv`` — the upstream ``A256GCM`` wrap type.
Both directions live here, so tests and operators seal with the same code that unseals.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from jwcrypto import jwk as jose_jwk
from jwcrypto import jws as jose_jws
from jwcrypto.common import JWException

from agents import jsonutil
from attestation_agent.kbs.encoding import b64url_decode, b64url_encode
from data_hub.errors import SealedSecretError, SignatureError

PREFIX = "sealed."
VERSION = "0.1.0"
MAX_SEALED = 64 * 1024
MAX_KEY_FILE = 64 * 1024
ALGORITHM = "ES256"
WRAP_TYPE = "A256GCM"
KBS_PROVIDER = "kbs"
GCM_NONCE = 12
DEK_SIZE = KEK_SIZE = 32


@dataclass(frozen=True)
class VaultSecret:
    """The secret is the KBS resource ``name`` itself."""

    name: str
    provider: str
    provider_settings: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EnvelopeSecret:
    """The secret travels encrypted under a DEK, which is wrapped by a key the provider holds."""

    key_id: str
    encrypted_key: str
    encrypted_data: str
    wrap_type: str
    iv: str
    provider: str
    provider_settings: dict[str, Any] = field(default_factory=dict)
    annotations: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # ciphertext is not secret, but long and useless in logs
        return f"EnvelopeSecret(provider={self.provider!r}, key_id={self.key_id!r}, wrap_type={self.wrap_type!r})"


Secret = VaultSecret | EnvelopeSecret


@dataclass(frozen=True)
class SealedSecret:
    """A parsed sealed secret: its JWS parts and the decoded payload."""

    header: dict[str, Any]
    header_b64: str
    payload_b64: str
    signature: bytes
    secret: Secret

    @property
    def kid(self) -> str | None:
        kid = self.header.get("kid")
        return kid if isinstance(kid, str) else None

    @property
    def compact_jws(self) -> str:
        return f"{self.header_b64}.{self.payload_b64}.{b64url_encode(self.signature)}"


def _b64url(part: str, what: str) -> bytes:
    try:
        return b64url_decode(part)
    except (ValueError, binascii.Error):
        raise SealedSecretError(f"sealed secret {what} is not base64url") from None


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = jsonutil.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise SealedSecretError(f"sealed secret {what} is not JSON") from None
    if not isinstance(obj, dict):
        raise SealedSecretError(f"sealed secret {what} is not a JSON object")
    return obj


def _str_field(obj: dict[str, Any], name: str, kind: str) -> str:
    value = obj.get(name)
    if not isinstance(value, str):
        raise SealedSecretError(f"{kind} sealed secret lacks the string field {name!r}")
    return value


def _map_field(obj: dict[str, Any], name: str, kind: str) -> dict[str, Any]:
    value = obj.get(name, {})
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise SealedSecretError(f"{kind} sealed secret field {name!r} must be an object")
    return value


def parse_payload(data: bytes) -> Secret:
    """The secret described by payload JSON ``data`` (the fixture files are such payloads)."""
    obj = _json_object(data, "payload")
    version = obj.get("version")
    if version != VERSION:
        raise SealedSecretError(f"sealed secret version {version!r} is not supported",
                                hint=f"this data hub unseals version {VERSION}")
    kind = obj.get("type")
    if kind == "vault":
        return VaultSecret(name=_str_field(obj, "name", "vault"), provider=_str_field(obj, "provider", "vault"),
                           provider_settings=_map_field(obj, "provider_settings", "vault"),
                           annotations=_map_field(obj, "annotations", "vault"))
    if kind == "envelope":
        fields = {name: _str_field(obj, name, "envelope")
                  for name in ("key_id", "encrypted_key", "encrypted_data", "wrap_type", "iv", "provider")}
        return EnvelopeSecret(**fields, provider_settings=_map_field(obj, "provider_settings", "envelope"),
                              annotations=_map_field(obj, "annotations", "envelope"))
    raise SealedSecretError(f"sealed secret type {str(kind)[:40]!r} is not supported", hint="use vault or envelope")


def parse_sealed(text: str | bytes) -> SealedSecret:
    """Split and decode ``sealed.<header>.<payload>.<signature>`` (nothing verified yet)."""
    if isinstance(text, bytes | bytearray):
        if len(text) > MAX_SEALED:
            raise SealedSecretError(f"sealed secret is larger than {MAX_SEALED} bytes")
        try:
            text = bytes(text).decode("ascii")
        except UnicodeDecodeError:
            raise SealedSecretError("sealed secret must be ASCII text") from None
    if len(text) > MAX_SEALED:
        raise SealedSecretError(f"sealed secret is larger than {MAX_SEALED} bytes")
    text = text.strip()
    if not text.startswith(PREFIX):
        raise SealedSecretError("input is not a sealed secret: it must start with 'sealed.'")
    parts = text[len(PREFIX):].split(".")
    if len(parts) != 3:
        raise SealedSecretError(f"sealed secret must have 4 dot-separated parts, got {len(parts) + 1}",
                                hint="expected sealed.<JWS header>.<JWS payload>.<JWS signature>")
    header_b64, payload_b64, signature_b64 = parts
    # Trustiflux writes placeholder headers that are not base64 JSON; they only matter when verifying.
    try:
        header = _json_object(_b64url(header_b64, "header"), "header")
    except SealedSecretError:
        header = {}
    secret = parse_payload(_b64url(payload_b64, "payload"))
    try:
        signature = _b64url(signature_b64, "signature")
    except SealedSecretError:
        signature = b""
    return SealedSecret(header=header, header_b64=header_b64, payload_b64=payload_b64,
                        signature=signature, secret=secret)


def load_verification_key(data: bytes) -> jose_jwk.JWK:
    """An EC P-256 public key from a JWK (JSON) or PEM; private parts are ignored."""
    if len(data) > MAX_KEY_FILE:
        raise SignatureError("sealed-secret verification key is too large")
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = jose_jwk.JWK.from_pem(data)
        else:
            key = jose_jwk.JWK.from_json(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, JWException, TypeError):
        raise SignatureError("sealed-secret verification key is neither a JWK nor a PEM key") from None
    if key.get("kty") != "EC" or key.get("crv") != "P-256":
        raise SignatureError("sealed-secret verification key must be an EC P-256 key (ES256)")
    return jose_jwk.JWK(**key.export_public(as_dict=True))


def verify(sealed: SealedSecret, key: jose_jwk.JWK) -> None:
    """Check the ES256 signature over ``<header>.<payload>``; :class:`SignatureError` if it fails."""
    if sealed.header.get("alg") != ALGORITHM:
        raise SignatureError(f"sealed secret JWS algorithm {str(sealed.header.get('alg'))[:20]!r} is not allowed",
                             hint="sealed secrets must be signed with ES256")
    token = jose_jws.JWS()
    try:
        token.deserialize(sealed.compact_jws)
        token.verify(key, alg=ALGORITHM)
    except (JWException, ValueError, TypeError):
        raise SignatureError(f"sealed secret signature does not verify with key {str(sealed.kid)[:200]!r}",
                             hint="the secret was altered or signed with another key") from None


def _std_b64(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (ValueError, binascii.Error):
        raise SealedSecretError(f"envelope sealed secret field {what!r} is not base64") from None


def envelope_decrypt(secret: EnvelopeSecret, kek: bytes) -> bytes:
    """Plaintext of a ``kbs`` envelope secret given its KEK (see module docstring for the layout)."""
    if secret.wrap_type != WRAP_TYPE:
        raise SealedSecretError(f"envelope wrap type {secret.wrap_type[:20]!r} is not supported",
                                hint=f"use {WRAP_TYPE}")
    if len(kek) != KEK_SIZE:
        raise SealedSecretError(f"the key-encryption key {secret.key_id[:200]!r} is {len(kek)} bytes, not {KEK_SIZE}",
                                hint="store a raw 32-byte AES-256 key at that KBS resource")
    wrapped = _std_b64(secret.encrypted_key, "encrypted_key")
    iv = _std_b64(secret.iv, "iv")
    data = _std_b64(secret.encrypted_data, "encrypted_data")
    if len(wrapped) != GCM_NONCE + DEK_SIZE + 16 or len(iv) != GCM_NONCE or len(data) < 16:
        raise SealedSecretError("envelope sealed secret has a wrong-sized encrypted_key, iv or encrypted_data")
    try:
        dek = AESGCM(kek).decrypt(wrapped[:GCM_NONCE], wrapped[GCM_NONCE:], None)
    except InvalidTag:
        raise SealedSecretError(f"envelope data key does not decrypt with KEK {secret.key_id[:200]!r}",
                                hint="the secret was sealed for another key, or altered") from None
    try:
        return AESGCM(dek).decrypt(iv, data, None)
    except InvalidTag:
        raise SealedSecretError("envelope data does not authenticate under its data key",
                                hint="the sealed secret was altered") from None


# --- sealing (tests, operators) ------------------------------------------------------------------

def envelope_encrypt(plaintext: bytes, kek: bytes, key_id: str) -> EnvelopeSecret:
    """Seal ``plaintext`` with a fresh DEK wrapped by ``kek`` (the inverse of :func:`envelope_decrypt`)."""
    if len(kek) != KEK_SIZE:
        raise SealedSecretError(f"the key-encryption key must be {KEK_SIZE} bytes")
    dek = AESGCM.generate_key(bit_length=256)
    wrap_nonce, iv = os.urandom(GCM_NONCE), os.urandom(GCM_NONCE)
    wrapped = wrap_nonce + AESGCM(kek).encrypt(wrap_nonce, dek, None)
    data = AESGCM(dek).encrypt(iv, plaintext, None)
    return EnvelopeSecret(key_id=key_id, encrypted_key=base64.b64encode(wrapped).decode(),
                          encrypted_data=base64.b64encode(data).decode(), wrap_type=WRAP_TYPE,
                          iv=base64.b64encode(iv).decode(), provider=KBS_PROVIDER)


def payload_json(secret: Secret) -> bytes:
    """Upstream's payload JSON for ``secret``."""
    body: dict[str, Any] = {"version": VERSION}
    if isinstance(secret, VaultSecret):
        body.update(type="vault", name=secret.name, provider=secret.provider)
    else:
        body.update(type="envelope", key_id=secret.key_id, encrypted_key=secret.encrypted_key,
                    encrypted_data=secret.encrypted_data, wrap_type=secret.wrap_type, iv=secret.iv,
                    provider=secret.provider)
    body.update(provider_settings=secret.provider_settings, annotations=secret.annotations)
    return json.dumps(body, separators=(",", ":")).encode()


def seal(secret: Secret, signing_key: jose_jwk.JWK, kid: str) -> str:
    """``sealed.<h>.<p>.<s>`` signed ES256 with ``signing_key`` (an EC P-256 private JWK)."""
    token = jose_jws.JWS(payload_json(secret))
    token.add_signature(signing_key, alg=ALGORITHM, protected=json.dumps({"alg": ALGORITHM, "kid": kid}))
    return PREFIX + token.serialize(compact=True)


def seal_unsigned(secret: Secret) -> str:
    """Trustiflux-style placeholder header and signature; only unsealable with verification skipped."""
    return f"{PREFIX}fakejwsheader.{b64url_encode(payload_json(secret))}.fakesignature"
