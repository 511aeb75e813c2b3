"""TPM pure formats against trustee's real TPM evidence fixture, plus AAEL and PCR vectors.

The fixture (``trustee/tpm/tpm_evidence.json``, upstream CoCo shape) was produced by a real TPM:
its ``message`` is a marshalled TPMS_ATTEST and its ``signature`` a marshalled TPMT_SIGNATURE.
The expected values are derived independently in these tests: the PCR digest with hashlib over
the fixture's own ``pcrs`` list, the signature with ``cryptography`` after unpacking the
TPMT_SIGNATURE header by hand.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct

import pytest
from cryptography.hazmat.primitives import serialization

from attestation_agent import eventlog
from attestation_agent.eventlog import AaEventLogError, InvalidAaEventError
from attestation_agent.tpm import pcr
from attestation_agent.tpm.attest import (
    TPM_GENERATED_VALUE,
    TPM_ST_ATTEST_QUOTE,
    marshal_attest,
    parse_attest,
)
from attestation_agent.tpm.errors import TpmFormatError, TpmVerifyError
from attestation_agent.tpm.evidence import TpmEvidence, TpmQuote, decode_evidence, encode_evidence
from attestation_agent.tpm.verify import check_report_data, load_ak_public, verify_quote
from tests.conftest import UPSTREAM
from trustee_standin.verifiers import VerificationError
from trustee_standin.verifiers.tpm import verify_tpm

FIXTURE = UPSTREAM / "trustee" / "tpm" / "tpm_evidence.json"


@pytest.fixture(scope="module")
def upstream() -> dict:
    return json.loads(FIXTURE.read_text())


def raw_signature(marshalled: bytes) -> bytes:
    """Unpack TPMT_SIGNATURE {sigAlg, hash, TPM2B sig} by hand (independent of our parser)."""
    sig_alg, hash_alg, size = struct.unpack(">HHH", marshalled[:6])
    assert (sig_alg, hash_alg) == (0x0014, 0x000B)  # TPM_ALG_RSASSA, TPM_ALG_SHA256
    return marshalled[6:6 + size]


def as_openanolis(upstream: dict) -> dict:
    """The same real quote re-packed into Trustee 1.5.2's evidence shape."""
    der = base64.b64decode(upstream["ak_public"])
    pem = serialization.load_der_public_key(der).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    sig = raw_signature(base64.b64decode(upstream["tpm_quote"]["signature"]))
    return {"ek_cert": None, "ak_pubkey": pem,
            "quote": {"SHA256": {"attest_body": upstream["tpm_quote"]["message"],
                                 "attest_sig": base64.b64encode(sig).decode(),
                                 "pcrs": upstream["tpm_quote"]["pcrs"]}},
            "eventlog": None, "aa_eventlog": None}


def test_fixture_quote_parses_and_digest_matches(upstream):
    body = base64.b64decode(upstream["tpm_quote"]["message"])
    attest = parse_attest(body)
    assert attest.magic == TPM_GENERATED_VALUE and attest.type == TPM_ST_ATTEST_QUOTE
    assert len(attest.extra_data) == 64  # older attester: 64-byte qualifying data (SOURCES.md)
    assert [s.alg_id for s in attest.pcr_select] == [0x000B]
    assert pcr.selected_indices(attest.pcr_select[0].select) == tuple(range(24))
    values = [bytes.fromhex(v) for v in upstream["tpm_quote"]["pcrs"]]
    assert attest.pcr_digest == hashlib.sha256(b"".join(values)).digest()
    assert marshal_attest(attest) == body


def test_fixture_repacked_passes_standin_verifier(upstream):
    evidence = as_openanolis(upstream)
    extra = parse_attest(base64.b64decode(upstream["tpm_quote"]["message"])).extra_data
    claims = verify_tpm(evidence, extra[:32] + b"\x01" * 16)  # only the first 32 bytes count
    assert claims["report_data"] == extra.hex()
    assert claims["pcrs"]["SHA256"]["pcr0"] == upstream["tpm_quote"]["pcrs"][0]
    with pytest.raises(VerificationError, match="REPORT_DATA"):
        verify_tpm(evidence, bytes(a ^ 1 for a in extra[:32]))


