"""Local verification of one GPU's evidence: chain, FWID, signature, nonce (sans-IO, offline).

This is the "cryptographic half" of NVIDIA's verifiers — what Trustee's local NVIDIA verifier does
and what works without network access: no OCSP and no RIM (golden measurement) lookup, which stay
with the remote verifier and its policy. The agent runs it before sending evidence (a GPU whose
report does not verify is refused, never sent), and the Trustee stand-in runs the same code.

Order of checks, chosen so each failure has one specific cause: parse the report
(:class:`SpdmError`) → validate the chain to a trusted root at the given time
(:class:`CertChainError` / :class:`CertExpiredError`) → FWID of the leaf equals the FWID inside the
report (:class:`FwidMismatchError`; presence is checked before the signature, equality after it,
so a report signed by someone else reads as a bad signature) → P-384 signature over request ‖
response-before-signature with the leaf key (:class:`SignatureError`) → the request nonce equals
the expected 32-byte nonce (:class:`NonceMismatchError`). The nonce is compared last because it
is only meaningful once the bytes that carry it are known to come from the GPU.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from attestation_agent.nvidia import chain as chains
from attestation_agent.nvidia.errors import FwidMismatchError, NonceMismatchError, SignatureError
from attestation_agent.nvidia.spdm import NONCE_SIZE, SIGNATURE_SIZE, SpdmReport, parse_report


@dataclass(frozen=True)
class VerifiedGpuReport:
    """A report whose signature, chain and nonce were checked."""

    report: SpdmReport
    chain: chains.VerifiedChain
    fwid: bytes | None

    def measurement_digest(self) -> str:
        """SHA-384 over all measurement values in ascending index order (hex).

        Trustee 1.5 emits the same claim but iterates a Rust ``HashMap``, so its value is not
        reproducible; a fixed index order makes ours comparable across runs and verifiers.
        """
        digest = hashlib.sha384()
        for _, value in sorted(self.report.response.measurements().items()):
            digest.update(value)
        return digest.hexdigest()

    def claims(self) -> dict[str, Any]:
        """Public facts about the GPU taken from the *signed* report (never from unsigned fields)."""
        opaque = self.report.response.opaque
        return {
            "measurement": self.measurement_digest(),
            "measurements": {str(i): v.hex() for i, v in sorted(self.report.response.measurements().items())},
            "driver_version": opaque.driver_version,
            "vbios_version": opaque.vbios_version,
            "project": opaque.text("PROJECT"),
            "project_sku": opaque.text("PROJECT_SKU"),
            "chip_sku": opaque.text("CHIP_SKU"),
            "fwid": self.fwid.hex() if self.fwid else None,
            "feature_flag": opaque.feature_flag,
            "protected_pcie": opaque.protected_pcie,
            "nonce": self.report.request.nonce.hex(),
            "leaf_certificate": chains.describe(self.chain.leaf).strip("'"),
        }


def verify_signature(report: SpdmReport, leaf: x509.Certificate) -> None:
    """Check the raw P-384 ``r ‖ s`` signature over the signed span with the leaf's public key."""
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp384r1":
        raise SignatureError(f"leaf certificate {chains.describe(leaf)} does not hold a P-384 key; "
                             "NVIDIA reports are signed with ECDSA P-384")
    signature = report.signature
    if len(signature) != SIGNATURE_SIZE:
        raise SignatureError(f"report signature is {len(signature)} bytes, expected {SIGNATURE_SIZE}")
    half = SIGNATURE_SIZE // 2
    der = encode_dss_signature(int.from_bytes(signature[:half], "big"), int.from_bytes(signature[half:], "big"))
    try:
        key.verify(der, report.signed, ec.ECDSA(hashes.SHA384()))
    except InvalidSignature:
        raise SignatureError(
            f"GPU report signature does not verify with the key of {chains.describe(leaf)}",
            hint="the report was altered after the GPU signed it, or the certificate chain belongs to another GPU",
        ) from None


def leaf_fwid(report: SpdmReport, leaf: x509.Certificate) -> bytes | None:
    """The leaf's FWID; required when the report carries one (the leaf must be the FMC certificate)."""
    cert_fwid = chains.fwid_from_cert(leaf)
    if cert_fwid is None and report.response.opaque.fwid is not None:
        raise FwidMismatchError(
            f"FWID extension not found in the signing certificate {chains.describe(leaf)}",
            hint="the first certificate of the chain must be the GPU's attestation (FMC) certificate",
        )
    return cert_fwid


def check_fwid(report: SpdmReport, cert_fwid: bytes | None) -> bytes | None:
    """The leaf must certify the firmware that produced the report (Hopper/Blackwell FWID)."""
    report_fwid = report.response.opaque.fwid
    if report_fwid is None or cert_fwid is None:
        # Older drivers do not put FWID in the opaque data; the signature still binds the leaf.
        return cert_fwid
    if not hmac.compare_digest(cert_fwid, report_fwid):
        raise FwidMismatchError(f"FWID mismatch: certificate {cert_fwid.hex()}, report {report_fwid.hex()}",
                                hint="the certificate chain belongs to another GPU or firmware")
    return report_fwid


def check_nonce(report: SpdmReport, expected_nonce: bytes) -> None:
    if len(expected_nonce) != NONCE_SIZE:
        raise ValueError(f"expected GPU nonce must be {NONCE_SIZE} bytes, got {len(expected_nonce)}")
    if not hmac.compare_digest(report.request.nonce, expected_nonce):
        raise NonceMismatchError(
            f"GPU report nonce {report.request.nonce.hex()} does not match the expected nonce {expected_nonce.hex()}",
            hint="the report is stale or replayed, or it was made for another attestation session",
        )


def verify_report(report: bytes | SpdmReport, cert_chain: bytes | str | Sequence[x509.Certificate], *,
                  expected_nonce: bytes | None, trusted_roots: Sequence[x509.Certificate] | None = None,
                  now: dt.datetime | None = None) -> VerifiedGpuReport:
    """Verify one GPU report; ``expected_nonce=None`` skips only the nonce check (offline inspection).

    ``trusted_roots`` defaults to the NVIDIA Device Identity CA shipped with the package; ``now``
    defaults to the current time (inject a clock to test expiry).
    """
    parsed = report if isinstance(report, SpdmReport) else parse_report(report)
    certs = chains.load_cert_chain(cert_chain) if isinstance(cert_chain, bytes | str) else tuple(cert_chain)
    roots = tuple(trusted_roots) if trusted_roots is not None else (chains.nvidia_device_root(),)
    verified_chain = chains.verify_chain(certs, roots, now)
    cert_fwid = leaf_fwid(parsed, verified_chain.leaf)
    verify_signature(parsed, verified_chain.leaf)
    fwid = check_fwid(parsed, cert_fwid)
    if expected_nonce is not None:
        check_nonce(parsed, expected_nonce)
    return VerifiedGpuReport(parsed, verified_chain, fwid)
