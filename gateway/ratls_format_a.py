"""rats-tls key binding "format A", as TNG 1.0.6 … 2.2.4 (rats-rs ``tng`` branch) makes it: pure codec.

TNG <= 2.2.4 clients (the ACK-CAI deployment guide's TNG 2.2.4 client among them) only accept this
binding; TNG >= 2.2.5 uses format B (``gateway.ratls_cert``). The two cannot be satisfied by one
certificate, so a listener is told which one to use (``"compat": "2.2.4"``). Read from rats-rs
``rats-cert/src/cert/{create,verify}.rs``, ``cert/dice/cbor.rs`` and ``tee/coco/{attester,evidence,
verifier}.rs``:

1. ``claims_buffer`` = CBOR map ``{"pubkey-hash": bstr(CBOR [1, bstr SHA-256(SPKI DER)])}``
   (Interoperable RA-TLS layout: text key, byte-string value, definite lengths);
2. ``aa_runtime_data`` = JSON ``{"rats-rs.raw_runtime_data": "<base64url-nopad(SHA-256(claims_buffer))>"}``
   (serde compact, one key) and the TEE report data is ``SHA-384(aa_runtime_data)``;
3. the extension is CBOR ``tag 0xC0C000 [bstr evidence map, bstr claims_buffer]`` (the evidence map
   without ``aa_additional_evidence``), see ``ratls_cert.encode_extension``.

The verifier recomputes ``SHA-256(claims_buffer)``, requires the token's runtime data to be
*exactly* the JSON object of step 2 (TNG 2.2.4 compares serialisations), then checks that the
``pubkey-hash`` inside the claims buffer names the presented key. Everything here is bytes in,
values out; malformed input raises only ``CertFormatError``.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import cbor2

from gateway.errors import CertFormatError
from gateway.ratls_cert import HASH_ALGO_IDS, AttestedCertificate, pubkey_hash_value

CLAIM_PUBKEY_HASH = "pubkey-hash"
RUNTIME_KEY = "rats-rs.raw_runtime_data"
MAX_CLAIMS_BUFFER = 4096
_HASH_LENGTHS = {1: 32, 7: 48, 8: 64}


def claims_buffer(spki: bytes) -> bytes:
    """The CBOR claims buffer binding the key whose DER SubjectPublicKeyInfo is ``spki``."""
    return cbor2.dumps({CLAIM_PUBKEY_HASH: pubkey_hash_value(spki)})


def expected_runtime_data(buffer: bytes) -> dict[str, str]:
    """The structured runtime data the AS must echo for ``buffer``."""
    digest = hashlib.sha256(buffer).digest()
    return {RUNTIME_KEY: base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")}


def runtime_data_text(buffer: bytes) -> str:
    """``aa_runtime_data`` for ``buffer``: serde_json's compact text of a one-key object."""
    return json.dumps(expected_runtime_data(buffer), separators=(",", ":"))


def parse_claims_buffer(buffer: bytes) -> dict[str, bytes]:
    """The claims map (text → bytes) of a format-A claims buffer."""
    if not isinstance(buffer, bytes) or not buffer or len(buffer) > MAX_CLAIMS_BUFFER:
        raise CertFormatError(f"rats-tls format-A claims buffer is empty or larger than {MAX_CLAIMS_BUFFER} bytes")
    try:
        claims = cbor2.loads(buffer)
    except Exception:  # cbor2 raises several types for malformed input
        raise CertFormatError("rats-tls format-A claims buffer is not valid CBOR") from None
    if not isinstance(claims, dict) or not all(isinstance(k, str) and isinstance(v, bytes)
                                               for k, v in claims.items()):
        raise CertFormatError("rats-tls format-A claims buffer must be a CBOR map of text names to byte strings")
    return claims


def check_pubkey_hash(buffer: bytes, spki: bytes) -> None:
    """Check that the claims buffer's ``pubkey-hash`` is the hash of ``spki`` (any of sha256/384/512)."""
    value = parse_claims_buffer(buffer).get(CLAIM_PUBKEY_HASH)
    if value is None:
        raise CertFormatError("rats-tls format-A claims buffer has no 'pubkey-hash' claim")
    try:
        decoded = cbor2.loads(value)
    except Exception:
        raise CertFormatError("rats-tls format-A 'pubkey-hash' is not valid CBOR") from None
    if (not isinstance(decoded, list) or len(decoded) != 2 or isinstance(decoded[0], bool)
            or decoded[0] not in HASH_ALGO_IDS or not isinstance(decoded[1], bytes)
            or len(decoded[1]) != _HASH_LENGTHS[decoded[0]]):
        raise CertFormatError("rats-tls format-A 'pubkey-hash' must be CBOR [hash-alg-id 1|7|8, bstr digest]")
    if hashlib.new(HASH_ALGO_IDS[decoded[0]], spki).digest() != decoded[1]:
        raise CertFormatError("rats-tls key binding mismatch: the claims buffer's pubkey-hash does not name this "
                              "certificate's public key")


def check_binding(cert: AttestedCertificate) -> dict[str, Any]:
    """Check a parsed certificate's format-A binding locally; return the runtime data the token must carry.

    The AS later proves that the report data is SHA-384 of ``aa_runtime_data``; the token's runtime
    data must then equal the returned object exactly.
    """
    if not cert.claims_buffer:
        raise CertFormatError("rats-tls certificate uses format B (TNG >= 2.2.5, empty claims buffer); this "
                              "listener is configured for TNG <= 2.2.4 (\"compat\": \"2.2.4\", format A)",
                              hint="remove \"compat\" from this entry to talk to a TNG >= 2.2.5 peer")
    check_pubkey_hash(cert.claims_buffer, cert.spki)
    expected = expected_runtime_data(cert.claims_buffer)
    if cert.record.runtime_data_object() != expected:
        raise CertFormatError("rats-tls format-A runtime data is not {\"rats-rs.raw_runtime_data\": "
                              "b64url(SHA-256(claims buffer))}: the evidence is not bound to this claims buffer")
    return expected
