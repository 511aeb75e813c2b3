"""Property tests: every KBS parser turns arbitrary input into a value or a clean, typed error."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation_agent.errors import JweError, ProtocolError
from attestation_agent.kbs import cookies, jwe, messages
from attestation_agent.kbs import token as token_codec
from attestation_agent.kbs.dialect import Dialect, expected_version
from attestation_agent.kbs.encoding import b64std_decode, b64url_decode, b64url_encode
from attestation_agent.kbs.resource import ResourcePath
from attestation_agent.kbs.tee_key import KeyAlgorithm, TeeKey, public_key_from_jwk

KEY = TeeKey.generate(KeyAlgorithm.RSA1_5)
EC_KEY = TeeKey.generate(KeyAlgorithm.ECDH_ES_A256KW)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=400) | st.text(max_size=400).map(str.encode))
def test_jwe_decrypt_never_crashes_on_bytes(data):
    for key in (KEY, EC_KEY):
        try:
            jwe.decrypt_resource(data, key)
        except JweError:
            pass


jwe_members = st.fixed_dictionaries({
    "protected": st.sampled_from(['{"alg":"RSA1_5","enc":"A256GCM"}', "eyJhbGciOiJSU0ExXzUiLCJlbmMiOiJBMjU2R0NNIn0",
                                  "e30", "{}", "not json"]) | st.text(max_size=30),
    "encrypted_key": st.binary(max_size=300).map(b64url_encode) | st.text(max_size=20),
    "iv": st.binary(min_size=0, max_size=16).map(b64url_encode),
    "ciphertext": st.binary(max_size=80).map(b64url_encode),
    "tag": st.binary(max_size=20).map(b64url_encode) | st.just(""),
})


@FUZZ
@given(jwe_members, st.dictionaries(st.text(max_size=8), json_values, max_size=2))
def test_jwe_decrypt_structured_garbage(members, extra):
    body = {**extra, **members}
    for key in (KEY, EC_KEY):
        try:
            jwe.decrypt_resource(json.dumps(body), key)
        except JweError:
            pass


@FUZZ
@given(json_values, st.sampled_from(list(Dialect)))
def test_server_parsers_reject_cleanly(value, dialect):
    body = json.dumps(value)
    for parse in (lambda b: messages.parse_auth_request(b, dialect),
                  lambda b: messages.parse_attest_request(b, dialect), messages.parse_challenge,
                  messages.parse_attest_response, messages.parse_additional_evidence):
        try:
            parse(body)
        except ProtocolError:
            pass
    assert messages.parse_error(body) is None or isinstance(messages.parse_error(body).detail, str)


@FUZZ
@given(st.text(max_size=300))
def test_token_claims_clean_errors(text):
    try:
        token_codec.unverified_claims(text)
        token_codec.expiry(text)
    except ProtocolError:
        pass


@FUZZ
@given(json_values, json_values)
def test_token_with_arbitrary_claims(header, claims):
    token = ".".join([b64url_encode(json.dumps(header).encode()), b64url_encode(json.dumps(claims).encode()), "sig"])
    try:
        exp = token_codec.expiry(token)
        assert exp is None or isinstance(exp, float)
    except ProtocolError:
        pass


@FUZZ
@given(st.lists(st.text(max_size=60), max_size=4))
def test_cookie_parsing_only_returns_safe_ids(values):
    sid = cookies.session_id_from_set_cookie(values)
    if sid is not None:
        assert cookies.cookie_header(sid) == f"kbs-session-id={sid}"
        assert all(c.isalnum() or c in "_-" for c in sid)


def test_duplicate_set_cookie_headers_are_tolerated():
    sid = "0123456789abcdef0123456789abcdef"
    header = f"kbs-session-id={sid}; Expires=Mon, 23 Nov 2026 12:00:00 GMT"
    assert cookies.session_id_from_set_cookie([header, header]) == sid
    assert cookies.session_id_from_set_cookie(["other=1", "garbage;;=", header]) == sid
    assert cookies.session_id_from_set_cookie(['kbs-session-id="a b"; x']) is None


@FUZZ
@given(st.text(max_size=100))
def test_resource_path_and_b64(text):
    try:
        path = ResourcePath.parse(text)
        assert ".." not in str(path).split("/")
        assert str(ResourcePath.parse(str(path))) == str(path)
    except ValueError:
        pass
    for decode in (b64url_decode, b64std_decode):
        try:
            decode(text)
        except ValueError:
            pass
    assert expected_version(text) is None or expected_version(text).count(".") == 2


@FUZZ
@given(st.dictionaries(st.sampled_from(["kty", "alg", "n", "e", "crv", "x", "y"]),
                       st.text(max_size=40) | st.binary(max_size=64).map(b64url_encode), max_size=7))
def test_tee_pubkey_validation(jwk):
    try:
        public_key_from_jwk(jwk)
    except ValueError:
        pass


def test_resource_path_rejects_traversal():
    for bad in ("../etc/passwd", "a/../b", "a/b", "a/b/c/d", "a//b", ".hidden/x/y", "a/b/c d", "a/b/%2e%2e"):
        try:
            ResourcePath.parse(bad)
        except ValueError as exc:
            assert "resource" in str(exc)
        else:
            raise AssertionError(f"{bad!r} was accepted")


def test_expected_version_from_trustee_detail():
    detail = ("Attestation error: RCAR handshake Auth failed: KBS Client Protocol Version Mismatch: "
              "expect =0.4.0 while the request is 0.1.0")
    assert expected_version(detail) == "0.4.0"
    assert expected_version("Attestation error: RCAR handshake Auth failed: deserialize Request") is None