def test_fixture_tampering_is_detected(upstream):
    evidence = as_openanolis(upstream)
    key = load_ak_public(evidence["ak_pubkey"])
    good = decode_evidence(evidence).quotes["SHA256"]
    pcrs = list(good.pcrs)
    pcrs[8] = bytes(b ^ 0xFF for b in pcrs[8])
    with pytest.raises(TpmVerifyError, match="Digest in Quote"):
        verify_quote(key, "SHA256", TpmQuote(good.attest_body, good.attest_sig, tuple(pcrs)), None)
    sig = bytearray(good.attest_sig)
    sig[10] ^= 0x40
    with pytest.raises(TpmVerifyError, match="signature"):
        verify_quote(key, "SHA256", TpmQuote(good.attest_body, bytes(sig), good.pcrs), None)
    with pytest.raises(TpmVerifyError, match="bank"):
        verify_quote(key, "SHA1", good, None)
    with pytest.raises(TpmVerifyError, match="selects 24 PCRs"):
        verify_quote(key, "SHA256", TpmQuote(good.attest_body, good.attest_sig, good.pcrs[:23]), None)


def test_upstream_shape_is_refused_with_a_clear_message(upstream):
    with pytest.raises(VerificationError, match="upstream CoCo format"):
        verify_tpm(upstream, None)


def test_evidence_without_quotes_is_refused(upstream):
    evidence = as_openanolis(upstream)
    evidence["quote"] = {}
    with pytest.raises(VerificationError, match="no quote"):
        verify_tpm(evidence, None)


def test_evidence_codec_roundtrip(upstream):
    decoded = decode_evidence(as_openanolis(upstream))
    again = decode_evidence(json.loads(json.dumps(encode_evidence(decoded))))
    assert again == decoded
    assert list(encode_evidence(decoded)) == ["ek_cert", "ak_pubkey", "quote", "eventlog", "aa_eventlog"]


@pytest.mark.parametrize("mutate, message", [
    (lambda e: e.update(ak_pubkey=""), "ak_pubkey"),
    (lambda e: e.update(quote=[]), "quote"),
    (lambda e: e["quote"]["SHA256"].update(attest_body="***"), "attest_body"),
    (lambda e: e["quote"]["SHA256"].update(pcrs=["zz"]), r"pcrs\[0\]"),
    (lambda e: e.update(eventlog=5), "eventlog"),
    (lambda e: e.update(aa_eventlog=["x"]), "aa_eventlog"),
    (lambda e: e.update(ak_pubkey="-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"), "PEM"),
])
def test_malformed_evidence_names_the_field(upstream, mutate, message):
    evidence = as_openanolis(upstream)
    mutate(evidence)
    with pytest.raises(VerificationError, match=message):
        verify_tpm(evidence, None)


def test_report_data_rule_is_prefix_of_first_32_bytes(upstream):
    attest = parse_attest(base64.b64decode(upstream["tpm_quote"]["message"]))
    check_report_data(attest, attest.extra_data[:20], "SHA256")  # shorter expectation: a prefix
    check_report_data(attest, attest.extra_data[:32] + b"zz", "SHA256")
    short = attest.__class__(**{**attest.__dict__, "extra_data": attest.extra_data[:16]})
    with pytest.raises(TpmVerifyError):
        check_report_data(short, attest.extra_data[:32], "SHA256")


