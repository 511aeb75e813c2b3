"""NVIDIA attestation certificate chains: loading every encoding in use, and path validation (sans-IO).

Encodings met in practice (all accepted by :func:`load_cert_chain`):

- **PEM concatenation**, leaf first: what NVML's ``attestationCertChain`` holds, and the format of
  the fixture files ``trustee/nvidia/hopper_cert_chain_case*.txt``, ``hopper_coco_certs1.txt``,
  ``nvtrust/samples/hopperCertChain.txt`` and the NVAT ``*CertChain*.txt`` samples.
- **base64 (standard) of that PEM text**: the ``certificate`` field of Trustee's
  ``device_evidence_list`` entries and of NVAT's serialized evidence JSON.
- **DER concatenation**: some tools dump NVML's raw buffers; accepted for completeness.

Validation walks the chain leaf → root: each certificate must name the next one as issuer and carry
its signature, every issuer must be a CA (basicConstraints, path length, keyCertSign), every
certificate must be valid at the verification time (an injectable clock), and the chain must end at
a trusted root. Like nvtrust, the device-supplied root is never trusted as is: it must be
byte-identical to a configured root, and the configured copy is the anchor. The NVIDIA roots are
valid until 9999, so expiry can only be met by intermediates or by a clock outside 2020..9999.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding

from attestation_agent.nvidia.errors import CertChainError, CertExpiredError, FwidMismatchError

MAX_CHAIN_BYTES = 64 * 1024  # NVML's buffer is 0x1400 bytes; base64 and PEM armour fit well inside
MAX_CERTS = 10
FWID_SIZE = 48
#: TCG DICE TcbInfo (Hopper: FWID = last 48 bytes of the extension) and its alias (Blackwell)
FWID_OIDS = (x509.ObjectIdentifier("2.23.133.5.4.1"), x509.ObjectIdentifier("2.23.133.5.4.1.1"))
_PEM_MARK = b"-----BEGIN CERTIFICATE-----"
#: cryptography raises many unrelated types for malformed DER (ValueError, InvalidVersion,
#: DuplicateExtension, UnsupportedAlgorithm, ...); at these decode points any of them means "bad input"
_DECODE_ERRORS = (Exception,)
#: DER of ``OID 2.16.840.1.101.3.4.2.2 (sha384)`` followed by the header of a 48-byte OCTET STRING
_SHA384_FWID = bytes.fromhex("0609608648016503040202") + b"\x04\x30"


def describe(cert: x509.Certificate) -> str:
    """Short, public identification of a certificate for error messages."""
    try:
        cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        name = str(cn[0].value) if cn else cert.subject.rfc4514_string()
    except ValueError:
        name = "<unparseable subject>"
    return f"'{name}'"


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def _split_der(data: bytes) -> list[bytes]:
    """Split concatenated DER SEQUENCEs using their own length fields (bounded, definite lengths)."""
    items: list[bytes] = []
    pos = 0
    while pos < len(data):
        if data[pos] != 0x30 or pos + 2 > len(data):
            raise CertChainError(f"certificate chain: byte {pos} does not start a DER certificate")
        first = data[pos + 1]
        if first < 0x80:
            length, header = first, 2
        else:
            count = first & 0x7F
            if count == 0 or count > 3 or pos + 2 + count > len(data):
                raise CertChainError(f"certificate chain: bad DER length at byte {pos}")
            length, header = int.from_bytes(data[pos + 2:pos + 2 + count], "big"), 2 + count
        end = pos + header + length
        if end > len(data):
            raise CertChainError(f"certificate chain: DER certificate at byte {pos} is truncated")
        items.append(data[pos:end])
        pos = end
        if len(items) > MAX_CERTS:
            break
    return items


def load_cert_chain(data: bytes | str) -> tuple[x509.Certificate, ...]:
    """Decode a certificate chain (leaf first) from PEM, base64-of-PEM or DER. Raises CertChainError."""
    if isinstance(data, str):
        data = data.encode("utf-8", errors="replace")
    if not isinstance(data, bytes | bytearray):
        raise CertChainError("certificate chain must be bytes or text")
    data = bytes(data)
    if len(data) > MAX_CHAIN_BYTES:
        raise CertChainError(f"certificate chain is {len(data)} bytes; at most {MAX_CHAIN_BYTES} are accepted")
    if data[:1] == b"\x30":  # DER: never strip, its last bytes may look like whitespace
        return _load_der(data)
    stripped = data.strip(b" \t\r\n\0")
    if not stripped:
        raise CertChainError("certificate chain is empty", hint="NVML returned no attestation certificate chain")
    if stripped.startswith(b"-----BEGIN"):
        return _load_pem(stripped)
    try:
        decoded = base64.b64decode(b"".join(stripped.split()), validate=True)
    except (binascii.Error, ValueError):
        raise CertChainError("certificate chain is neither PEM, DER nor base64 of either",
                             hint="send the NVML attestationCertChain PEM text, base64-encoded") from None
    if decoded[:1] == b"\x30":
        return _load_der(decoded)
    decoded = decoded.strip(b" \t\r\n\0")
    if decoded.startswith(b"-----BEGIN"):
        return _load_pem(decoded)
    raise CertChainError("certificate chain is base64 but does not decode to PEM or DER certificates")


def _check_count(certs: Sequence[x509.Certificate]) -> tuple[x509.Certificate, ...]:
    if not certs:
        raise CertChainError("certificate chain contains no certificate")
    if len(certs) > MAX_CERTS:
        raise CertChainError(f"certificate chain has more than {MAX_CERTS} certificates")
    for n, cert in enumerate(certs):
        _parse_fully(cert, n)
    return tuple(certs)


def _parse_fully(cert: x509.Certificate, n: int) -> None:
    """cryptography decodes fields lazily; decode every field used later so errors surface here."""
    try:
        _ = (cert.subject, cert.issuer, cert.not_valid_before_utc, cert.not_valid_after_utc,
             cert.signature_hash_algorithm, list(cert.extensions), cert.public_key())
    except _DECODE_ERRORS as exc:
        raise CertChainError(f"certificate {n} of the chain is malformed: {_short(exc)}") from None


def _load_pem(data: bytes) -> tuple[x509.Certificate, ...]:
    if data.count(_PEM_MARK) > MAX_CERTS:
        raise CertChainError(f"certificate chain has more than {MAX_CERTS} certificates")
    try:
        certs = x509.load_pem_x509_certificates(data)
    except _DECODE_ERRORS as exc:
        raise CertChainError(f"certificate chain PEM does not parse: {_short(exc)}") from None
    if len(certs) != data.count(b"-----BEGIN"):
        raise CertChainError("certificate chain PEM contains blocks that are not certificates")
    return _check_count(certs)


def _load_der(data: bytes) -> tuple[x509.Certificate, ...]:
    certs = []
    for n, item in enumerate(_split_der(data)):
        try:
            certs.append(x509.load_der_x509_certificate(item))
        except _DECODE_ERRORS as exc:
            raise CertChainError(f"certificate {n} of the DER chain does not parse: {_short(exc)}") from None
    return _check_count(certs)


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__


def load_trusted_roots(data: bytes | str) -> tuple[x509.Certificate, ...]:
    """Load trust anchors (PEM/DER/base64); each must be a self-signed CA."""
    roots = load_cert_chain(data)
    for root in roots:
        try:
            root.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise CertChainError(f"trusted root {describe(root)} is not a self-signed certificate") from None
    return roots


def nvidia_device_root() -> x509.Certificate:
    """The NVIDIA Device Identity CA shipped with this package (see certs/PROVENANCE.md)."""
    pem = resources.files("attestation_agent.nvidia").joinpath("certs/nvidia_device_root.pem").read_bytes()
    return load_trusted_roots(pem)[0]


def fwid_from_cert(cert: x509.Certificate) -> bytes | None:
    """The FWID a DICE-style NVIDIA leaf certificate carries, or None if it has no such extension.

    The extension is a TCG DICE ``TcbInfo`` whose ``fwids`` list holds ``SEQUENCE {hashAlg OID,
    digest OCTET STRING}`` entries; the FWID is the first SHA-384 entry. On Hopper it is the last
    48 bytes of the extension (what Trustee reads); on Blackwell (alias OID ...4.1.1) more fields
    follow it, so the entry is located by its encoding instead of by position.
    """
    for oid in FWID_OIDS:
        try:
            ext = cert.extensions.get_extension_for_oid(oid)
        except x509.ExtensionNotFound:
            continue
        except ValueError:
            raise FwidMismatchError(f"leaf certificate {describe(cert)} has malformed extensions") from None
        raw = bytes(getattr(ext.value, "value", b""))
        at = raw.find(_SHA384_FWID)
        if at < 0 or at + len(_SHA384_FWID) + FWID_SIZE > len(raw):
            raise FwidMismatchError(f"FWID extension {oid.dotted_string} of {describe(cert)} holds no SHA-384 FWID")
        start = at + len(_SHA384_FWID)
        return raw[start:start + FWID_SIZE]
    return None


@dataclass(frozen=True)
class VerifiedChain:
    """A chain that validated: ``certs`` leaf first, ending with the *trusted* root copy."""

    certs: tuple[x509.Certificate, ...]

    @property
    def leaf(self) -> x509.Certificate:
        return self.certs[0]

    @property
    def root(self) -> x509.Certificate:
        return self.certs[-1]


def _basic_constraints(cert: x509.Certificate) -> x509.BasicConstraints | None:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return None
    except ValueError:
        raise CertChainError(f"certificate {describe(cert)} has malformed extensions") from None


def _can_sign_certs(cert: x509.Certificate) -> bool:
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    except ValueError:
        raise CertChainError(f"certificate {describe(cert)} has malformed extensions") from None
    return usage.key_cert_sign


def verify_chain(certs: Sequence[x509.Certificate], trusted_roots: Sequence[x509.Certificate],
                 now: dt.datetime | None = None) -> VerifiedChain:
    """Validate ``certs`` (leaf first, device root last) against ``trusted_roots`` at time ``now``."""
    if len(certs) < 2:
        raise CertChainError(
            f"certificate chain has {len(certs)} certificate(s); it needs at least the signing (leaf) "
            "certificate and the root CA",
            hint="pass NVML's full attestationCertChain, not a single certificate",
        )
    if not trusted_roots:
        raise CertChainError("no trusted NVIDIA root CA is configured")
    when = now or dt.datetime.now(dt.UTC)
    if when.tzinfo is None:
        raise ValueError("verification time must be timezone-aware")
    device_root = certs[-1]
    anchor = next((root for root in trusted_roots if root == device_root), None)
    if anchor is None:
        raise CertChainError(
            f"the chain ends at {describe(device_root)} (sha256 {fingerprint(device_root)[:16]}…), "
            "which is not a trusted NVIDIA root CA",
            hint="the GPU's certificates were not issued by NVIDIA's Device Identity CA (or the trusted root is "
                 "configured wrongly)",
        )
    chain = (*certs[:-1], anchor)
    for position in range(len(chain) - 1):
        child, issuer = chain[position], chain[position + 1]
        if child.issuer != issuer.subject:
            raise CertChainError(
                f"broken certificate chain: certificate {position} {describe(child)} was issued by "
                f"'{child.issuer.rfc4514_string()}', but the next certificate is {describe(issuer)}",
                hint="an intermediate CA is missing or the chain is out of order",
            )
        try:
            child.verify_directly_issued_by(issuer)
        except InvalidSignature:
            raise CertChainError(
                f"certificate chain signature check failed: {describe(child)} is not signed by {describe(issuer)}"
            ) from None
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
            raise CertChainError(f"cannot verify {describe(child)} with {describe(issuer)}: {_short(exc)}") from None
        constraints = _basic_constraints(issuer)
        if constraints is None or not constraints.ca or not _can_sign_certs(issuer):
            raise CertChainError(f"certificate {describe(issuer)} issued {describe(child)} but is not a CA")
        below = position  # CA certificates between this issuer and the leaf, excluding the leaf itself
        if constraints.path_length is not None and below - 1 > constraints.path_length:
            raise CertChainError(f"CA {describe(issuer)} allows a path length of {constraints.path_length}, "
                                 f"but {below - 1} CA certificate(s) follow it")
    for cert in chain:
        if when < cert.not_valid_before_utc:
            raise CertExpiredError(
                f"certificate {describe(cert)} is not valid before {cert.not_valid_before_utc.isoformat()} "
                f"(verification time {when.isoformat()})",
                hint="check the system clock",
            )
        if when > cert.not_valid_after_utc:
            raise CertExpiredError(
                f"certificate {describe(cert)} expired at {cert.not_valid_after_utc.isoformat()} "
                f"(verification time {when.isoformat()})",
                hint="the GPU's attestation certificates are expired; check the clock or the GPU firmware",
            )
    return VerifiedChain(tuple(chain))
