"""The checks Trustee 1.5.2's TPM verifier applies to each quote, as pure functions.

Per bank quote (``TpmQuote::{verify_signature, check_pcrs, check_report_data}``):

1. the AK (PEM SPKI) signature over ``attest_body``: RSASSA-PKCS1-v1_5 with SHA-256;
2. ``pcrDigest`` in the quote == SHA-256 of the reported PCR values concatenated in order;
3. qualifying data: the first ``min(len, 32)`` bytes of the expected runtime-data digest must be
   a prefix of ``extraData`` truncated to 32 bytes (the attester pads the digest to 64).

Stricter than Trustee, because the claims name PCRs by bank and index: the quote's single PCR
selection must be for the bank the evidence names, select exactly as many PCRs as are reported,
and every value must have that bank's digest size. The attester runs the same checks on its own
quote before sending it, so a PCR that changed between quote and read is caught locally.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from attestation_agent.tpm import pcr
from attestation_agent.tpm.attest import TpmsAttest, parse_attest
from attestation_agent.tpm.errors import TpmFormatError, TpmVerifyError
from attestation_agent.tpm.evidence import TpmQuote

#: Trustee compares at most this many bytes of the qualifying data
TPM_REPORT_DATA_SIZE = 32


def load_ak_public(pem: str) -> rsa.RSAPublicKey:
    """The AK from its PEM SubjectPublicKeyInfo; only RSA AKs produce the raw RSASSA signature."""
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError, TypeError):
        raise TpmFormatError("TPM evidence 'ak_pubkey' is not a PEM public key (SubjectPublicKeyInfo)") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise TpmFormatError("TPM evidence 'ak_pubkey' is not an RSA key",
                             hint="the attestation key must be RSA with the RSASSA-SHA256 scheme")
    if key.key_size < 2048:
        raise TpmFormatError(f"TPM AK is RSA-{key.key_size}; at least RSA-2048 is required")
    return key


def verify_signature(ak: rsa.RSAPublicKey, attest_body: bytes, attest_sig: bytes, bank_name: str) -> None:
    try:
        ak.verify(attest_sig, attest_body, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        raise TpmVerifyError(f"[{bank_name}] TPM quote signature does not verify with the AK",
                             hint="the quote body or signature was altered, or another key signed it") from None


def check_pcrs(attest: TpmsAttest, bank_name: str, values: Sequence[bytes]) -> tuple[int, ...]:
    """Check the PCR values against the quote; return the PCR indices they belong to."""
    if len(attest.pcr_select) != 1:
        raise TpmVerifyError(f"[{bank_name}] TPM quote selects {len(attest.pcr_select)} PCR banks; expected 1")
    selection = attest.pcr_select[0]
    known = pcr.bank_by_alg(selection.alg_id)
    if known is None or known.name != bank_name.upper():
        raise TpmVerifyError(f"[{bank_name}] TPM quote covers PCR bank 0x{selection.alg_id:04x}, "
                             f"not the {bank_name} bank the evidence labels it with")
    indices = pcr.selected_indices(selection.select)
    if len(indices) != len(values):
        raise TpmVerifyError(f"[{bank_name}] TPM quote selects {len(indices)} PCRs but the evidence "
                             f"reports {len(values)} values")
    for index, value in zip(indices, values, strict=True):
        if len(value) != known.digest_size:
            raise TpmVerifyError(f"[{bank_name}] PCR{index} is {len(value)} bytes; "
                                 f"{bank_name} values are {known.digest_size}")
    computed = pcr.pcr_digest(values, "sha256")
    if not hmac.compare_digest(computed, attest.pcr_digest):
        raise TpmVerifyError(f"[{bank_name}] Digest in Quote ({attest.pcr_digest.hex()}) is unmatched to "
                             f"Digest of PCR ({computed.hex()})",
                             hint="a reported PCR value differs from what the TPM quoted")
    return indices


def check_report_data(attest: TpmsAttest, expected: bytes, bank_name: str) -> None:
    want = expected[:TPM_REPORT_DATA_SIZE]
    have = attest.extra_data[:TPM_REPORT_DATA_SIZE]
    if len(have) < len(want) or not hmac.compare_digest(have[:len(want)], want):
        raise TpmVerifyError(f"[{bank_name}] Expected REPORT_DATA is different from that in TPM Quote",
                             hint="the quote was not made for this KBS challenge (stale or replayed evidence)")


def verify_quote(ak: rsa.RSAPublicKey, bank_name: str, quote: TpmQuote,
                 expected_report_data: bytes | None) -> tuple[TpmsAttest, tuple[int, ...]]:
    """All per-quote checks; returns the parsed body and the PCR indices of ``quote.pcrs``."""
    verify_signature(ak, quote.attest_body, quote.attest_sig, bank_name)
    attest = parse_attest(quote.attest_body)
    indices = check_pcrs(attest, bank_name, quote.pcrs)
    if expected_report_data is not None:
        check_report_data(attest, expected_report_data, bank_name)
    return attest, indices
