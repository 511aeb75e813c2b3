"""TNG <= 2.2.4 compatibility, pure pieces: format-A key binding, first-request inspection, the h2c
outer framing (headers, path rewriting, 418, direct_forward) and the "compat": "2.2.4" config.

Vectors: a certificate made by rats-rs itself (``docs/demo-sgx-cert.pem`` on rats-rs's ``tng`` branch,
the code TNG 2.2.4 pins), whose claims buffer our encoder must reproduce byte for byte from the key,
and the CBOR vectors of rats-rs's own unit tests (``rats-cert/src/cert/dice/cbor.rs``).
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json

import cbor2
import h2.config
import h2.connection
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import ratls_format_a
from gateway.config import derive_egress_config, parse_config
from gateway.errors import CertFormatError, GatewayConfigError
from gateway.h2c_encap import (
    DirectForward,
    PathRewriter,
    is_tng_request,
    outer_request_headers,
    teapot_response,
)
from gateway.http_inspect import H2_PREFACE, InspectError, RequestInfo, inspect_request
from gateway.ratls_cert import (
    EVIDENCE_OID,
    EvidenceRecord,
    binding_claims,
    build_certificate,
    check_binding,
    parse_certificate,
    report_data,
    runtime_data_text,
    spki_der,
)

RATS_RS_DEMO_CERT = b"""-----BEGIN CERTIFICATE-----
MIIUbTCCFBOgAwIBAgIBKjAKBggqhkjOPQQDAjAxMR0wGwYDVQQKDBRJbmNsYXZh
cmUgQ29udGFpbmVyczEQMA4GA1UEAwwHcmF0cy1yczAeFw0yNDA0MTUxNjUzMDFa
Fw0yNDA0MTUxNjU0MDFaMDExHTAbBgNVBAoMFEluY2xhdmFyZSBDb250YWluZXJz
MRAwDgYDVQQDDAdyYXRzLXJzMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEijF9
35LzLGVlihkckDnE/K1up/40ADajWHBBEW+zJoxp24HrbvhLdBZEwWR39gU5KJap
vmzsuTvWxWLsgbxLLaOCExowghMWMB0GA1UdDgQWBBScXBXW65nWwb5n2JuhiHrv
6oB8aTAPBgNVHRMBAf8EBTADAQH/MA4GA1UdDwEB/wQEAwIBBjCCEsYGBmeBBQUE
CQSCErrZ6mCCWRJ+AwACAAAAAAAKAA8Ak5pyM/ecTKmUCg2zlX8GB6QjJStwa7QA
NsLF4ps1fvEAAAAADA4QD///AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
AAAAAAAAAAAAAAAABwAAAAAAAADnAAAAAAAAAEiGFTcuxtS1on3XZzaXETgIZTt0
lhW4pY9i5x3wZg6FAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAACD1xnn
ferKFHD2uvYqTXdDA8iZ22kCD5xw7h38CMfOngAAAAAAAAAAAAAAAAAAAAAAAAAA
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAADtEVa9
9BK5tem9wAOuhElRVe6o75fNWyKhaOpiian/3QAAAAAAAAAAAAAAAAAAAAAAAAAA
AAAAAAAAAAAAAAAAyhAAAGVtazXWAESE1/TD5PsCw3Mh01vtcSvvzLljkFnAMMix
f9+c6sw/fX3ykTxePv9+jNv+aMYZo/WWUaG9J2wpxe1iAeV4VlNN2caBBMSBfVdV
8W5iPScgp0LJxolJiuDU96nr/cDw0x13sN7uCeqlHu5vgYVnjLMLvIzj2UTsprhR
DA4QD///AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
FQAAAAAAAADnAAAAAAAAAJazR6ZOWgReJzacJubc2lH9fIUOmzo6eecY9DJh3uHk
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAACMT1d115ZQPpYTf3fGioKa
AFasje1wFAsIGwlEkMV7/wAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
AAAAAAAAAAAAAAAAAAAAAAEACgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAABpSaewUL5h2XvB4RnirwLS
EZSpzv1+8BGWo1vM/HesnQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA
g7fJOz5B3NcQ7S7hNgLwLXXeWRA3oknYjTO3QovftodqRpzuDVvfylA96u4GQNrI
rxGrf2/E/0QMBnZ/qUTyJiAAAAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwd
Hh8FAGIOAAAtLS0tLUJFR0lOIENFUlRJRklDQVRFLS0tLS0KTUlJRThqQ0NCSmln
QXdJQkFnSVVWd0g3cldBSjkrRUZSb3NrS1lFQldkSGhKSE13Q2dZSUtvWkl6ajBF
QXdJdwpjREVpTUNBR0ExVUVBd3daU1c1MFpXd2dVMGRZSUZCRFN5QlFiR0YwWm05
eWJTQkRRVEVhTUJnR0ExVUVDZ3dSClNXNTBaV3dnUTI5eWNHOXlZWFJwYjI0eEZE
QVNCZ05WQkFjTUMxTmhiblJoSUVOc1lYSmhNUXN3Q1FZRFZRUUkKREFKRFFURUxN
QWtHQTFVRUJoTUNWVk13SGhjTk1qUXdNakF5TURJd01USTNXaGNOTXpFd01qQXlN
REl3TVRJMwpXakJ3TVNJd0lBWURWUVFEREJsSmJuUmxiQ0JUUjFnZ1VFTkxJRU5s
Y25ScFptbGpZWFJsTVJvd0dBWURWUVFLCkRCRkpiblJsYkNCRGIzSndiM0poZEds
dmJqRVVNQklHQTFVRUJ3d0xVMkZ1ZEdFZ1EyeGhjbUV4Q3pBSkJnTlYKQkFnTUFr
TkJNUXN3Q1FZRFZRUUdFd0pWVXpCWk1CTUdCeXFHU000OUFnRUdDQ3FHU000OUF3
RUhBMElBQk5RVApESU05dkRsbUFia21TaVFuZC8yL29JdWQ0VUMrby9sYWY0dHlh
UlE1NFZxQ05zS0RaekJxSXFFNmh2c0Z1Y0ZPCmZCQXNtMnc4VGNoZ0dMTjc5bE9q
Z2dNT01JSURDakFmQmdOVkhTTUVHREFXZ0JTVmIxM052UnZoNlVCSnlkVDAKTTg0
QlZ3dmVWREJyQmdOVkhSOEVaREJpTUdDZ1hxQmNobHBvZEhSd2N6b3ZMMkZ3YVM1
MGNuVnpkR1ZrYzJWeQpkbWxqWlhNdWFXNTBaV3d1WTI5dEwzTm5lQzlqWlhKMGFX
WnBZMkYwYVc5dUwzWXpMM0JqYTJOeWJEOWpZVDF3CmJHRjBabTl5YlNabGJtTnZa
R2x1Wnoxa1pYSXdIUVlEVlIwT0JCWUVGSnMwZzg0OGc1bFdFZXBvY1lsVHRxaEsK
NDhJUU1BNEdBMVVkRHdFQi93UUVBd0lHd0RBTUJnTlZIUk1CQWY4RUFqQUFNSUlD
T3dZSktvWklodmhOQVEwQgpCSUlDTERDQ0FpZ3dIZ1lLS29aSWh2aE5BUTBCQVFR
UUkva3FiaW1FSzdHTGhDRmh0dWpFL1RDQ0FXVUdDaXFHClNJYjRUUUVOQVFJd2dn
RlZNQkFHQ3lxR1NJYjRUUUVOQVFJQkFnRU1NQkFHQ3lxR1NJYjRUUUVOQVFJQ0Fn
RU0KTUJBR0N5cUdTSWI0VFFFTkFRSURBZ0VETUJBR0N5cUdTSWI0VFFFTkFRSUVB
Z0VETUJFR0N5cUdTSWI0VFFFTgpBUUlGQWdJQS96QVJCZ3NxaGtpRytFMEJEUUVD
QmdJQ0FQOHdFQVlMS29aSWh2aE5BUTBCQWdjQ0FRQXdFQVlMCktvWklodmhOQVEw
QkFnZ0NBUUF3RUFZTEtvWklodmhOQVEwQkFna0NBUUF3RUFZTEtvWklodmhOQVEw
QkFnb0MKQVFBd0VBWUxLb1pJaHZoTkFRMEJBZ3NDQVFBd0VBWUxLb1pJaHZoTkFR
MEJBZ3dDQVFBd0VBWUxLb1pJaHZoTgpBUTBCQWcwQ0FRQXdFQVlMS29aSWh2aE5B
UTBCQWc0Q0FRQXdFQVlMS29aSWh2aE5BUTBCQWc4Q0FRQXdFQVlMCktvWklodmhO
QVEwQkFoQUNBUUF3RUFZTEtvWklodmhOQVEwQkFoRUNBUTB3SHdZTEtvWklodmhO
QVEwQkFoSUUKRUF3TUF3UC8vd0FBQUFBQUFBQUFBQUF3RUFZS0tvWklodmhOQVEw
QkF3UUNBQUF3RkFZS0tvWklodmhOQVEwQgpCQVFHQUdCcUFBQUFNQThHQ2lxR1NJ
YjRUUUVOQVFVS0FRRXdIZ1lLS29aSWh2aE5BUTBCQmdRUVpZNG54ZUpiClpPd05U
cFYzREUrUWlqQkVCZ29xaGtpRytFMEJEUUVITURZd0VBWUxLb1pJaHZoTkFRMEJC
d0VCQWY4d0VBWUwKS29aSWh2aE5BUTBCQndJQkFmOHdFQVlMS29aSWh2aE5BUTBC
QndNQkFmOHdDZ1lJS29aSXpqMEVBd0lEU0FBdwpSUUlnSzFvS2ZCN29pRmdqT3V2
TUJKNnZZNnkvZGFwb3p0a1VXTUJUVTEyeHF2c0NJUUM1OEFtc0V2UjBJay95CjZV
QlFYQzBmZEpZQm4zdXphTmZGYmoweG9YLzV5UT09Ci0tLS0tRU5EIENFUlRJRklD
QVRFLS0tLS0KLS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCk1JSUNsakNDQWoy
Z0F3SUJBZ0lWQUpWdlhjMjlHK0hwUUVuSjFQUXp6Z0ZYQzk1VU1Bb0dDQ3FHU000
OUJBTUMKTUdneEdqQVlCZ05WQkFNTUVVbHVkR1ZzSUZOSFdDQlNiMjkwSUVOQk1S
b3dHQVlEVlFRS0RCRkpiblJsYkNCRApiM0p3YjNKaGRHbHZiakVVTUJJR0ExVUVC
d3dMVTJGdWRHRWdRMnhoY21FeEN6QUpCZ05WQkFnTUFrTkJNUXN3CkNRWURWUVFH
RXdKVlV6QWVGdzB4T0RBMU1qRXhNRFV3TVRCYUZ3MHpNekExTWpFeE1EVXdNVEJh
TUhBeElqQWcKQmdOVkJBTU1HVWx1ZEdWc0lGTkhXQ0JRUTBzZ1VHeGhkR1p2Y20w
Z1EwRXhHakFZQmdOVkJBb01FVWx1ZEdWcwpJRU52Y25CdmNtRjBhVzl1TVJRd0Vn
WURWUVFIREF0VFlXNTBZU0JEYkdGeVlURUxNQWtHQTFVRUNBd0NRMEV4CkN6QUpC
Z05WQkFZVEFsVlRNRmt3RXdZSEtvWkl6ajBDQVFZSUtvWkl6ajBEQVFjRFFnQUVO
U0IvN3QyMWxYU08KMkN1enB4dzc0ZUpCNzJFeURHZ1c1clhDdHgydFZUTHE2aEtr
NnorVWlSWkNucVI3cHNPdmdxRmVTeGxtVGxKbAplVG1pMldZejNxT0J1ekNCdURB
ZkJnTlZIU01FR0RBV2dCUWlaUXpXV3AwMGlmT0R0SlZTdjFBYk9TY0dyREJTCkJn
TlZIUjhFU3pCSk1FZWdSYUJEaGtGb2RIUndjem92TDJObGNuUnBabWxqWVhSbGN5
NTBjblZ6ZEdWa2MyVnkKZG1salpYTXVhVzUwWld3dVkyOXRMMGx1ZEdWc1UwZFlV
bTl2ZEVOQkxtUmxjakFkQmdOVkhRNEVGZ1FVbFc5ZAp6YjBiNGVsQVNjblU5RFBP
QVZjTDNsUXdEZ1lEVlIwUEFRSC9CQVFEQWdFR01CSUdBMVVkRXdFQi93UUlNQVlC
CkFmOENBUUF3Q2dZSUtvWkl6ajBFQXdJRFJ3QXdSQUlnWHNWa2kwdytpNlZZR1cz
VUYvMjJ1YVhlMFlKRGoxVWUKbkErVGpEMWFpNWNDSUNZYjFTQW1ENXhrZlRWcHZv
NFVveWlTWXhyRFdMbVVSNENJOU5LeWZQTisKLS0tLS1FTkQgQ0VSVElGSUNBVEUt
LS0tLQotLS0tLUJFR0lOIENFUlRJRklDQVRFLS0tLS0KTUlJQ2p6Q0NBalNnQXdJ
QkFnSVVJbVVNMWxxZE5JbnpnN1NWVXI5UUd6a25CcXd3Q2dZSUtvWkl6ajBFQXdJ
dwphREVhTUJnR0ExVUVBd3dSU1c1MFpXd2dVMGRZSUZKdmIzUWdRMEV4R2pBWUJn
TlZCQW9NRVVsdWRHVnNJRU52CmNuQnZjbUYwYVc5dU1SUXdFZ1lEVlFRSERBdFRZ
VzUwWVNCRGJHRnlZVEVMTUFrR0ExVUVDQXdDUTBFeEN6QUoKQmdOVkJBWVRBbFZU
TUI0WERURTRNRFV5TVRFd05EVXhNRm9YRFRRNU1USXpNVEl6TlRrMU9Wb3dhREVh
TUJnRwpBMVVFQXd3UlNXNTBaV3dnVTBkWUlGSnZiM1FnUTBFeEdqQVlCZ05WQkFv
TUVVbHVkR1ZzSUVOdmNuQnZjbUYwCmFXOXVNUlF3RWdZRFZRUUhEQXRUWVc1MFlT
QkRiR0Z5WVRFTE1Ba0dBMVVFQ0F3Q1EwRXhDekFKQmdOVkJBWVQKQWxWVE1Ga3dF
d1lIS29aSXpqMENBUVlJS29aSXpqMERBUWNEUWdBRUM2bkV3TURJWVpPai9pUFdz
Q3phRUtpNwoxT2lPU0xSRmhXR2pibkJWSmZWbmtZNHUzSWprRFlZTDBNeE80bXFz
eVlqbEJhbFRWWXhGUDJzSkJLNXpsS09CCnV6Q0J1REFmQmdOVkhTTUVHREFXZ0JR
aVpReldXcDAwaWZPRHRKVlN2MUFiT1NjR3JEQlNCZ05WSFI4RVN6QkoKTUVlZ1Jh
QkRoa0ZvZEhSd2N6b3ZMMk5sY25ScFptbGpZWFJsY3k1MGNuVnpkR1ZrYzJWeWRt
bGpaWE11YVc1MApaV3d1WTI5dEwwbHVkR1ZzVTBkWVVtOXZkRU5CTG1SbGNqQWRC
Z05WSFE0RUZnUVVJbVVNMWxxZE5JbnpnN1NWClVyOVFHemtuQnF3d0RnWURWUjBQ
QVFIL0JBUURBZ0VHTUJJR0ExVWRFd0VCL3dRSU1BWUJBZjhDQVFFd0NnWUkKS29a
SXpqMEVBd0lEU1FBd1JnSWhBT1cvNVFrUitTOUNpU0RjTm9vd0x1UFJMc1dHZi9Z
aTdHU1g5NEJnd1R3ZwpBaUVBNEowbHJIb01zK1hvNW8vc1g2TzlRV3hIUkF2WlVH
T2RSUTdjdnFSWGFxST0KLS0tLS1FTkQgQ0VSVElGSUNBVEUtLS0tLQoAWDOha3B1
YmtleS1oYXNoWCSCAVggjV5SuwixebJVBexAl3VtKgH5FpfCJdeiyHcm/FIspMow
CgYGZ4EFBQQCBAAwCgYIKoZIzj0EAwIDSAAwRQIgGUcpQFV6dCmUz+ApmJFftoM3
MCzhuD5Q4wt8GsEw+e4CIQCTXDz3WtXf+mS9mSND0GSrXqZ+Lsawcqdh809YrHd2
rw==
-----END CERTIFICATE-----
"""


def test_claims_buffer_is_byte_identical_to_rats_rs():
    cert = x509.load_pem_x509_certificate(RATS_RS_DEMO_CERT)
    tag = cbor2.loads(cert.extensions.get_extension_for_oid(EVIDENCE_OID).value.value)
    assert tag.tag == 60000  # Intel quote (the demo is SGX); the claims buffer layout is the same for CoCo
    claims_buffer = tag.value[1]
    spki = spki_der(cert.public_key())
    assert ratls_format_a.claims_buffer(spki) == claims_buffer
    ratls_format_a.check_pubkey_hash(claims_buffer, spki)
    other = spki_der(ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(CertFormatError, match="key binding mismatch"):
        ratls_format_a.check_pubkey_hash(claims_buffer, other)


def test_rats_rs_cbor_vectors():
    # rats-rs test_generate_claims_buffer: {"key1": h'value1', "key2": h'value2'}
    parsed = ratls_format_a.parse_claims_buffer(bytes.fromhex("a2646b6579314676616c756531646b6579324676616c756532"))
    assert parsed == {"key1": b"value1", "key2": b"value2"}
    # rats-rs test_generate_pubkey_hash_value_buffer: [1, h'00010203'] -- a 4-byte digest is not SHA-256
    buffer = cbor2.dumps({"pubkey-hash": bytes.fromhex("82014400010203")})
    with pytest.raises(CertFormatError, match="hash-alg-id"):
        ratls_format_a.check_pubkey_hash(buffer, b"spki")


def test_runtime_data_is_rats_rs_shape():
    buffer = b"\xa1" + b"claims"
    text = ratls_format_a.runtime_data_text(buffer)
    digest = base64.urlsafe_b64encode(hashlib.sha256(buffer).digest()).rstrip(b"=").decode()
    assert text == '{"rats-rs.raw_runtime_data":"' + digest + '"}'  # serde_json compact, one key
    assert report_data(text) == hashlib.sha384(text.encode()).digest()


def _cert(binding: str, *, bind_to: ec.EllipticCurvePrivateKey | None = None,
          runtime: str | None = None) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    spki = spki_der((bind_to or key).public_key())
    if binding == "A":
        buffer = ratls_format_a.claims_buffer(spki)
        text = runtime or ratls_format_a.runtime_data_text(buffer)
    else:
        buffer, text = b"", runtime or runtime_data_text(binding_claims(spki))
    record = EvidenceRecord(tee_type="sample", aa_evidence=b'{"q":1}', aa_runtime_data=text)
    now = datetime.datetime.now(datetime.UTC)
    return build_certificate(key, record, now, claims_buffer=buffer), key


def test_format_a_round_trip_and_evidence_map_layout():
    der, _ = _cert("A")
    cert = parse_certificate(der)
    expected = ratls_format_a.check_binding(cert)
    assert expected == json.loads(cert.record.aa_runtime_data)
    raw = cbor2.loads(cbor2.loads(x509.load_der_x509_certificate(der).extensions.get_extension_for_oid(
        EVIDENCE_OID).value.value).value[0])
    # rats-rs CocoEvidenceCborHelper: exactly these keys, in this order, hash algo 7 (sha384)
    assert list(raw) == ["tee_type", "aa_evidence", "aa_runtime_data", "aa_runtime_data_hash_algo"]
    assert raw["aa_runtime_data_hash_algo"] == 7
    with pytest.raises(CertFormatError, match="format A"):
        check_binding(cert)  # a format-B listener names the generation mismatch


def test_format_a_refusals():
    with pytest.raises(CertFormatError, match="format B"):
        ratls_format_a.check_binding(parse_certificate(_cert("B")[0]))
    other = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(CertFormatError, match="key binding mismatch"):
        ratls_format_a.check_binding(parse_certificate(_cert("A", bind_to=other)[0]))
    with pytest.raises(CertFormatError, match="not bound to this claims buffer"):
        ratls_format_a.check_binding(parse_certificate(_cert("A", runtime='{"rats-rs.raw_runtime_data":"x"}')[0]))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_claims_buffer(data):
    try:
        ratls_format_a.check_pubkey_hash(data, b"spki")
    except CertFormatError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(max_size=12), st.binary(max_size=40) | st.integers() | st.text(max_size=5),
                       max_size=3))
def test_fuzz_claims_structure(claims):
    try:
        ratls_format_a.check_pubkey_hash(cbor2.dumps(claims), b"spki")
    except CertFormatError:
        pass


# --------------------------------------------------------------------------- first-request inspection


def _h2_client_bytes(authority: str, path: str) -> bytes:
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    conn.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", authority), (":path", path),
                          ("tng", "{}")])
    return conn.data_to_send()


def test_inspect_http1_and_http2():
    head = b"POST /v1/chat?stream=1 HTTP/1.1\r\nHost: model.svc:8080\r\nContent-Length: 2\r\n\r\n{}"
    assert inspect_request(head) == RequestInfo("http1", "model.svc:8080", "/v1/chat")
    assert inspect_request(b"GET http://a.b:81/x/y?q HTTP/1.1\r\nHost: ignored\r\n\r\n") == RequestInfo(
        "http1", "a.b:81", "/x/y")
    data = _h2_client_bytes("model.svc", "/api/v1?x=1")
    assert data.startswith(H2_PREFACE)
    assert inspect_request(data) == RequestInfo("http2", "model.svc", "/api/v1")
    for n in range(len(data)):  # every prefix only asks for more
        assert inspect_request(data[:n]) is None
    for n in range(head.index(b"\r\n\r\n") + 3):
        assert inspect_request(head[:n]) is None
    for bad in (b"\x16\x03\x01\x02\x00", b"GET / HTTP/1.1\r\n\r\n", b"CONNECT a:1 HTTP/1.1\r\nHost: a\r\n\r\n",
                b"GET / HTTP/2.0\r\nHost: a\r\n\r\n"):
        with pytest.raises(InspectError):
            inspect_request(bad)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.sampled_from([b"", H2_PREFACE, b"GET / HTTP/1.1\r\n"]))
def test_fuzz_inspect(data, prefix):
    try:
        result = inspect_request(prefix + data)
    except InspectError:
        return
    assert result is None or isinstance(result, RequestInfo)


# --------------------------------------------------------------------------- outer framing


def test_outer_headers_and_teapot():
    assert outer_request_headers("svc:80", "/") == [(":method", "POST"), (":scheme", "http"), (":authority", "svc:80"),
                                                    (":path", "/"), ("tng", "{}")]
    assert is_tng_request([(":method", "POST"), ("tng", "{}")])
    assert not is_tng_request([(":method", "POST")])
    answer = teapot_response()
    assert answer.startswith(b"HTTP/1.1 418 ") and b"secured by TNG" in answer
    head, body = answer.split(b"\r\n\r\n", 1)
    assert f"content-length: {len(body)}".encode() in head


def test_path_rewrites_follow_tng():
    rewriter = PathRewriter([(r"/api/(?P<ver>v\d+)/(.*)", r"/gw/${ver}/$2"), (r"/old/(\w+)", r"/new/\1"),
                             (r"/cost/(\d+)", r"/$$$1"), (r"/none/(.*)", r"/x$9")])
    assert rewriter.rewrite("/api/v1/chat/completions") == "/gw/v1/chat/completions"
    assert rewriter.rewrite("/old/path") == "/new/path"  # the pre-2.0 \1 form
    assert rewriter.rewrite("/cost/5") == "/$5"
    assert rewriter.rewrite("/none/a") == "/x"  # an unknown group expands to nothing (Rust)
    assert rewriter.rewrite("/api/v1") == "/"  # full match only; no match => "/"
    assert PathRewriter([]).rewrite("/anything") == "/"


def test_direct_forward_searches_the_path():
    rules = DirectForward(["^/healthz$", "metrics"])
    assert rules.matches(RequestInfo("http1", "a", "/healthz"))
    assert rules.matches(RequestInfo("http2", "a", "/x/metrics/y"))
    assert not rules.matches(RequestInfo("http1", "a", "/healthz/x"))
    assert not DirectForward([])


# --------------------------------------------------------------------------- config


def _egress(**extra: object) -> dict[str, object]:
    return {"add_egress": [{"mapping": {"in": {"port": 40001}, "out": {"port": 8080}}, "no_ra": True, **extra}]}


def _ingress(**extra: object) -> dict[str, object]:
    return {"add_ingress": [{"http_proxy": {"proxy_listen": {"port": 41000}},
                             "verify": {"as_addr": "http://as:8080/"}, **extra}]}


def test_compat_2_2_4_config():
    egress = parse_config(_egress(compat="2.2.4", decap_from_http={"allow_non_tng_traffic_regexes": ["^/health"]}))
    sec = egress.egress[0].security
    assert sec.h2c is not None and sec.ohttp is None and sec.alpn == "h2" and sec.binding == "A" and sec.multiplex
    assert egress.egress[0].direct_forward == ("^/health",)
    ingress = parse_config(_ingress(compat="2.2.4", encap_in_http={"path_rewrites": [
        {"match_regex": "/(.*)", "substitution": "/t/$1"}]})).ingress[0].security
    assert ingress.h2c is not None and ingress.h2c.path_rewrites == (("/(.*)", "/t/$1"),)
    plain = parse_config(_ingress(compat="2.2.4")).ingress[0].security
    assert plain.h2c is None and plain.alpn == "h2" and plain.binding == "A"
    # without compat, the same key is OHTTP (its meaning since TNG 2.2.5)
    assert parse_config(_ingress(encap_in_http={})).ingress[0].security.ohttp is not None
    assert parse_config(_ingress(encap_in_http={})).ingress[0].security.binding == "B"


@pytest.mark.parametrize("config, where", [
    (_egress(compat="2.2.5"), "add_egress[0].compat"),
    (_egress(compat="2.2.4", rats_tls={"multiplex": True}), "add_egress[0].rats_tls"),
    (_egress(compat="2.2.4", ohttp={}), "add_egress[0].ohttp"),
    (_egress(compat="2.2.4", encap_in_http={}), "add_egress[0].encap_in_http"),
    (_ingress(compat="2.2.4", decap_from_http={}), "add_ingress[0].decap_from_http"),
    (_egress(compat="2.2.4", decap_from_http={"path_rewrites": []}), "add_egress[0].decap_from_http.path_rewrites"),
    (_egress(compat="2.2.4", decap_from_http={"allow_non_tng_traffic_regexes": ["a"]},
             direct_forward=[{"http_path": "b"}]), "allow_non_tng_traffic_regexes"),
    (_ingress(compat="2.2.4", encap_in_http={"path_rewrites": [{"match_regex": "(", "substitution": ""}]}),
     "match_regex"),
])
def test_compat_config_errors_name_the_path(config, where):
    with pytest.raises(GatewayConfigError) as err:
        parse_config(config)
    assert where in str(err.value)


def test_derived_egress_for_2_2_4_clients():
    derived = derive_egress_config({"MODEL_SERVICE_PORT": 8080}, protocol="h2c-2.2.4")
    entry = parse_config(derived).egress[0]
    assert entry.security.h2c is not None and entry.security.binding == "A"
    assert entry.netfilter is not None and entry.netfilter.capture_dst[0].port == 8080
