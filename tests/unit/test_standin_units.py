"""Unit tests of the Trustee stand-in's pure parts: policies, claims, tokens, sessions, faults, config."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from agents.errors import ConfigError
from attestation_agent.kbs.canonical import binding_v0_1_0
from attestation_agent.kbs.dialect import Dialect
from attestation_agent.kbs.encoding import b64std_encode
from attestation_agent.kbs.resource import ResourcePath
from tests.conftest import UPSTREAM
from trustee_standin import ca
from trustee_standin.appraisal import appraise
from trustee_standin.config import StandinConfig
from trustee_standin.faults import Fault, FaultInjector
from trustee_standin.policies import SIMPLE_DEFAULT_POLICY, policy_hash, resource_allowed
from trustee_standin.repository import ResourceRepository
from trustee_standin.sessions import SessionStore
from trustee_standin.tokens import TokenError, TokenService, flatten_claims
from trustee_standin.verifiers import VerificationError, register_verifier, unregister_verifier
from trustee_standin.verifiers.sample import verify_sample

TRUSTEE = UPSTREAM / "openanolis-trustee-v1.5.2"


def test_default_policy_text_is_byte_identical_to_trustee():
    upstream = (TRUSTEE / "policies/as-simple_default_policy.rego").read_bytes()
    assert SIMPLE_DEFAULT_POLICY.encode("utf-8") == upstream
    token = json.loads((TRUSTEE / "docs/gateway-audit-simple-token-claims.sample-tee.json").read_text())
    assert policy_hash(SIMPLE_DEFAULT_POLICY) == token["evaluation-reports"][0]["policy-hash"]


def test_sample_verifier_and_flattening_reproduce_a_real_trustee_token():
    token = json.loads((TRUSTEE / "docs/gateway-audit-simple-token-claims.sample-tee.json").read_text())
    runtime = token["customized_claims"]["runtime_data"]
    digest = binding_v0_1_0(runtime["nonce"], runtime["tee-pubkey"])
    evidence = {"svn": "1", "report_data": b64std_encode(digest)}
    claims = verify_sample(evidence, digest)
    tcb = json.dumps(flatten_claims("sample", claims), sort_keys=True, separators=(",", ":"))
    assert tcb == token["tcb-status"]


@pytest.mark.parametrize("evidence", [
    {"svn": "1", "report_data": b64std_encode(bytes(48))},        # wrong digest
    {"svn": "1", "report_data": b64std_encode(bytes(48) + bytes(16))},  # padded to 64: sample is not padded
    {"svn": "1"},                                                   # no report data
    {"svn": 1, "report_data": ""},                                  # svn must be a string
    {"svn": "1", "report_data": "not base64!"},
    "a string",
])
def test_sample_verifier_rejects(evidence):
    with pytest.raises(VerificationError):
        verify_sample(evidence, hashlib.sha384(b"x").digest())


def test_flatten_nested_claims():
    flat = flatten_claims("tdx", {"quote": {"body": {"mr_td": "aa"}, "header": {"v": 4}}, "report_data": "r"})
    assert flat == {"tdx.quote.body.mr_td": "aa", "tdx.quote.header.v": 4, "report_data": "r",
                    "init_data": ""}


def test_resource_policy_globs():
    path = ResourcePath("default", "aliyun", "model-key")
    assert resource_allowed("allow_all", path) and not resource_allowed("deny_all", path)
    assert resource_allowed(["default/aliyun/*"], path)
    assert resource_allowed(["*/*/model-*"], path)
    assert not resource_allowed(["default/*"], path)           # '*' does not cross '/'
    assert not resource_allowed(["default/aliyun/alt-*", "other/*/*"], path)
    assert not resource_allowed([], path)


def test_pluggable_verifier_registry():
    def ok(evidence, expected):
        return {"echo": evidence, "report_data": (expected or b"").hex()}

    register_verifier("hygondcu", ok)
    try:
        assert appraise("hygondcu", 1, b"\x01", None)["echo"] == 1
        with pytest.raises(VerificationError, match="not allowed"):
            appraise("hygondcu", 1, b"\x01", frozenset({"sample"}))
    finally:
        unregister_verifier("hygondcu")
    with pytest.raises(VerificationError, match="not implemented"):
        appraise("hygondcu", 1, b"\x01", None)


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory):
    return ca.load_or_create(tmp_path_factory.mktemp("ca"))


def test_ca_files_and_reload(test_ca):
    directory = test_ca.root_cert_path.parent
    assert (os.stat(directory / "token-rs384.key").st_mode & 0o777) == 0o600
    again = ca.load_or_create(directory)
    assert again.root == test_ca.root
    for signer in again.signers.values():
        signer.chain[0].verify_directly_issued_by(again.root)
    (directory / "token-es256.key").write_text("garbage")
    with pytest.raises(ConfigError, match="incomplete or corrupt"):
        ca.load_or_create(directory)


def test_token_issue_and_verify(tmp_path):
    test_ca = ca.load_or_create(tmp_path / "ca")
    now = [time.time()]
    service = TokenService(test_ca.signers, duration_s=300, leeway_s=0, clock=lambda: now[0],
                           policies={"default": "p"})
    for alg in ("RS384", "ES256"):
        token = service.issue(tee_claims=[("sample", {"svn": "1"})], runtime_data={"a": 1}, init_data=None,
                              policy_ids=["default"], alg=alg)
        claims = service.verify(token)
        assert claims["evaluation-reports"] == [{"policy-id": "default", "policy-hash": policy_hash("p")}]
        assert claims["tcb-status"] == '{"init_data":"","report_data":"","sample.svn":"1"}'
    header = token.split(".")[0]
    with pytest.raises(TokenError):
        service.verify(header + ".e30.")  # alg none-style forgery: empty signature
    now[0] += 301
    with pytest.raises(TokenError, match="expired"):
        service.verify(token)


def test_session_store_expiry_and_cookie():
    now = [1_700_000_000.0]
    store = SessionStore(10, lambda: now[0])
    session = store.create("sample", Dialect.V0_1_0)
    assert store.get(session.id) is session and len(session.id) == 32
    assert session.set_cookie_value() == f"kbs-session-id={session.id}; Expires=Tue, 14 Nov 2023 22:13:30 GMT"
    now[0] += 10
    assert store.get(session.id) is None and len(store) == 0
    assert store.get(None) is None


def test_fault_validation_and_counting():
    with pytest.raises(ValueError):
        Fault.from_json({"route": "auth", "mode": "status", "extra": 1})
    with pytest.raises(ValueError):
        Fault(route="auth", mode="hang", seconds=-1)
    with pytest.raises(ValueError):
        Fault(route="auth", mode="status", status=99)
    dropped = []
    injector = FaultInjector(lambda: dropped.append(1))
    injector.inject("attest", "status", count=2)
    injector.inject("auth", "garbage")
    assert injector._take("attest") is not None and injector._take("attest") is not None
    assert injector._take("attest") is None
    assert [f["route"] for f in injector.pending()] == ["auth"]


def test_config_validation(tmp_path):
    assert StandinConfig(dialect="0.4.0", repository=tmp_path).dialect is Dialect.V0_4_0  # type: ignore[arg-type]
    for bad in ({"dialect": "0.2.0"}, {"resource_policy": "allow_some"}, {"resource_policy": ["a/b"]},
                {"error_style": "loud"}, {"as_token_alg": "HS256"}, {"session_timeout_s": 0},
                {"attestation_policies": {}}):
        with pytest.raises(ConfigError):
            StandinConfig(repository=tmp_path, **bad)


def test_repository_refuses_symlink_escape(tmp_path: Path):
    outside = tmp_path / "outside"
    outside.write_bytes(b"not yours")
    root = tmp_path / "repo"
    (root / "default" / "aliyun").mkdir(parents=True)
    (root / "default" / "aliyun" / "link").symlink_to(outside)
    repository = ResourceRepository(root)
    with pytest.raises(OSError):
        repository.read(ResourcePath("default", "aliyun", "link"))
    with pytest.raises(OSError):
        repository.read(ResourcePath("default", "aliyun", "missing"))
    repository.write(ResourcePath("r", "t", "g"), b"v")
    assert repository.read(ResourcePath("r", "t", "g")) == b"v"
    assert (os.stat(root / "r" / "t").st_mode & 0o777) == 0o700
