"""rats-tls attested certificates as TNG >= 2.2.5 makes them ("format B"): pure codec.

The certificate is self-signed (P-256, ECDSA-SHA256); its public key is bound to the TEE evidence
like this (read from rats-cert and confirmed on a certificate captured from tng 2.12.0):

* ``pubkey-hash`` value = CBOR ``[1, bstr SHA-256(SPKI DER)]`` (1 = sha-256 in IANA named information);
* claims = ``{"pubkey-hash": base64-standard(pubkey-hash value)}``;
* ``aa_runtime_data`` = canonical JSON of the claims, and the report data the AA puts into the
  TEE report is ``SHA-384(aa_runtime_data)``;
* extension ``2.23.133.5.4.9`` (non-critical) = CBOR ``tag 0xC0C000 [bstr raw_evidence, bstr ""]``
  with ``raw_evidence`` = CBOR map ``{tee_type, aa_evidence (bstr, the AA's evidence JSON),
  aa_additional_evidence (bstr | null), aa_runtime_data (text), aa_runtime_data_hash_algo: 7}``;
  plus an empty ``2.23.133.5.4.2`` extension.

Verifiers check that the token's runtime data (the AS copies ``aa_runtime_data`` into it) is a
superset of the claims recomputed from the presented key, so the AS verdict applies to exactly
this TLS key. Everything here is bytes in, values out; parsing is bounded and raises only
``CertFormatError``.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import warnings
from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509.oid import NameOID

from agents import jsonutil
from attestation_agent.kbs.canonical import canonical_json
from gateway.errors import CertFormatError

EVIDENCE_OID = x509.ObjectIdentifier("2.23.133.5.4.9")
ENDORSEMENT_OID = x509.ObjectIdentifier("2.23.133.5.4.2")
TAG_COCO_EVIDENCE = 0xC0C000
TAG_COCO_TOKEN = 0xC0C001
HASH_ALGO_IDS = {1: "sha256", 7: "sha384", 8: "sha512"}  # IANA named-information ids
SHA384_ID = 7
SERIAL = 42
VALIDITY = datetime.timedelta(hours=6)
#: rustls refuses handshake messages over 64 KiB and Python's OpenSSL cannot compress certificates
#: (RFC 8879), so a larger certificate could never reach a TNG client. Keep a margin for framing.
MAX_CERT_DER = 65000
MAX_EXTENSION = MAX_CERT_DER
_SUBJECT = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "TNG"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Inclavare Containers")])


@dataclass(frozen=True)
class EvidenceRecord:
    """The CoCo evidence carried in the certificate extension."""

    tee_type: str
    aa_evidence: bytes
    aa_runtime_data: str
    aa_additional_evidence: bytes | None = None
    hash_algo: int = SHA384_ID

    @property
    def hash_name(self) -> str:
        return HASH_ALGO_IDS[self.hash_algo]

    def runtime_data_object(self) -> dict[str, Any]:
        """``aa_runtime_data`` parsed; it must be a JSON object (structured runtime data)."""
        try:
            value = jsonutil.loads(self.aa_runtime_data)
        except ValueError:
            raise CertFormatError("rats-tls evidence: aa_runtime_data is not JSON") from None
        if not isinstance(value, dict):
            raise CertFormatError("rats-tls evidence: aa_runtime_data is not a JSON object")
        return value


def spki_der(public_key: ec.EllipticCurvePublicKey | Any) -> bytes:
    return bytes(public_key.public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo))


def pubkey_hash_value(spki: bytes) -> bytes:
    """CBOR ``[1, bstr SHA-256(SPKI)]``."""
    return cbor2.dumps([1, hashlib.sha256(spki).digest()])


def binding_claims(spki: bytes) -> dict[str, str]:
    """The format-B claims that bind a TLS key: ``{"pubkey-hash": b64std(CBOR [1, H(SPKI)])}``."""
    return {"pubkey-hash": base64.b64encode(pubkey_hash_value(spki)).decode("ascii")}


def runtime_data_text(claims: dict[str, Any]) -> str:
    """``aa_runtime_data``: the canonical JSON text (sorted keys, compact) of the claims."""
    return canonical_json(claims).decode("utf-8")


def report_data(runtime_data: str, hash_algo: int = SHA384_ID) -> bytes:
    """The digest the AA puts into the TEE report for ``runtime_data``."""
    return hashlib.new(HASH_ALGO_IDS[hash_algo], runtime_data.encode("utf-8")).digest()


def encode_extension(record: EvidenceRecord, claims_buffer: bytes = b"") -> bytes:
    """Extension ``2.23.133.5.4.9``. An empty ``claims_buffer`` is format B (TNG >= 2.2.5); a non-empty
    one is format A (TNG <= 2.2.4, ``gateway.ratls_format_a``), whose rats-rs evidence map has no
    ``aa_additional_evidence`` key."""
    fields: dict[str, Any] = {"tee_type": record.tee_type, "aa_evidence": record.aa_evidence}
    if not claims_buffer:
        fields["aa_additional_evidence"] = record.aa_additional_evidence
    fields["aa_runtime_data"] = record.aa_runtime_data
    fields["aa_runtime_data_hash_algo"] = record.hash_algo
    return cbor2.dumps(cbor2.CBORTag(TAG_COCO_EVIDENCE, [cbor2.dumps(fields), claims_buffer]))


def _cbor(data: bytes, what: str) -> Any:
    try:
        return cbor2.loads(data)
    except Exception:  # cbor2 raises several types (CBORDecodeError, ValueError, RecursionError, ...)
        raise CertFormatError(f"rats-tls evidence: {what} is not valid CBOR") from None


def decode_extension(value: bytes) -> EvidenceRecord:
    """Parse a format-B extension ``2.23.133.5.4.9``; a format-A claims buffer is refused."""
    raw, claims_buffer = _split_extension(value)
    if claims_buffer:
        raise CertFormatError("rats-tls certificate uses the TNG <= 2.2.4 claims buffer (format A); this "
                              "listener expects format B (TNG >= 2.2.5)", hint="set \"compat\": \"2.2.4\" on "
                              "this entry to talk to a TNG <= 2.2.4 peer")
    return _evidence_map(raw)


def decode_extension_parts(value: bytes) -> tuple[EvidenceRecord, bytes]:
    """Parse extension ``2.23.133.5.4.9`` of either format: (evidence record, claims buffer).

    Only the CoCo evidence tag (background check) is accepted. The claims buffer is empty in
    format B and carries the CBOR claims map in format A.
    """
    raw, claims_buffer = _split_extension(value)
    return _evidence_map(raw), claims_buffer


def _split_extension(value: bytes) -> tuple[bytes, bytes]:
    if len(value) > MAX_EXTENSION:
        raise CertFormatError(f"rats-tls evidence extension is {len(value)} bytes; limit {MAX_EXTENSION}")
    outer = _cbor(value, "extension")
    if not isinstance(outer, cbor2.CBORTag):
        raise CertFormatError("rats-tls evidence extension is not a CBOR tag")
    if outer.tag == TAG_COCO_TOKEN:
        raise CertFormatError("rats-tls certificate carries a passport token (tag 0xC0C001); only background-"
                              "check evidence (tag 0xC0C000) is supported", hint="set attest.model to "
                              "'background_check' on the egress")
    if outer.tag != TAG_COCO_EVIDENCE:
        raise CertFormatError(f"rats-tls evidence extension has unsupported CBOR tag {outer.tag:#x}")
    if (not isinstance(outer.value, list | tuple) or len(outer.value) != 2
            or not all(isinstance(v, bytes) for v in outer.value)):
        raise CertFormatError("rats-tls evidence tag must wrap [bstr evidence, bstr claims_buffer]")
    raw, claims_buffer = outer.value
    return raw, claims_buffer


def _evidence_map(raw: bytes) -> EvidenceRecord:
    inner = _cbor(raw, "evidence map")
    if not isinstance(inner, dict):
        raise CertFormatError("rats-tls evidence is not a CBOR map")
    tee, evidence, runtime_data = inner.get("tee_type"), inner.get("aa_evidence"), inner.get("aa_runtime_data")
    additional, algo = inner.get("aa_additional_evidence"), inner.get("aa_runtime_data_hash_algo")
    if not isinstance(tee, str) or not tee or len(tee) > 32:
        raise CertFormatError("rats-tls evidence: tee_type must be a short text string")
    if not isinstance(evidence, bytes):
        raise CertFormatError("rats-tls evidence: aa_evidence must be a byte string")
    if not isinstance(runtime_data, str):
        raise CertFormatError("rats-tls evidence: aa_runtime_data must be a text string")
    if additional is not None and not isinstance(additional, bytes):
        raise CertFormatError("rats-tls evidence: aa_additional_evidence must be a byte string or null")
    if isinstance(algo, bool) or algo not in HASH_ALGO_IDS:
        raise CertFormatError(f"rats-tls evidence: aa_runtime_data_hash_algo {algo!r} is not one of "
                              f"{sorted(HASH_ALGO_IDS)}")
    return EvidenceRecord(tee_type=tee, aa_evidence=evidence, aa_runtime_data=runtime_data,
                          aa_additional_evidence=additional, hash_algo=algo)


def build_certificate(key: ec.EllipticCurvePrivateKey, record: EvidenceRecord,
                      now: datetime.datetime, *, claims_buffer: bytes = b"") -> bytes:
    """The self-signed attested certificate (DER). Raises CertFormatError when too large for rustls.

    ``claims_buffer`` non-empty makes a format-A (TNG <= 2.2.4) certificate."""
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(_SUBJECT).issuer_name(_SUBJECT)
        .public_key(public)
        .serial_number(SERIAL)
        .not_valid_before(now).not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=True, key_encipherment=True,
                                     data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.UnrecognizedExtension(EVIDENCE_OID, encode_extension(record, claims_buffer)),
                       critical=False)
        .add_extension(x509.UnrecognizedExtension(ENDORSEMENT_OID, b""), critical=False)
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER)
    if len(der) > MAX_CERT_DER:
        raise CertFormatError(f"attested certificate would be {len(der)} bytes; rustls (TNG) clients refuse "
                              f"more than {MAX_CERT_DER}", hint="reduce the evidence (e.g. no embedded device "
                              "evidence) or use the OHTTP mode, which carries evidence outside the handshake")
    return der


@dataclass(frozen=True)
class AttestedCertificate:
    spki: bytes
    record: EvidenceRecord
    claims_buffer: bytes = b""  # format A only


def parse_certificate(der: bytes) -> AttestedCertificate:
    """Parse a peer's rats-tls certificate and check its self-signature (as TNG's verifier does)."""
    if not isinstance(der, bytes) or not der or len(der) > MAX_CERT_DER:
        raise CertFormatError("peer certificate is missing or larger than a rats-tls certificate can be")
    try:
        with warnings.catch_warnings():
            # e.g. a non-positive serial: cryptography warns today and will refuse later; refuse now
            warnings.simplefilter("error", CryptographyDeprecationWarning)
            cert = x509.load_der_x509_certificate(der)
        public = cert.public_key()
        ext = cert.extensions.get_extension_for_oid(EVIDENCE_OID)
    except x509.ExtensionNotFound:
        raise CertFormatError("peer certificate has no rats-tls evidence extension 2.23.133.5.4.9; the peer "
                              "is not an attesting TNG egress") from None
    except Exception:  # cryptography raises ValueError and friends for malformed DER
        raise CertFormatError("peer certificate is not valid DER X.509") from None
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise CertFormatError("peer certificate key is not an EC key (rats-tls uses P-256)")
    try:
        algorithm = cert.signature_hash_algorithm
        if algorithm is None:
            raise InvalidSignature
        public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
    except (InvalidSignature, UnsupportedAlgorithm, ValueError, TypeError):
        raise CertFormatError("peer certificate self-signature does not verify") from None
    value = ext.value
    if not isinstance(value, x509.UnrecognizedExtension):
        raise CertFormatError("rats-tls evidence extension could not be read")
    record, claims_buffer = decode_extension_parts(value.value)
    return AttestedCertificate(spki=spki_der(public), record=record, claims_buffer=claims_buffer)


def check_binding(cert: AttestedCertificate) -> dict[str, Any]:
    """Check locally that the evidence's runtime data claims this certificate's key.

    The AS later proves the report data equals the hash of this runtime data; together they bind
    the verdict to the TLS key. Returns the runtime-data object (the claims the token must carry).
    """
    if cert.claims_buffer:
        raise CertFormatError("rats-tls certificate uses the TNG <= 2.2.4 claims buffer (format A); this "
                              "listener expects format B (TNG >= 2.2.5)", hint="set \"compat\": \"2.2.4\" on "
                              "this entry to talk to a TNG <= 2.2.4 peer")
    claims = cert.record.runtime_data_object()
    expected = binding_claims(cert.spki)
    for key, value in expected.items():
        if claims.get(key) != value:
            raise CertFormatError("rats-tls key binding mismatch: the evidence's runtime data does not name "
                                  "this certificate's public key (pubkey-hash differs)")
    return claims
