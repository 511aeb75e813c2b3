"""Offline checks of a parsed TDX quote's internal signatures — no Intel collateral.

What this proves: the quote body (header, TD report body) was signed by the attestation key in the
quote; that key is bound to the quoting enclave (QE report REPORTDATA[:32] = SHA-256(attestation
key || QE authentication data)); the QE report was signed by the PCK leaf certificate's key; and
each certificate of the embedded PCK chain is signed by the next one. With ``trusted_roots`` the
chain must also end in one of those roots (e.g. Intel's SGX Root CA, pinned by the caller).

What this does *not* prove: it never contacts Intel PCS/PCCS, so there is no TCB status, no
revocation (CRL) check, no QE identity check and no TCB-info comparison. A real Trustee runs
Intel's QVL for that; the stand-in verifier using this module says so in its claims. Never treat
a pass here as "the platform is up to date".
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation_agent.tdx.errors import QuoteVerificationError
from attestation_agent.tdx.quote import Quote

MAX_PCK_CHAIN_CERTS = 8


@dataclass(frozen=True)
class QuoteVerification:
    """Facts established by :func:`verify_quote` (all offline)."""

    pck_chain: tuple[x509.Certificate, ...]
    root_subject: str
    leaf_subject: str
    root_trusted: bool


def p256_public_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    """The attestation key is raw x||y (64 bytes); prefix 0x04 for an uncompressed SEC1 point."""
    if len(raw) != 64:
        raise QuoteVerificationError(f"attestation key must be 64 bytes (x||y), got {len(raw)}")
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError:
        raise QuoteVerificationError("the quote's attestation key is not a point on P-256") from None


def raw_signature_to_der(raw: bytes) -> bytes:
    if len(raw) != 64:
        raise QuoteVerificationError(f"ECDSA P-256 signature must be 64 bytes (r||s), got {len(raw)}")
    return encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))


def _verify_ecdsa(key: ec.EllipticCurvePublicKey, raw_sig: bytes, message: bytes, what: str) -> None:
    try:
        key.verify(raw_signature_to_der(raw_sig), message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise QuoteVerificationError(f"{what} does not verify",
                                     hint="the quote was modified after signing or is not genuine") from None


def verify_quote_signature(quote: Quote) -> None:
    """ECDSA P-256/SHA-256 signature of header||body by the attestation key inside the quote."""
    key = p256_public_key(quote.signature.attestation_key)
    _verify_ecdsa(key, quote.signature.signature, quote.signed_bytes(), "TDX quote signature (attestation key)")


def qe_report_data_binding(attestation_key: bytes, qe_auth_data: bytes) -> bytes:
    """Expected QE REPORTDATA: SHA-256(attestation key || QE auth data) then 32 zero bytes."""
    return hashlib.sha256(attestation_key + qe_auth_data).digest() + bytes(32)


def verify_attestation_key_binding(quote: Quote) -> None:
    sig = quote.signature
    expected = qe_report_data_binding(sig.attestation_key, sig.qe_auth_data)
    if not hmac.compare_digest(sig.qe_report.report_data[:32], expected[:32]):
        raise QuoteVerificationError("QE report does not bind the attestation key: REPORTDATA[:32] != "
                                     "SHA-256(attestation key || QE auth data)",
                                     hint="the attestation key was swapped; the quote is not genuine")


def parse_pck_chain(pem: bytes) -> tuple[x509.Certificate, ...]:
    """The PEM chain embedded in the quote (leaf first); trailing NULs are tolerated."""
    text = pem.rstrip(b"\0")
    try:
        certs = tuple(x509.load_pem_x509_certificates(text))
    except (ValueError, x509.InvalidVersion) as exc:
        raise QuoteVerificationError(f"PCK certificate chain in the quote is not valid PEM: {exc}") from None
    if not certs:
        raise QuoteVerificationError("PCK certificate chain in the quote is empty")
    if len(certs) > MAX_PCK_CHAIN_CERTS:
        raise QuoteVerificationError(f"PCK certificate chain has {len(certs)} certificates; at most "
                                     f"{MAX_PCK_CHAIN_CERTS} are accepted")
    for position, cert in enumerate(certs):
        # cryptography parses fields lazily; touch every one used later so a malformed certificate
        # fails here, once, with a clear error instead of deep inside a signature check.
        try:
            cert.subject.rfc4514_string()
            cert.issuer.rfc4514_string()
            cert.public_key()
            cert.signature_hash_algorithm  # noqa: B018
            cert.extensions  # noqa: B018
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise QuoteVerificationError(f"PCK certificate {position} in the quote is malformed: "
                                         f"{type(exc).__name__}") from None
    return certs


def verify_pck_chain_links(certs: Sequence[x509.Certificate]) -> None:
    """Each certificate is signed by the next; the last is self-signed. Validity dates are not
    checked (the fixtures are historical and collateral freshness is Intel QVL's job)."""
    for child, parent in itertools.pairwise(certs):
        try:
            child.verify_directly_issued_by(parent)
        except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise QuoteVerificationError(
                f"PCK chain link {child.subject.rfc4514_string()!r} is not signed by "
                f"{parent.subject.rfc4514_string()!r}: {type(exc).__name__}") from None
    root = certs[-1]
    try:
        root.verify_directly_issued_by(root)
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm):
        raise QuoteVerificationError(f"PCK chain root {root.subject.rfc4514_string()!r} is not self-signed") from None


def verify_qe_report_signature(quote: Quote, leaf: x509.Certificate) -> None:
    try:
        key = leaf.public_key()
    except (ValueError, TypeError):
        raise QuoteVerificationError("PCK leaf certificate has an unreadable public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise QuoteVerificationError("PCK leaf certificate key is not ECDSA P-256")
    _verify_ecdsa(key, quote.signature.qe_report_signature, quote.signature.qe_report.raw,
                  "QE report signature (PCK leaf key)")


def _spki(cert: x509.Certificate) -> bytes:
    try:
        key = cert.public_key()
    except (ValueError, TypeError):
        raise QuoteVerificationError(f"certificate {cert.subject.rfc4514_string()!r} has an unreadable key") from None
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def verify_quote(quote: Quote, *, trusted_roots: Sequence[x509.Certificate] | None = None) -> QuoteVerification:
    """All offline checks (see the module docstring for what is and is not covered)."""
    verify_quote_signature(quote)
    verify_attestation_key_binding(quote)
    chain = parse_pck_chain(quote.signature.pck_cert_data)
    verify_qe_report_signature(quote, chain[0])
    verify_pck_chain_links(chain)
    root = chain[-1]
    trusted = False
    if trusted_roots is not None:
        trusted = any(hmac.compare_digest(_spki(root), _spki(r)) for r in trusted_roots)
        if not trusted:
            raise QuoteVerificationError(f"PCK chain root {root.subject.rfc4514_string()!r} is not a trusted root",
                                         hint="pin the Intel SGX Root CA (or the test CA in tests)")
    return QuoteVerification(chain, root.subject.rfc4514_string(), chain[0].subject.rfc4514_string(), trusted)
