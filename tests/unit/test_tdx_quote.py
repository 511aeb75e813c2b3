"""TDX quote parser and offline verification against every real quote in the fixtures.

Expected field values are derived independently of the parser: either from Trustee's published
claims JSON (``trustee/tdx/parse_tdx_claims_expected.json`` for ``tdx_quote_4.dat``) or by slicing
each file at the absolute offsets given in ``reference/evidence.md`` §1.4 (body at 48 for v4 and
54 for v5, field offsets relative to it) — plain byte arithmetic, not the parser's tables.
"""

from __future__ import annotations

import json
import struct
from dataclasses import replace

import pytest
from cryptography import x509
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation_agent.tdx.errors import QuoteError, QuoteVerificationError
from attestation_agent.tdx.quote import parse_quote, parse_td_report_body
from attestation_agent.tdx.quote_verify import parse_pck_chain, verify_attestation_key_binding, verify_quote
from attestation_agent.tdx.td_report import parse_td_report
from tests.conftest import UPSTREAM
from tests.fakes.configfs_tsm import TestQuotingEnclave

QUOTES = {
    "trustee/tdx/tdx_quote_4.dat": (4, 0),
    "trustee/tdx/tdx_quote_5.dat": (5, 0),
    "trustee/tdx/tdx_quote_6.dat": (4, 70),
    "trustee/az-tdx-vtpm/td-quote.bin": (4, 70),
    "go-tdx-guest/ccel/cos-113-tdx-quote.dat": (4, 3065),
    "go-tdx-guest/quote_v5_sample.dat": (5, 0),
    "go-tdx-guest/tdx_prod_quote_SPR_E4.dat": (4, 39),
    "openanolis-trustee-v1.5.2/aael/AAEL_quote_tdx": (4, 70),
}


def load(name: str) -> bytes:
    return (UPSTREAM / name).read_bytes()


def body_offset(data: bytes) -> int:
    return 48 if data[0] == 4 else 54


@pytest.mark.parametrize("name", sorted(QUOTES))
def test_every_fixture_quote_parses_with_independently_sliced_fields(name):
    data = load(name)
    version, padding = QUOTES[name]
    quote = parse_quote(data)
    assert quote.version == version
    assert len(data) - quote.length == padding
    if "SPR_E4" not in name:  # go-tdx-guest appends a text trailer to that one on purpose
        assert set(data[quote.length:]) <= {0}
    b = body_offset(data)
    assert quote.body.mr_td == data[b + 136:b + 184]
    assert quote.body.mr_config_id == data[b + 184:b + 232]
    assert quote.body.mr_seam == data[b + 16:b + 64]
    assert quote.body.tee_tcb_svn == data[b:b + 16]
    assert quote.rtmrs == tuple(data[b + 328 + 48 * i:b + 376 + 48 * i] for i in range(4))
    assert quote.report_data == data[b + 520:b + 584]
    assert quote.header.qe_vendor_id == bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
    sig_len = struct.unpack_from("<I", data, b + len(quote.body.to_bytes()))[0]
    assert quote.length == b + len(quote.body.to_bytes()) + 4 + sig_len
    # the encoder reproduces the exact signed bytes
    assert quote.to_bytes() == data[:quote.length]


@pytest.mark.parametrize("name", sorted(QUOTES))
def test_every_fixture_quote_verifies_offline_and_chains_to_the_same_intel_root(name):
    quote = parse_quote(load(name))
    intel_root = parse_pck_chain(parse_quote(load("trustee/tdx/tdx_quote_4.dat")).signature.pck_cert_data)[-1]
    result = verify_quote(quote, trusted_roots=[intel_root])
    assert result.root_trusted
    assert "Intel SGX Root CA" in result.root_subject
    assert "Intel SGX PCK Certificate" in result.leaf_subject


def test_tdx_quote_4_matches_trustee_published_claims():
    expected = json.loads((UPSTREAM / "trustee/tdx/parse_tdx_claims_expected.json").read_text())
    quote = parse_quote(load("trustee/tdx/tdx_quote_4.dat"))
    body, header = expected["quote"]["body"], expected["quote"]["header"]
    assert quote.body.mr_td.hex() == body["mr_td"]
    assert quote.body.mr_seam.hex() == body["mr_seam"]
    assert quote.body.tee_tcb_svn.hex() == body["tcb_svn"]
    assert quote.body.td_attributes.hex() == body["td_attributes"]
    assert quote.body.xfam.hex() == body["xfam"]
    assert [r.hex() for r in quote.rtmrs] == [body[f"rtmr_{i}"] for i in range(4)]
    assert quote.report_data.hex() == body["report_data"] == expected["report_data"]
    assert quote.header.user_data.hex() == header["user_data"]
    assert quote.header.qe_vendor_id.hex() == header["vendor_id"]
    assert quote.body.td_attribute_flags() == expected["td_attributes"]


@pytest.mark.parametrize("name", ["trustee/tdx/tdx_quote_5.dat", "go-tdx-guest/quote_v5_sample.dat"])
def test_v5_tdx15_body_has_servicetd_fields(name):
    data = load(name)
    quote = parse_quote(data)
    assert struct.unpack_from("<HI", data, 48) == (3, 648)
    assert quote.body_type == 3 and quote.body.is_tdx15
    assert quote.body.tee_tcb_svn2 == data[54 + 584:54 + 600]
    assert quote.body.mr_servicetd == data[54 + 600:54 + 648]


