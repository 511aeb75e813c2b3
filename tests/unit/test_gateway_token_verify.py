"""Attestation-token checks against tokens signed by the Trustee stand-in's token service (Simple,
RS384 and ES256, chain in jwk.x5c under a test CA) and a hand-made EAR token."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jwcrypto import jwk as jose_jwk
from jwcrypto import jws as jose_jws

from gateway.as_protocol import attestation_request, error_text, wants_flat_shape
from gateway.errors import VerificationFailed
from gateway.ratls_cert import EvidenceRecord
from gateway.token_verify import EAR_PROFILE, load_anchors, verify_token
from trustee_standin.ca import load_or_create
from trustee_standin.tokens import TokenService, public_jwk

NOW = 1_800_000_000.0
RUNTIME = {"pubkey-hash": "ggFYIAAA"}


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return load_or_create(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def anchors(ca):
    return load_anchors(ca.root_cert_path.read_bytes())


def _service(ca, duration=300.0):
    return TokenService(ca.signers, duration_s=duration, leeway_s=0, clock=lambda: NOW,
                        policies={"default": "package policy", "gpu": "package gpu"})


def _issue(ca, alg="RS384", runtime=None, policies=("default",)):
    return _service(ca).issue(tee_claims=[("sample", {"svn": "1"})], runtime_data=runtime or RUNTIME,
                              init_data=None, policy_ids=list(policies), alg=alg)


@pytest.mark.parametrize("alg", ["RS384", "ES256"])
def test_valid_simple_token(ca, anchors, alg):
    verdict = verify_token(_issue(ca, alg), anchors=anchors, policy_ids=["default"],
                           expected_runtime_data=RUNTIME, now=NOW + 10)
    assert verdict.exp == NOW + 300 and verdict.tee == "sample" and verdict.policy_ids == ("default",)
    # the signer's own certificate as the anchor works too (what GET /certificate returns first)
    leaf_only = [ca.signers[alg].chain[0]]
    verify_token(_issue(ca, alg), anchors=leaf_only, policy_ids=["default"], expected_runtime_data=RUNTIME,
                 now=NOW + 10)


@pytest.mark.parametrize(("kwargs", "reason"), [
    ({"now": NOW + 301}, "expired"),
    ({"now": NOW - 100}, "nbf"),
    ({"policy_ids": ["default", "gpu"]}, "policy id"),
    ({"expected_runtime_data": {"pubkey-hash": "other"}}, "runtime data does not match"),
    ({"expected_runtime_data": {"nonce": "x", **RUNTIME}}, "'nonce' differs"),
])
def test_refusals(ca, anchors, kwargs, reason):
    args = {"anchors": anchors, "policy_ids": ["default"], "expected_runtime_data": RUNTIME, "now": NOW + 1,
            **kwargs}
    with pytest.raises(VerificationFailed, match=reason):
        verify_token(_issue(ca), **args)


def test_wrong_anchor_and_tampering(ca, anchors, tmp_path):
    other = load_anchors(load_or_create(tmp_path / "other").root_cert_path.read_bytes())
    with pytest.raises(VerificationFailed, match="trusted certificate"):
        verify_token(_issue(ca), anchors=other, policy_ids=["default"], expected_runtime_data=RUNTIME, now=NOW)
    header, payload, sig = _issue(ca).split(".")
    claims = json.loads(jose_jws.base64url_decode(payload))
    claims["evaluation-reports"].append({"policy-id": "gpu"})
    forged = ".".join([header, jose_jws.base64url_encode(json.dumps(claims)), sig])
    with pytest.raises(VerificationFailed, match="signature"):
        verify_token(forged, anchors=anchors, policy_ids=["gpu"], expected_runtime_data=RUNTIME, now=NOW)


def _sign(ca, claims, header_extra=None, alg="ES256"):
    signer = ca.signers[alg]
    header = {"alg": alg, "typ": "JWT", "jwk": public_jwk(signer), **(header_extra or {})}
    token = jose_jws.JWS(json.dumps(claims).encode())
    token.add_signature(jose_jwk.JWK.from_pyca(signer.key), alg=alg, protected=json.dumps(header))
    return token.serialize(compact=True)


def test_ear_token(ca, anchors):
    sub = {"ear.status": "affirming", "ear.appraisal-policy-id": "default",
           "ear.veraison.annotated-evidence": {"runtime_data_claims": RUNTIME}}
    claims = {"eat_profile": EAR_PROFILE, "exp": NOW + 60, "nbf": NOW, "submods": {"cpu0": sub}}
    verdict = verify_token(_sign(ca, claims), anchors=anchors, policy_ids=["default"],
                           expected_runtime_data=RUNTIME, now=NOW)
    assert verdict.policy_ids == ("default",)
    warning = {**claims, "submods": {"cpu0": {**sub, "ear.status": "warning"}}}
    with pytest.raises(VerificationFailed, match="not 'affirming'"):
        verify_token(_sign(ca, warning), anchors=anchors, policy_ids=["default"], expected_runtime_data=RUNTIME,
                     now=NOW)


def test_header_key_must_match_chain(ca, anchors):
    other_jwk = json.loads(jose_jwk.JWK.generate(kty="EC", crv="P-256").export_public())
    jwk = {**other_jwk, "alg": "ES256", "x5c": public_jwk(ca.signers["ES256"])["x5c"]}
    claims = {"exp": NOW + 60, "evaluation-reports": [{"policy-id": "default"}],
              "customized_claims": {"runtime_data": RUNTIME}}
    with pytest.raises(VerificationFailed, match="does not match the key of its x5c"):
        verify_token(_sign(ca, claims, {"jwk": jwk}), anchors=anchors, policy_ids=["default"],
                     expected_runtime_data=RUNTIME, now=NOW)


def test_as_request_shapes():
    record = EvidenceRecord(tee_type="sample", aa_evidence=b'{"svn":"1"}', aa_runtime_data='{"pubkey-hash":"x"}')
    new = attestation_request(record, ["default"])
    assert new["verification_requests"][0]["runtime_data"] == {"structured": {"pubkey-hash": "x"}}
    assert new["verification_requests"][0]["evidence"] == "eyJzdm4iOiIxIn0"
    flat = attestation_request(record, ["default"], "flat")
    assert flat["tee"] == "sample" and flat["runtime_data_hash_algorithm"] == "sha384"
    assert wants_flat_shape(400, "Json deserialize error: missing field `tee`")
    assert not wants_flat_shape(400, "unknown policy")
    assert error_text(b'{"detail": "bad\\nthing"}') == "bad thing"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.builds(lambda a, b, c: f"{a}.{b}.{c}", st.text(max_size=60),
                                         st.text(max_size=60), st.text(max_size=60)))
def test_fuzz_tokens(token):
    try:
        verify_token(token, anchors=[], policy_ids=["default"], expected_runtime_data=RUNTIME, now=NOW)
    except VerificationFailed:
        pass
