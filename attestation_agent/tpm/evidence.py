"""The ``tpm`` evidence JSON of openanolis Trustee 1.5.2 (``deps/verifier/src/tpm/mod.rs``).

Shape (Trustiflux 1.3.1 ``attester/src/tpm``)::

    {"ek_cert": "<PEM>" | null,
     "ak_pubkey": "<PEM SubjectPublicKeyInfo>",
     "quote": {"SHA1": {"attest_body": b64, "attest_sig": b64, "pcrs": [hex, ...]},
               "SHA256": {...}},
     "eventlog": "<b64 binary_bios_measurements>" | null,
     "aa_eventlog": "<AA event log text>" | null}

``attest_body`` is the marshalled TPMS_ATTEST (no TPM2B size prefix), ``attest_sig`` the raw
RSASSA signature bytes (not a TPMT_SIGNATURE), base64 is standard with padding. This is *not*
the upstream CoCo shape (``ak_public``/``tpm_quote``); the two are not interchangeable.
Every field is bounded so hostile evidence fails here with a clear message.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from attestation_agent.kbs.encoding import b64std_decode, b64std_encode
from attestation_agent.tpm.attest import MAX_ATTEST_SIZE
from attestation_agent.tpm.errors import TpmFormatError

MAX_QUOTES = 8
MAX_PCRS = 32
MAX_SIGNATURE = 1024  # RSA-8192 would be 1024 bytes
MAX_PEM = 16 * 1024
MAX_EVENTLOG = 8 * 1024 * 1024  # firmware logs are typically 10-200 KiB
MAX_AA_EVENTLOG = 1024 * 1024
_HEX_RE = re.compile(r"^(?:[0-9a-fA-F]{2})+$")
_BANK_KEY_RE = re.compile(r"^[A-Za-z0-9_]{1,16}$")


@dataclass(frozen=True)
class TpmQuote:
    """One bank's quote: the signed body, its signature and the PCR values it covers."""

    attest_body: bytes
    attest_sig: bytes
    pcrs: tuple[bytes, ...]


@dataclass(frozen=True)
class TpmEvidence:
    ak_pubkey: str
    quotes: Mapping[str, TpmQuote]
    ek_cert: str | None = None
    eventlog: bytes | None = None
    aa_eventlog: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def encode_evidence(evidence: TpmEvidence) -> dict[str, Any]:
    """The evidence JSON object, keys in Trustiflux's order."""
    return {
        "ek_cert": evidence.ek_cert,
        "ak_pubkey": evidence.ak_pubkey,
        "quote": {
            name: {"attest_body": b64std_encode(q.attest_body), "attest_sig": b64std_encode(q.attest_sig),
                   "pcrs": [value.hex() for value in q.pcrs]}
            for name, q in evidence.quotes.items()
        },
        "eventlog": None if evidence.eventlog is None else b64std_encode(evidence.eventlog),
        "aa_eventlog": evidence.aa_eventlog,
    }


def _b64(value: Any, where: str, limit: int) -> bytes:
    if not isinstance(value, str):
        raise TpmFormatError(f"TPM evidence {where} must be a base64 string")
    if len(value) > (limit * 4) // 3 + 4:
        raise TpmFormatError(f"TPM evidence {where} is longer than {limit} bytes")
    try:
        return b64std_decode(value)
    except ValueError:
        raise TpmFormatError(f"TPM evidence {where} is not standard base64 (with padding)") from None


def _optional_str(obj: Mapping[str, Any], key: str, limit: int) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise TpmFormatError(f"TPM evidence '{key}' must be a string or null")
    if len(value) > limit:
        raise TpmFormatError(f"TPM evidence '{key}' is longer than {limit} characters")
    return value


def _quote(name: str, value: Any) -> TpmQuote:
    where = f"quote.{name}"
    if not isinstance(value, Mapping):
        raise TpmFormatError(f"TPM evidence {where} must be an object with attest_body, attest_sig and pcrs")
    body = _b64(value.get("attest_body"), f"{where}.attest_body", MAX_ATTEST_SIZE)
    sig = _b64(value.get("attest_sig"), f"{where}.attest_sig", MAX_SIGNATURE)
    pcrs = value.get("pcrs")
    if not isinstance(pcrs, list) or len(pcrs) > MAX_PCRS:
        raise TpmFormatError(f"TPM evidence {where}.pcrs must be a list of at most {MAX_PCRS} hex strings")
    values = []
    for i, pcr in enumerate(pcrs):
        if not isinstance(pcr, str) or len(pcr) > 128 or not _HEX_RE.match(pcr):
            raise TpmFormatError(f"TPM evidence {where}.pcrs[{i}] is not a hex digest")
        values.append(bytes.fromhex(pcr))
    return TpmQuote(body, sig, tuple(values))


def decode_evidence(obj: Any) -> TpmEvidence:
    """Validate and decode evidence JSON (already parsed) into :class:`TpmEvidence`."""
    if not isinstance(obj, Mapping):
        raise TpmFormatError("TPM evidence must be a JSON object",
                             hint="expected openanolis Trustee 1.5 format {ek_cert, ak_pubkey, quote, ...}")
    ak = obj.get("ak_pubkey")
    if not isinstance(ak, str) or not ak.strip():
        if "ak_public" in obj or "tpm_quote" in obj:
            raise TpmFormatError("TPM evidence is in the upstream CoCo format (ak_public/tpm_quote)",
                                 hint="Trustee 1.5 expects the openanolis format with ak_pubkey and quote")
        raise TpmFormatError("TPM evidence 'ak_pubkey' (PEM public key) is missing")
    if len(ak) > MAX_PEM:
        raise TpmFormatError(f"TPM evidence 'ak_pubkey' is longer than {MAX_PEM} characters")
    quotes = obj.get("quote")
    if not isinstance(quotes, Mapping):
        raise TpmFormatError("TPM evidence 'quote' must be an object mapping a PCR bank to its quote")
    if len(quotes) > MAX_QUOTES:
        raise TpmFormatError(f"TPM evidence carries {len(quotes)} quotes; at most {MAX_QUOTES} banks exist")
    parsed = {}
    for name, value in quotes.items():
        if not isinstance(name, str) or not _BANK_KEY_RE.match(name):
            raise TpmFormatError("TPM evidence quote keys must be PCR bank names such as SHA256")
        parsed[name] = _quote(name, value)
    eventlog = obj.get("eventlog")
    return TpmEvidence(
        ak_pubkey=ak,
        quotes=parsed,
        ek_cert=_optional_str(obj, "ek_cert", MAX_PEM),
        eventlog=None if eventlog is None else _b64(eventlog, "eventlog", MAX_EVENTLOG),
        aa_eventlog=_optional_str(obj, "aa_eventlog", MAX_AA_EVENTLOG),
        extra={k: v for k, v in obj.items()
               if k not in ("ek_cert", "ak_pubkey", "quote", "eventlog", "aa_eventlog")},
    )
