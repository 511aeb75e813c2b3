"""Trustee's ``tpm`` verifier (openanolis 1.5.2 format) for the stand-in — development and tests only.

Mirrors ``deps/verifier/src/tpm/mod.rs``: for every bank quote, RSASSA-SHA256 signature with the
AK, PCR digest, and the first ≤32 bytes of the runtime-data digest in ``extraData``; see
:mod:`attestation_agent.tpm.verify`. Differences, all stricter: evidence without any quote is
rejected (Trustee's loop would accept it vacuously), the quote must select the bank it is
labelled with, and when ``aa_eventlog`` is present it must replay to the SHA-256 PCR it was
extended into (default 23; Trustee 1.5 only turns it into claims). The firmware ``eventlog`` is
decoded but, as in Trustee ("TODO: Verify integrity of Eventlogs"), not replayed.

As in a real deployment, trust in the AK itself is policy (``ak_pubkey`` claim), not checked here.

Claims: ``quote.signer``, ``quote.clock_info``, ``quote.firmware_version``, ``report_data``
(hex extraData) as Trustee, plus ``pcrs`` ``{bank: {"pcr<N>": hex}}``, ``ak_pubkey``,
``EK_cert_issuer`` when an EK certificate is sent, and ``AA.eventlog.<domain>.<operation>``.
"""

from __future__ import annotations

from typing import Any

from cryptography import x509

from attestation_agent import eventlog
from attestation_agent.eventlog import AaEventLogError
from attestation_agent.tpm.errors import TpmError
from attestation_agent.tpm.evidence import decode_evidence
from attestation_agent.tpm.verify import load_ak_public, verify_quote
from trustee_standin.verifiers.registry import VerificationError, register_verifier

#: SHA-256 PCR the attester extends runtime events into (PCR17 is not extendable at locality 0)
DEFAULT_AAEL_PCR = 23


def _ek_issuer(pem: str) -> dict[str, str]:
    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise VerificationError("TPM evidence 'ek_cert' is not a PEM X.509 certificate") from None
    return {attr.rfc4514_attribute_name: str(attr.value) for attr in cert.issuer}


def make_tpm_verifier(aael_pcr: int = DEFAULT_AAEL_PCR):
    """A ``tpm`` verifier that replays ``aa_eventlog`` against SHA-256 PCR ``aael_pcr``."""

    def verify_tpm(evidence: Any, expected_report_data: bytes | None) -> dict[str, Any]:
        try:
            decoded = decode_evidence(evidence)
            if not decoded.quotes:
                raise VerificationError("TPM evidence carries no quote",
                                        hint="the attester must quote at least the SHA256 PCR bank")
            ak = load_ak_public(decoded.ak_pubkey)
            claims: dict[str, Any] = {"ak_pubkey": decoded.ak_pubkey.strip(), "pcrs": {}}
            for bank_name, quote in decoded.quotes.items():
                attest, indices = verify_quote(ak, bank_name, quote, expected_report_data)
                claims["quote.signer"] = attest.qualified_signer.hex()
                claims["quote.clock_info"] = str(attest.clock_info.clock)
                claims["quote.firmware_version"] = str(attest.firmware_version)
                claims["report_data"] = attest.extra_data.hex()
                claims["pcrs"][bank_name] = {f"pcr{i}": v.hex() for i, v in zip(indices, quote.pcrs, strict=True)}
            if decoded.aa_eventlog is not None:
                log = eventlog.parse_text(decoded.aa_eventlog)
                register = claims["pcrs"].get("SHA256", {}).get(f"pcr{aael_pcr}")
                if log.algorithm != "sha256" or register is None:
                    raise VerificationError(f"TPM aa_eventlog cannot be checked: it needs a sha256 log and PCR"
                                            f"{aael_pcr} in the SHA256 quote")
                if not log.matches(bytes.fromhex(register)):
                    raise VerificationError(f"TPM aa_eventlog does not replay to SHA256 PCR{aael_pcr}",
                                            hint="an event was added, removed or altered after it was extended")
                for event in log.events:
                    claims[f"AA.eventlog.{event.domain}.{event.operation}"] = event.content
            if decoded.ek_cert is not None:
                claims["EK_cert_issuer"] = _ek_issuer(decoded.ek_cert)
            claims["eventlog_present"] = decoded.eventlog is not None
            return claims
        except (TpmError, AaEventLogError) as exc:
            raise VerificationError(exc.message, hint=exc.hint) from None

    return verify_tpm


verify_tpm = make_tpm_verifier()
register_verifier("tpm", verify_tpm)