def _flip(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 1]) + data[offset + 1:]


def test_tampered_body_fails_signature():
    data = load("trustee/tdx/tdx_quote_4.dat")
    quote = parse_quote(_flip(data, 48 + 520))  # one REPORTDATA bit
    with pytest.raises(QuoteVerificationError, match="quote signature"):
        verify_quote(quote)


def test_tampered_qe_report_fails_pck_signature_and_swapped_key_fails_binding():
    data = load("trustee/tdx/tdx_quote_4.dat")
    sig_start = 48 + 584 + 4
    qe_report = sig_start + 64 + 64 + 6
    with pytest.raises(QuoteVerificationError, match="QE report signature"):
        verify_quote(parse_quote(_flip(data, qe_report + 10)))
    # a different, valid P-256 key: the QE report no longer binds it (and the signature fails)
    other = TestQuotingEnclave().attestation_key_raw
    swapped = parse_quote(data[:sig_start + 64] + other + data[sig_start + 128:])
    with pytest.raises(QuoteVerificationError, match="does not bind the attestation key"):
        verify_attestation_key_binding(swapped)
    with pytest.raises(QuoteVerificationError, match="quote signature"):
        verify_quote(swapped)
    with pytest.raises(QuoteVerificationError, match="not a point on P-256"):
        verify_quote(parse_quote(_flip(data, sig_start + 64 + 5)))


def test_untrusted_root_is_refused_when_roots_are_pinned():
    quote = parse_quote(load("trustee/tdx/tdx_quote_4.dat"))
    with pytest.raises(QuoteVerificationError, match="not a trusted root"):
        verify_quote(quote, trusted_roots=[TestQuotingEnclave().root])


def test_truncations_and_wrong_types_are_clean_errors():
    data = load("trustee/tdx/tdx_quote_4.dat")
    for cut in (0, 10, 47, 48, 100, 632, 640, 700, 1100, 4000, 4935):
        with pytest.raises(QuoteError):
            parse_quote(data[:cut])
    with pytest.raises(QuoteError, match="version 3"):
        parse_quote(b"\x03" + data[1:])
    with pytest.raises(QuoteError, match="not TDX"):
        parse_quote(data[:4] + b"\x00" + data[5:])
    with pytest.raises(QuoteError, match="not 6"):
        parse_quote(data[:636 + 128] + b"\x05" + data[636 + 129:])


def test_td_report_fixture():
    data = load("guest-components/tdx_report_1.bin")
    report = parse_td_report(data)
    assert report.report_type == bytes.fromhex("81000100")
    assert report.rtmrs[0] == data[720:768] and report.rtmrs[0] != bytes(48)
    assert report.rtmrs[1] == data[768:816] and report.rtmrs[1] != bytes(48)
    assert report.mr_td == data[528:576]
    with pytest.raises(QuoteError):
        parse_td_report(data[:1000])
    with pytest.raises(QuoteError, match="0x81"):
        parse_td_report(b"\x00" + data[1:])


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_SEED = load("trustee/tdx/tdx_quote_5.dat")


@FUZZ
@given(st.binary(max_size=6000))
def test_fuzz_random_bytes(data):
    try:
        parse_quote(data)
    except QuoteError:
        pass


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(_SEED) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, len(_SEED)))
def test_fuzz_mutated_fixture(mutations, cut):
    data = bytearray(_SEED)
    for offset, value in mutations:
        data[offset] = value
    try:
        quote = parse_quote(bytes(data[:cut]) if cut < 200 else bytes(data))
        verify_quote(quote)
    except QuoteError:
        pass


def test_pck_chain_parse_errors():
    with pytest.raises(QuoteVerificationError):
        parse_pck_chain(b"not pem")
    certs = parse_pck_chain(parse_quote(_SEED).signature.pck_cert_data)
    assert all(isinstance(c, x509.Certificate) for c in certs) and len(certs) == 3


_PCK_START = _SEED.find(b"-----BEGIN CERTIFICATE-----")


@FUZZ
@given(st.lists(st.tuples(st.integers(_PCK_START, len(_SEED) - 1), st.integers(0, 255)), min_size=1, max_size=4))
def test_fuzz_mutated_pck_chain(mutations):
    data = bytearray(_SEED)
    for offset, value in mutations:
        data[offset] = value
    try:
        verify_quote(parse_quote(bytes(data)))
    except QuoteError:
        pass


@FUZZ
@given(st.binary(min_size=584, max_size=584), st.booleans(), st.binary(min_size=64, max_size=64),
       st.binary(min_size=20, max_size=20))
def test_encoder_roundtrip_property(body_bytes, v5, extra, user_data):
    template = parse_quote(_SEED)
    body15 = body_bytes + extra if v5 else body_bytes
    body = parse_td_report_body(body15)
    header = replace(template.header, version=5 if v5 else 4, user_data=user_data)
    quote = replace(template, header=header, body=body, body_type=3 if v5 else 2)
    again = parse_quote(quote.to_bytes())
    assert again == quote and again.body.to_bytes() == body15