@pytest.mark.parametrize("data, message", [
    (b"", "truncated in magic"),
    (b"\x00\x00\x00\x00\x80\x18", "magic"),
    (struct.pack(">IH", TPM_GENERATED_VALUE, 0x8017), "not TPM_ST_ATTEST_QUOTE"),
    (struct.pack(">IHH", TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE, 500), "qualifiedSigner is 500 bytes"),
])
def test_attest_parser_errors(data, message):
    with pytest.raises(TpmFormatError, match=message):
        parse_attest(data)


def test_attest_trailing_bytes_rejected(upstream):
    body = base64.b64decode(upstream["tpm_quote"]["message"])
    with pytest.raises(TpmFormatError, match="unexpected bytes"):
        parse_attest(body + b"\0")


def test_pcr_helpers():
    assert pcr.select_bitmap(range(24)) == b"\xff\xff\xff"
    assert pcr.select_bitmap([0, 9, 23]) == b"\x01\x02\x80"
    assert pcr.selected_indices(b"\x01\x02\x80") == (0, 9, 23)
    sha256 = pcr.bank("sha256")
    assert sha256.alg_id == 0x000B and pcr.bank_by_alg(0x0004).name == "SHA1"
    assert pcr.extend(bytes(32), bytes(32), sha256) == hashlib.sha256(bytes(64)).digest()
    with pytest.raises(TpmFormatError, match="unknown PCR bank"):
        pcr.bank("md5")
    with pytest.raises(TpmFormatError, match="outside"):
        pcr.check_indices([24])


# Trustiflux 1.3.1 attestation-agent/src/eventlog/event.rs test_aa_eventlog_sha256
UPSTREAM_AAEL = ("INIT sha256/0000000000000000000000000000000000000000000000000000000000000000\n"
                 "domain event operation\n"
                 "domain event2 operation")
UPSTREAM_AAEL_VALUE = "e3f24e31c29b371c521ead351f6fed0865695cf512cfcb0df658090217f6f678"


def test_aael_replays_upstream_vector():
    log = eventlog.parse_text(UPSTREAM_AAEL)
    assert [e.line for e in log.events] == ["domain event operation", "domain event2 operation"]
    assert log.algorithm == "sha256"
    assert log.replay().hex() == UPSTREAM_AAEL_VALUE
    assert eventlog.parse_text(UPSTREAM_AAEL + "\n").replay().hex() == UPSTREAM_AAEL_VALUE


def test_aael_replay_matches_pcr_extend_arithmetic():
    start = hashlib.sha256(b"boot").digest()
    lines = [eventlog.init_line("sha256", start), eventlog.make_event("d", "op", '{"compact":"json"}').line]
    value = start
    for line in lines:
        value = pcr.extend(value, eventlog.line_digest("sha256", line), pcr.bank("SHA256"))
    log = eventlog.parse_text("\n".join(lines))
    assert log.replay() == value and log.matches(value)


@pytest.mark.parametrize("text, message", [
    ("", "empty"),
    ("INIT sha256/00", "INIT value is 1 bytes"),
    ("INIT md5/00", "not one of"),
    ("BEGIN sha256/" + "00" * 32, "line 1 is not `INIT"),
    ("INIT sha256/" + "00" * 32 + "\nonlytwo fields", "line 2"),
    # The one rule for every TEE (Trustee 1.5 splits on single spaces): content has no spaces either.
    ("INIT sha256/" + "00" * 32 + "\nd op content with spaces", "line 2 is not"),
])
def test_aael_parse_errors(text, message):
    with pytest.raises(AaEventLogError, match=message):
        eventlog.parse_text(text)


@pytest.mark.parametrize("args", [("", "op", "c"), ("d d", "op", "c"), ("d", "op", "a\nb"), ("INIT", "x", "y"),
                                  ("d", "op", "content with spaces")])
def test_aael_event_validation(args):
    with pytest.raises(InvalidAaEventError):
        eventlog.make_event(*args)


def test_tpm_evidence_defaults():
    evidence = TpmEvidence(ak_pubkey="k", quotes={})
    assert encode_evidence(evidence)["eventlog"] is None
