"""Property and fuzz tests: the TPM parsers and the stand-in verifier fail only with typed errors."""

from __future__ import annotations

import base64
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation_agent import eventlog
from attestation_agent.eventlog import AaEventLogError
from attestation_agent.tpm.attest import ClockInfo, PcrSelection, TpmsAttest, marshal_attest, parse_attest
from attestation_agent.tpm.errors import TpmFormatError
from attestation_agent.tpm.evidence import decode_evidence
from tests.conftest import UPSTREAM
from tests.unit.test_tpm_formats import as_openanolis
from trustee_standin.verifiers import VerificationError
from trustee_standin.verifiers.tpm import verify_tpm

UPSTREAM_EVIDENCE = json.loads((UPSTREAM / "trustee" / "tpm" / "tpm_evidence.json").read_text())
BODY = base64.b64decode(UPSTREAM_EVIDENCE["tpm_quote"]["message"])
FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

u16, u32, u64 = (st.integers(0, 2**n - 1) for n in (16, 32, 64))
attests = st.builds(
    TpmsAttest,
    qualified_signer=st.binary(max_size=68),
    extra_data=st.binary(max_size=66),
    clock_info=st.builds(ClockInfo, u64, u32, u32, st.booleans()),
    firmware_version=u64,
    pcr_select=st.lists(st.builds(PcrSelection, u16, st.binary(max_size=32)), max_size=16).map(tuple),
    pcr_digest=st.binary(max_size=64),
)


@FAST
@given(attests)
def test_marshal_parse_roundtrip(attest):
    assert parse_attest(marshal_attest(attest)) == attest


@FAST
@given(st.binary(max_size=400))
def test_random_bytes_give_typed_errors(data):
    try:
        parse_attest(data)
    except TpmFormatError:
        pass


@FAST
@given(st.data())
def test_mutated_real_quote_gives_typed_errors(data):
    body = bytearray(BODY)
    for _ in range(data.draw(st.integers(1, 4))):
        body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    try:
        parse_attest(bytes(body[:cut]))
    except TpmFormatError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20)


@FAST
@given(json_values)
def test_random_json_gives_typed_errors(value):
    try:
        decode_evidence(value)
    except TpmFormatError:
        pass
    try:
        verify_tpm(value, b"\0" * 48)
    except VerificationError:
        pass


@FAST
@given(st.data())
def test_mutated_evidence_never_verifies_with_an_untyped_error(data):
    evidence = as_openanolis(UPSTREAM_EVIDENCE)
    quote = evidence["quote"]["SHA256"]
    field = data.draw(st.sampled_from(["attest_body", "attest_sig", "pcr"]))
    if field == "pcr":
        index = data.draw(st.integers(0, 23))
        quote["pcrs"][index] = data.draw(st.sampled_from(["", "00", "ab" * 32, "f" * 64, "zz" * 32]))
        changed = quote["pcrs"][index] != UPSTREAM_EVIDENCE["tpm_quote"]["pcrs"][index]
    else:
        raw = bytearray(base64.b64decode(quote[field]))
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= data.draw(st.integers(1, 255))
        quote[field] = base64.b64encode(bytes(raw)).decode()
        changed = True
    try:
        verify_tpm(evidence, None)
    except VerificationError:
        return
    assert not changed, "tampered TPM evidence was accepted"


@FAST
@given(st.text(max_size=300))
def test_aael_parser_gives_typed_errors(text):
    try:
        eventlog.parse_text(text).replay()
    except AaEventLogError:
        pass
