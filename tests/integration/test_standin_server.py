"""The Trustee stand-in over real HTTP on 127.0.0.1: RCAR in both dialects, errors, AS, gateway, faults.

Requests are built with the sans-IO core (``attestation_agent.kbs``) and raw aiohttp, so these
tests check the stand-in against the protocol definitions rather than against our own client.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import stat
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from jwcrypto import jwk as jose_jwk
from jwcrypto import jws as jose_jws
from yarl import URL

from attestation_agent.errors import JweError
from attestation_agent.kbs import messages
from attestation_agent.kbs.canonical import (
    binding_v0_1_0,
    canonical_json,
    device_binding_v0_4_0,
    primary_binding_v0_4_0,
    runtime_data_digest,
)
from attestation_agent.kbs.cookies import cookie_header, session_id_from_set_cookie
from attestation_agent.kbs.dialect import Dialect
from attestation_agent.kbs.encoding import b64std_encode, b64url_decode, b64url_encode
from attestation_agent.kbs.jwe import decrypt_resource
from attestation_agent.kbs.tee_key import KeyAlgorithm, TeeKey
from attestation_agent.kbs.token import unverified_claims
from tests.conftest import UPSTREAM
from trustee_standin import StandinConfig, StandinServer
from trustee_standin.errors import ATTEST_FAILED, AUTH_FAILED
from trustee_standin.server import main

pytestmark = pytest.mark.integration

SECRET = b"model-key-\x00\x01\x02-0123456789abcdef0123456789abcdef"
RESOURCE = "default/aliyun/model-decryption-key"
ERR = "https://github.com/confidential-containers/kbs/errors/"
AS_POLICY_HASH = ("f5abdc02716d85a5ab28cf43500201591bbe4e5600751039462e5ec2e0ae2698"
                  "d637c1f487f58bca182244eefdf3b4b1")


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


# --- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rsa_key() -> TeeKey:
    return TeeKey.generate(KeyAlgorithm.RSA1_5)


@pytest.fixture(scope="module")
def oaep_key(rsa_key: TeeKey) -> TeeKey:
    return TeeKey(KeyAlgorithm.RSA_OAEP_256, rsa_key.private_key)


@pytest.fixture(scope="module")
def ec_key() -> TeeKey:
    return TeeKey.generate(KeyAlgorithm.ECDH_ES_A256KW)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("standin-ca")  # created by the first server, reused by the rest


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repository"
    (path / "default" / "aliyun").mkdir(parents=True)
    (path / "default" / "aliyun" / "model-decryption-key").write_bytes(SECRET)
    return path


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def standin(repo: Path, ca_dir: Path, clock: FakeClock):
    """Factory starting stand-ins on ephemeral ports; all are stopped at teardown."""
    servers: list[StandinServer] = []

    async def factory(dialect: Dialect = Dialect.V0_1_0, **kwargs: Any) -> StandinServer:
        kwargs.setdefault("repository", repo)
        kwargs.setdefault("clock", clock)
        server = StandinServer(StandinConfig(dialect=dialect, ca_dir=ca_dir, **kwargs))
        await server.start()
        servers.append(server)
        return server

    yield factory
    for server in servers:
        await server.stop()


@pytest.fixture
async def http():
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
        yield session


# --- a minimal hand-rolled RCAR flow ----------------------------------------------------------

class Rcar:
    """Result of one handshake: session id, nonce, token (None when /attest failed), last response."""

    def __init__(self) -> None:
        self.session_id: str | None = None
        self.nonce = ""
        self.token: str | None = None
        self.status = 0
        self.body: Any = None
        self.set_cookies: list[str] = []


def sample_evidence(digest: bytes) -> dict[str, str]:
    return {"svn": "1", "report_data": b64std_encode(digest)}


async def rcar(http: aiohttp.ClientSession, base: str, dialect: Dialect, key: TeeKey, *,
               tee: str = "sample", wrong_binding: bool = False, nonce: str | None = None,
               devices: dict[str, Any] | None = None) -> Rcar:
    out = Rcar()
    async with http.post(f"{base}/kbs/v0/auth", json=messages.auth_request(dialect, tee)) as resp:
        assert resp.status == 200, await resp.text()
        out.set_cookies = resp.headers.getall("Set-Cookie")
        out.session_id = session_id_from_set_cookie(out.set_cookies)
        out.nonce = messages.parse_challenge(await resp.read()).nonce
    pub = key.public_jwk()
    additional = ""
    if dialect is Dialect.V0_1_0:
        digest = binding_v0_1_0(out.nonce, pub)
    else:
        if devices:
            d = device_binding_v0_4_0(out.nonce, pub)
            additional = messages.compact_json({tee_: sample_evidence(d) for tee_ in devices})
        digest = primary_binding_v0_4_0(out.nonce, pub, additional)
    if wrong_binding:
        digest = bytes(48)
    body = messages.attest_request(dialect, nonce=nonce or out.nonce, tee_pubkey=pub,
                                   primary_evidence=sample_evidence(digest), additional_evidence=additional)
    assert out.session_id is not None
    async with http.post(f"{base}/kbs/v0/attest", json=body,
                         headers={"Cookie": cookie_header(out.session_id)}) as resp:
        out.status = resp.status
        out.body = await resp.json(content_type=None)
        if resp.status == 200:
            out.token = messages.parse_attest_response(json.dumps(out.body))
    return out


async def get_resource(http: aiohttp.ClientSession, base: str, *, session_id: str | None = None,
                       bearer: str | None = None, path: str = RESOURCE) -> tuple[int, Any]:
    headers = {}
    if session_id:
        headers["Cookie"] = cookie_header(session_id)
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    async with http.get(f"{base}/kbs/v0/resource/{path}", headers=headers) as resp:
        return resp.status, await resp.json(content_type=None)


def kbs_error(body: Any, variant: str) -> str:
    assert isinstance(body, dict) and set(body) == {"type", "detail"}, body
    assert body["type"] == ERR + variant, body
    return body["detail"]


# --- full RCAR + resource -----------------------------------------------------------------------

@pytest.mark.parametrize("dialect", [Dialect.V0_1_0, Dialect.V0_4_0])
@pytest.mark.parametrize("prefix", [False, True])
async def test_full_rcar_and_resource(standin, http, rsa_key, ec_key, dialect, prefix):
    server = await standin(dialect)
    base = server.api_url if prefix else server.url
    key = rsa_key if dialect is Dialect.V0_1_0 else ec_key
    result = await rcar(http, base, dialect, key)
    assert result.status == 200, result.body

    # Cookie exactly like Trustee: 32 hex id, Expires, no Path.
    assert len(result.set_cookies) == 1
    cookie = result.set_cookies[0]
    assert cookie.startswith(f"kbs-session-id={result.session_id}; Expires=") and cookie.endswith(" GMT")
    assert "path" not in cookie.lower()
    assert len(result.session_id) == 32 and int(result.session_id, 16) >= 0
    assert len(base64.b64decode(result.nonce, validate=True)) == 32

    status, body = await get_resource(http, base, session_id=result.session_id)
    assert status == 200, body
    if dialect is Dialect.V0_1_0:
        assert body["protected"] == '{"alg":"RSA1_5","enc":"A256GCM"}' and body["tag"] == ""
    else:
        assert json.loads(b64url_decode(body["protected"]))["alg"] == "ECDH-ES+A256KW" and body["tag"]
    assert decrypt_resource(json.dumps(body), key) == SECRET


@pytest.mark.parametrize("dialect", [Dialect.V0_1_0, Dialect.V0_4_0])
async def test_token_is_a_trustee_simple_token(standin, http, rsa_key, dialect):
    server = await standin(dialect)
    result = await rcar(http, server.url, dialect, rsa_key)
    header = json.loads(b64url_decode(result.token.split(".")[0]))
    assert header["typ"] == "JWT" and header["alg"] == "RS384"
    assert header["jwk"]["kty"] == "RSA" and header["jwk"]["alg"] == "RS384" and header["jwk"]["e"] == "AQAB"
    claims = unverified_claims(result.token)
    fixture = json.loads((UPSTREAM / "openanolis-trustee-v1.5.2/docs/"
                          "gateway-audit-simple-token-claims.sample-tee.json").read_text())
    assert set(claims) == set(fixture)
    assert claims["iss"] == "CoCo-Attestation-Service" and claims["tee"] == "sample"
    assert claims["iat"] == claims["nbf"] and claims["exp"] - claims["iat"] == 300
    assert len(claims["jti"]) == 10 and claims["jti"].isalnum()
    assert claims["evaluation-reports"] == [{"policy-id": "default", "policy-hash": AS_POLICY_HASH}]
    assert claims["evaluation-reports"][0]["policy-hash"] == fixture["evaluation-reports"][0]["policy-hash"]
    pub = rsa_key.public_jwk()
    assert claims["customized_claims"] == {"init_data": None,
                                           "runtime_data": {"nonce": result.nonce, "tee-pubkey": pub}}
    tcb = json.loads(claims["tcb-status"])
    digest = (binding_v0_1_0(result.nonce, pub) if dialect is Dialect.V0_1_0
              else primary_binding_v0_4_0(result.nonce, pub, ""))
    assert tcb == {"init_data": "", "report_data": b64std_encode(digest), "sample.svn": "1"}
    # The token verifies with the key in its own header (Trustee insecure_key) ...
    token = jose_jws.JWS()
    token.deserialize(result.token)
    token.verify(jose_jwk.JWK(**{k: v for k, v in header["jwk"].items() if k != "x5c"}), alg="RS384")


async def test_second_attest_returns_stored_token(standin, http, rsa_key):
    server = await standin()
    result = await rcar(http, server.url, Dialect.V0_1_0, rsa_key)
    async with http.post(f"{server.url}/kbs/v0/attest", data=b"{}",
                         headers={"Cookie": cookie_header(result.session_id)}) as resp:
        assert resp.status == 200
        assert (await resp.json())["token"] == result.token
        assert resp.headers.getall("Set-Cookie")[0].startswith(f"kbs-session-id={result.session_id};")


async def test_0_4_0_additional_device_is_bound_to_device_digest(standin, http, ec_key):
    server = await standin(Dialect.V0_4_0)
    result = await rcar(http, server.url, Dialect.V0_4_0, ec_key, devices={"sampledevice": None})
    assert result.status == 200, result.body
    tcb = json.loads(unverified_claims(result.token)["tcb-status"])
    assert tcb["sample.svn"] == "1" and tcb["sampledevice.svn"] == "1"

    # A device bound to H(P) instead of H(D) is rejected.
    async with http.post(f"{server.url}/kbs/v0/auth",
                         json=messages.auth_request(Dialect.V0_4_0, "sample")) as resp:
        sid = session_id_from_set_cookie(resp.headers.getall("Set-Cookie"))
        nonce = (await resp.json())["nonce"]
    pub = ec_key.public_jwk()
    wrong = messages.compact_json({"sampledevice": sample_evidence(runtime_data_digest({"nonce": nonce}))})
    primary = sample_evidence(primary_binding_v0_4_0(nonce, pub, wrong))
    body = messages.attest_request(Dialect.V0_4_0, nonce=nonce, tee_pubkey=pub, primary_evidence=primary,
                                   additional_evidence=wrong)
    headers = {"Cookie": cookie_header(sid)}
    async with http.post(f"{server.url}/kbs/v0/attest", json=body, headers=headers) as r:
        assert r.status == 500
        assert kbs_error(await r.json(), "AttestationError") == ATTEST_FAILED


# --- /auth errors -----------------------------------------------------------------------------

async def test_version_mismatch_probe_to_0_4_0_names_expected_version(standin, http):
    server = await standin(Dialect.V0_4_0)
    probe = messages.auth_request(Dialect.V0_1_0, "tdx")
    async with http.post(f"{server.api_url}/kbs/v0/auth", json=probe) as resp:
        assert resp.status == 500
        assert "Set-Cookie" not in resp.headers
        detail = kbs_error(await resp.json(), "AttestationError")
    assert detail == (f"{AUTH_FAILED}: KBS Client Protocol Version Mismatch: "
                      "expect =0.4.0 while the request is 0.1.0")


async def test_0_4_0_shaped_auth_to_0_1_0_server_fails_without_expect(standin, http):
    server = await standin(Dialect.V0_1_0)
    async with http.post(f"{server.url}/kbs/v0/auth", json=messages.auth_request(Dialect.V0_4_0, "tdx")) as r:
        assert r.status == 500
        detail = kbs_error(await r.json(), "AttestationError")
    assert detail.startswith(AUTH_FAILED) and "expect =" not in detail
    # ... whereas a 0.1.0-shaped body claiming 0.4.0 parses and gets the version hint.
    body = {"version": "0.4.0", "tee": "sample", "extra-params": ""}
    async with http.post(f"{server.url}/kbs/v0/auth", json=body) as r:
        assert "expect =0.1.0 while the request is 0.4.0" in kbs_error(await r.json(), "AttestationError")


async def test_coco_style_maps_rcar_failures_to_401(standin, http, rsa_key):
    server = await standin(Dialect.V0_4_0, error_style="coco")
    async with http.post(f"{server.url}/kbs/v0/auth", json=messages.auth_request(Dialect.V0_1_0, "tdx")) as r:
        assert r.status == 401
        assert "expect =0.4.0" in kbs_error(await r.json(), "AttestationError")
    async with http.post(f"{server.url}/kbs/v0/attest", json={}) as r:
        assert r.status == 401
        detail = kbs_error(await r.json(), "AttestationError")
        assert detail.startswith(ATTEST_FAILED + ": ") and "session" in detail


async def test_auth_rejects_unknown_tee_and_garbage(standin, http):
    server = await standin()
    for body in (b'{"version":"0.1.0","tee":"nvidia","extra-params":""}', b"not json", b"[]"):
        async with http.post(f"{server.url}/kbs/v0/auth", data=body) as r:
            assert r.status == 500
            assert kbs_error(await r.json(), "AttestationError") == f"{AUTH_FAILED}: deserialize Request"


# --- /attest errors -----------------------------------------------------------------------------

@pytest.mark.parametrize("dialect", [Dialect.V0_1_0, Dialect.V0_4_0])
async def test_wrong_report_data_binding_is_rejected(standin, http, rsa_key, dialect):
    server = await standin(dialect)
    result = await rcar(http, server.url, dialect, rsa_key, wrong_binding=True)
    assert result.status == 500
    assert kbs_error(result.body, "AttestationError") == ATTEST_FAILED  # 1.5: no cause leaks
    status, body = await get_resource(http, server.url, session_id=result.session_id)
    assert status == 401 and kbs_error(body, "TokenNotFound") == "Attestation Token not found"


async def test_0_4_0_nonce_mismatch_is_rejected(standin, http, ec_key):
    server = await standin(Dialect.V0_4_0)
    other = base64.b64encode(os.urandom(32)).decode()
    result = await rcar(http, server.url, Dialect.V0_4_0, ec_key, nonce=other)
    assert result.status == 500 and kbs_error(result.body, "AttestationError") == ATTEST_FAILED


async def test_attest_with_unknown_or_missing_cookie(standin, http, rsa_key):
    server = await standin()
    body = messages.attest_request(Dialect.V0_1_0, nonce="x", tee_pubkey=rsa_key.public_jwk(),
                                   primary_evidence={"svn": "1"})
    for headers in ({"Cookie": cookie_header("0" * 32)}, {}):
        async with http.post(f"{server.url}/kbs/v0/attest", json=body, headers=headers) as r:
            assert r.status == 500 and kbs_error(await r.json(), "AttestationError") == ATTEST_FAILED


async def test_ec_key_rejected_by_0_1_0_and_unknown_tee_has_no_verifier(standin, http, ec_key, rsa_key):
    server = await standin(Dialect.V0_1_0)
    assert (await rcar(http, server.url, Dialect.V0_1_0, ec_key)).status == 500
    assert (await rcar(http, server.url, Dialect.V0_1_0, rsa_key, tee="tdx")).status == 500
    restricted = await standin(Dialect.V0_1_0, allowed_tees=frozenset({"tdx"}))
    assert (await rcar(http, restricted.url, Dialect.V0_1_0, rsa_key)).status == 500


async def test_expired_session(standin, http, rsa_key, clock):
    server = await standin(session_timeout_s=10, token_duration_s=3600)
    result = await rcar(http, server.url, Dialect.V0_1_0, rsa_key)
    clock.now += 11
    status, body = await get_resource(http, server.url, session_id=result.session_id)
    assert status == 401 and kbs_error(body, "TokenNotFound") == "Attestation Token not found"
    async with http.post(f"{server.url}/kbs/v0/attest", json={},
                         headers={"Cookie": cookie_header(result.session_id)}) as r:
        assert r.status == 500
    # The bearer token outlives the session.
    status, body = await get_resource(http, server.url, bearer=result.token)
    assert status == 200 and decrypt_resource(json.dumps(body), rsa_key) == SECRET


async def test_stored_token_expiry_gives_token_verifier_error(standin, http, rsa_key, clock):
    server = await standin(session_timeout_s=3600, token_duration_s=60)
    result = await rcar(http, server.url, Dialect.V0_1_0, rsa_key)
    clock.now += 60 + 59  # inside jsonwebtoken's default 60 s leeway
    assert (await get_resource(http, server.url, session_id=result.session_id))[0] == 200
    clock.now += 2
    status, body = await get_resource(http, server.url, session_id=result.session_id)
    assert status == 401 and kbs_error(body, "TokenVerifierError") == "Token Verifier error"


# --- resource auth, policy, backend ------------------------------------------------------------

async def test_bearer_token_auth_and_tampering(standin, http, rsa_key, clock):
    server = await standin(token_leeway_s=0)
    result = await rcar(http, server.url, Dialect.V0_1_0, rsa_key)
    status, body = await get_resource(http, server.url, bearer=result.token)
    assert status == 200 and decrypt_resource(json.dumps(body), rsa_key) == SECRET

    header, payload, signature = result.token.split(".")
    claims = json.loads(b64url_decode(payload))
    claims["customized_claims"]["runtime_data"]["tee-pubkey"]["n"] = b64url_encode(os.urandom(256))
    forged = ".".join([header, b64url_encode(json.dumps(claims).encode()), signature])
    flipped = result.token[:-4] + ("AAAA" if not result.token.endswith("AAAA") else "BBBB")
    for bad in (forged, flipped, "not-a-token", "a.b.c"):
        status, body = await get_resource(http, server.url, bearer=bad)
        assert status == 401 and kbs_error(body, "TokenVerifierError") == "Token Verifier error"
    # A token signed by someone else's key (self-signed with its own jwk in the header) is refused.
    other = TeeKey.generate(KeyAlgorithm.RSA1_5).private_key
    self_signed = jose_jws.JWS(b64url_decode(payload))
    self_signed.add_signature(jose_jwk.JWK.from_pyca(other), alg="RS384",
                              protected=json.dumps({"alg": "RS384", "typ": "JWT"}))
    status, _ = await get_resource(http, server.url, bearer=self_signed.serialize(compact=True))
    assert status == 401

    status, body = await get_resource(http, server.url)
    assert status == 401 and kbs_error(body, "TokenNotFound") == "Attestation Token not found"
    clock.now += 301
    status, body = await get_resource(http, server.url, bearer=result.token)
    assert status == 401 and kbs_error(body, "TokenVerifierError")


async def test_policy_deny_is_403_and_leaks_nothing(standin, http, rsa_key):
    server = await standin(resource_policy="deny_all")
    result = await rcar(http, server.url, Dialect.V0_1_0, rsa_key)
    async with http.get(f"{server.url}/kbs/v0/resource/{RESOURCE}",
                        headers={"Cookie": cookie_header(result.session_id)}) as r:
        raw = await r.read()
        assert r.status == 403
    assert json.loads(raw) == {"type": ERR + "PolicyDeny", "detail": "Access denied by policy"}
    assert SECRET not in raw and b"ciphertext" not in raw


async def test_policy_allow_list(standin, http, repo, rsa_key):
    (repo / "other" / "t").mkdir(parents=True)
    (repo / "other" / "t" / "k").write_bytes(b"x")
    server = await standin(resource_policy=["default/aliyun/*"])
    result = await rcar(http, server.url, Dialect.V0_1_0, rsa_key)
    assert (await get_resource(http, server.url, session_id=result.session_id))[0] == 200
    status, body = await get_resource(http, server.url, session_id=result.session_id, path="other/t/k")
    assert status == 403 and kbs_error(body, "PolicyDeny")


async def test_missing_resource_is_plugin_internal_error(standin, http, rsa_key):
    server = await standin()
    result = await rcar(http, server.url, Dialect.V0_1_0, rsa_key)
    status, body = await get_resource(http, server.url, session_id=result.session_id,
                                      path="default/aliyun/nope")
    assert status == 500 and kbs_error(body, "PluginInternalError") == "Plugin internal error"


async def test_rsa_oaep_key_on_0_1_0_fails_at_resource_time(standin, http, oaep_key):
    server = await standin(Dialect.V0_1_0)
    result = await rcar(http, server.url, Dialect.V0_1_0, oaep_key)
    assert result.status == 200  # Trustee 1.5 accepts any RSA alg at /attest ...
    status, body = await get_resource(http, server.url, session_id=result.session_id)
    assert status == 400 and kbs_error(body, "JweError") == "JWE failed"  # ... and fails here


async def test_rsa_oaep_key_on_0_4_0_works(standin, http, oaep_key):
    server = await standin(Dialect.V0_4_0)
    result = await rcar(http, server.url, Dialect.V0_4_0, oaep_key)
    status, body = await get_resource(http, server.url, session_id=result.session_id)
    assert status == 200 and decrypt_resource(json.dumps(body), oaep_key) == SECRET


@pytest.mark.parametrize("raw_path", [
    "/kbs/v0/resource/../../../etc/passwd",
    "/kbs/v0/resource/default/../aliyun/model-decryption-key",
    "/kbs/v0/resource/default/aliyun%2F..%2F../model-decryption-key",
    "/kbs/v0/resource/default%2Faliyun/model-decryption-key/x",
    "/kbs/v0/resource/default/aliyun/model-decryption-key/extra",
    "/kbs/v0/resource/default/aliyun",
    "/kbs/v0/resource/default/.aliyun/model-decryption-key",
    "/kbs/v0/resource/default/aliyun/%2e%2e",
    "/kbs/v0/resource/default//model-decryption-key",
])
async def test_path_traversal_is_rejected(standin, http, rsa_key, raw_path):
    server = await standin()
    result = await rcar(http, server.url, Dialect.V0_1_0, rsa_key)
    url = URL(server.url + raw_path, encoded=True)
    async with http.get(url, headers={"Cookie": cookie_header(result.session_id)}) as r:
        raw = await r.read()
        assert r.status == 404, raw
    assert SECRET not in raw and b"ciphertext" not in raw
    if raw.startswith(b"{"):
        kbs_error(json.loads(raw), "InvalidRequestPath")


async def test_unknown_plugin_and_wrong_methods(standin, http):
    server = await standin()
    for base in (server.url, server.api_url):
        async with http.get(f"{base}/kbs/v0/nonsense/x") as r:
            assert r.status == 404
            assert kbs_error(await r.json(), "PluginNotFound") == "Plugin nonsense not found"
        for method, path in (("GET", "auth"), ("GET", "attest"), ("PUT", f"resource/{RESOURCE}"),
                             ("POST", "resources")):
            async with http.request(method, f"{base}/kbs/v0/{path}") as r:
                assert r.status == 405


async def test_oversized_request_is_413(standin, http):
    server = await standin()
    big = b'{"version":"0.1.0","tee":"sample","extra-params":"' + b"A" * (1024 * 1024) + b'"}'
    async with http.post(f"{server.url}/kbs/v0/auth", data=big) as r:
        assert r.status == 413
    assert server.state.sessions.__len__() == 0


# --- admin, listing ------------------------------------------------------------------------------

async def test_admin_write_list_and_delete(standin, http, repo, rsa_key):
    admin_key = ed25519.Ed25519PrivateKey.generate()
    pem = admin_key.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    server = await standin(admin_public_key_pem=pem)
    token = jose_jws.JWS(json.dumps({"exp": int(time.time()) + 60}).encode())
    eddsa = json.dumps({"alg": "EdDSA"})
    token.add_signature(jose_jwk.JWK.from_pyca(admin_key), alg="EdDSA", protected=eddsa)
    good = {"Authorization": f"Bearer {token.serialize(compact=True)}"}

    url = f"{server.api_url}/kbs/v0/resource/default/aliyun/crag-master-key"
    async with http.post(url, data=b"alt-secret") as r:
        assert r.status == 401 and kbs_error(await r.json(), "AdminAuth").startswith("Admin auth error")
    other = ed25519.Ed25519PrivateKey.generate()
    forged = jose_jws.JWS(b"{}")
    forged.add_signature(jose_jwk.JWK.from_pyca(other), alg="EdDSA", protected=eddsa)
    bad = {"Authorization": f"Bearer {forged.serialize(True)}"}
    async with http.post(url, data=b"alt-secret", headers=bad) as r:
        assert r.status == 401
    async with http.post(url, data=b"alt-secret", headers=good) as r:
        assert r.status == 200
    stored = repo / "default" / "aliyun" / "crag-master-key"
    assert stored.read_bytes() == b"alt-secret" and stat.S_IMODE(stored.stat().st_mode) == 0o600
    assert not [p for p in stored.parent.iterdir() if p.name.endswith(".tmp")]

    async with http.get(f"{server.url}/kbs/v0/resources?type=aliyun") as r:
        rows = await r.json()
    row = {"repository_name": "default", "resource_type": "aliyun", "resource_tag": "crag-master-key"}
    assert row in rows
    assert len(rows) == 2

    result = await rcar(http, server.url, Dialect.V0_1_0, rsa_key)
    status, body = await get_resource(http, server.url, session_id=result.session_id,
                                      path="default/aliyun/crag-master-key")
    assert status == 200 and decrypt_resource(json.dumps(body), rsa_key) == b"alt-secret"

    async with http.delete(url, headers=good) as r:
        assert r.status == 200
    assert not stored.exists()


async def test_insecure_admin(standin, http, repo):
    server = await standin(insecure_admin=True)
    async with http.post(f"{server.url}/kbs/v0/resource/r/t/g", data=b"v") as r:
        assert r.status == 200
    assert (repo / "r" / "t" / "g").read_bytes() == b"v"
    async with http.post(f"{server.url}/kbs/v0/resource/r/t/..", data=b"v") as r:
        assert r.status == 404


# --- gateway -------------------------------------------------------------------------------------

async def test_duplicate_set_cookie_under_api(standin, http):
    server = await standin(duplicate_set_cookie=True)
    body = messages.auth_request(Dialect.V0_1_0, "sample")
    async with http.post(f"{server.api_url}/kbs/v0/auth", json=body) as r:
        cookies = r.headers.getall("Set-Cookie")
    assert len(cookies) == 2 and cookies[0] == cookies[1]
    async with http.post(f"{server.url}/kbs/v0/auth", json=body) as r:
        assert len(r.headers.getall("Set-Cookie")) == 1


@pytest.mark.parametrize("dialect", [Dialect.V0_1_0, Dialect.V0_4_0])
async def test_health_and_services_health(standin, http, dialect):
    server = await standin(dialect)
    async with http.get(f"{server.api_url}/health") as r:
        assert r.status == 200 and await r.json() == {"status": "ok"}
    async with http.get(f"{server.api_url}/services-health") as r:
        assert r.status == 200
        health = await r.json()
    assert set(health) == {"gateway", "kbs", "as", "rvps"}
    assert health["gateway"]["status"] == "ok" and set(health["gateway"]) == {"status", "timestamp"}
    for name in ("kbs", "as", "rvps"):
        assert set(health[name]) == {"status", "message", "timestamp"}
        assert health[name]["status"] == "ok"
        assert time.strptime(health[name]["timestamp"], "%Y-%m-%dT%H:%M:%SZ")
    assert dialect.value in health["kbs"]["message"]

    skewed = await standin(dialect, gateway_probe_version="0.1.0" if dialect is Dialect.V0_4_0 else "0.4.0")
    async with http.get(f"{skewed.api_url}/services-health") as r:
        assert r.status == 200
        assert (await r.json())["kbs"] == {"status": "error", "message": "kbs auth request failed",
                                          "timestamp": health["kbs"]["timestamp"]}


async def test_no_gateway_prefix(standin, http):
    server = await standin(gateway_prefix=False)
    async with http.get(f"{server.api_url}/health") as r:
        assert r.status == 404


# --- attestation service -----------------------------------------------------------------------

def _verify_as_token(token: str, root_pem: bytes, alg: str) -> dict[str, Any]:
    """Check the chain (leaf signed by root) and the token signature with the leaf key."""
    header = json.loads(b64url_decode(token.split(".")[0]))
    assert header["alg"] == alg and header["typ"] == "JWT"
    chain = [x509.load_der_x509_certificate(b64url_decode(c)) for c in header["jwk"]["x5c"]]
    root = x509.load_pem_x509_certificate(root_pem)
    assert len(chain) == 2 and chain[1] == root
    chain[0].verify_directly_issued_by(root)
    root.verify_directly_issued_by(root)
    assert chain[0].extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    leaf_jwk = jose_jwk.JWK.from_pyca(chain[0].public_key())
    parsed = jose_jws.JWS()
    parsed.deserialize(token)
    parsed.verify(leaf_jwk, alg=alg)
    # the header jwk is the leaf's key
    expected = {k: v for k, v in leaf_jwk.export_public(as_dict=True).items() if k != "kid"}
    assert {k: v for k, v in header["jwk"].items() if k not in ("x5c", "alg")} == expected
    return json.loads(parsed.payload)


def _b64url_json(obj: Any) -> str:
    return b64url_encode(json.dumps(obj).encode())


@pytest.mark.parametrize("as_path", ["/api/attestation-service", "/api/as", ""])
async def test_as_flat_request_shape(standin, http, as_path):
    server = await standin()
    structured = {"nonce": "n-1", "pubkey": {"kty": "EC", "x": "1"}}
    digest = runtime_data_digest(structured)
    body = {"tee": "sample", "evidence": _b64url_json(sample_evidence(digest)),
            "runtime_data": {"structured": structured}, "init_data": None,
            "runtime_data_hash_algorithm": "sha384", "init_data_hash_algorithm": None,
            "policy_ids": ["default"]}
    async with http.post(f"{server.url}{as_path}/attestation", json=body) as r:
        assert r.status == 200, await r.text()
        token = await r.text()
    claims = _verify_as_token(token, server.ca_cert_path.read_bytes(), "RS384")
    assert claims["customized_claims"] == {"init_data": None, "runtime_data": structured}
    assert claims["evaluation-reports"] == [{"policy-id": "default", "policy-hash": AS_POLICY_HASH}]
    assert json.loads(claims["tcb-status"])["report_data"] == b64std_encode(digest)

    async with http.get(f"{server.url}{as_path}/certificate") as r:
        pem = await r.read()
    leaf = x509.load_pem_x509_certificates(pem)[0]
    header = json.loads(b64url_decode(token.split(".")[0]))
    assert leaf == x509.load_der_x509_certificate(b64url_decode(header["jwk"]["x5c"][0]))

    body["runtime_data"] = {"structured": {**structured, "nonce": "other"}}
    async with http.post(f"{server.url}{as_path}/attestation", json=body) as r:
        assert r.status == 500 and "REPORT_DATA" in await r.text()


async def test_as_upstream_sample_request_and_raw_runtime_data(standin, http):
    server = await standin()
    body = json.loads((UPSTREAM / "openanolis-trustee-v1.5.2/requests/as-restful-attestation-sample.json")
                      .read_text())
    async with http.post(f"{server.api_url}/as/attestation", json=body) as r:  # no runtime data: no binding
        assert r.status == 200
        claims = _verify_as_token(await r.text(), server.ca_cert_path.read_bytes(), "RS384")
    assert claims["evaluation-reports"][0]["policy-id"] == "default"  # empty policy_ids -> default
    assert claims["customized_claims"]["runtime_data"] is None
    body["runtime_data"] = {"raw": b64url_encode(b"Hello, World!")}
    async with http.post(f"{server.api_url}/as/attestation", json=body) as r:
        assert r.status == 200
    body["runtime_data"] = {"raw": b64url_encode(b"Hello, World?")}
    async with http.post(f"{server.api_url}/as/attestation", json=body) as r:
        assert r.status == 500


@pytest.mark.parametrize("alg", ["RS384", "ES256"])
async def test_as_verification_requests_shape(standin, http, alg):
    server = await standin(as_token_alg=alg)
    structured = {"nonce": "n", "pubkey": "p"}
    digest256 = hashlib.sha256(canonical_json(structured)).digest()
    body = {"verification_requests": [
        {"tee": "sample", "evidence": _b64url_json(sample_evidence(digest256)),
         "runtime_data": {"structured": structured}, "runtime_data_hash_algorithm": "sha256",
         "init_data": None},
        {"tee": "sampledevice", "evidence": _b64url_json({"svn": "7"}), "runtime_data": None},
    ], "policy_ids": ["default"]}
    async with http.post(f"{server.as_url}/attestation", json=body) as r:
        assert r.status == 200, await r.text()
        claims = _verify_as_token(await r.text(), server.ca_cert_path.read_bytes(), alg)
    assert claims["tee"] == "sample" and json.loads(claims["tcb-status"])["sampledevice.svn"] == "7"


async def test_as_rejects_unknown_policy_and_bad_shapes(standin, http):
    server = await standin()
    good = {"tee": "sample", "evidence": _b64url_json({"svn": "1"}), "policy_ids": ["default", "strict"]}
    async with http.post(f"{server.as_url}/attestation", json=good) as r:
        assert r.status == 400 and "strict" in await r.text()
    for bad in ({"evidence": "e30", "policy_ids": []}, {"tee": "sample", "evidence": "e30"},
                {"tee": "sample", "evidence": "!!", "policy_ids": []},
                {"tee": "sample", "evidence": "e30", "policy_ids": [], "runtime_data": {"raw": 1}},
                {"verification_requests": [], "policy_ids": []}):
        async with http.post(f"{server.as_url}/attestation", json=bad) as r:
            assert r.status == 400, bad
    async with http.post(f"{server.as_url}/attestation", json={**good, "tee": "tdx", "policy_ids": []}) as r:
        assert r.status == 500  # no verifier for tdx yet
    flat_only = await standin(as_api="flat")
    body = {"verification_requests": [{"tee": "sample", "evidence": "e30"}], "policy_ids": []}
    async with http.post(f"{flat_only.as_url}/attestation", json=body) as r:
        assert r.status == 400 and "missing field `tee`" in await r.text()


# --- faults --------------------------------------------------------------------------------------

async def test_fault_status_counts_and_counters(standin, http, rsa_key):
    server = await standin()
    server.faults.inject("auth", "status", status=503, body={"error": "busy"}, count=2)
    body = messages.auth_request(Dialect.V0_1_0, "sample")
    for _ in range(2):
        async with http.post(f"{server.url}/kbs/v0/auth", json=body) as r:
            assert r.status == 503 and await r.json() == {"error": "busy"}
    result = await rcar(http, server.url, Dialect.V0_1_0, rsa_key)
    assert result.status == 200
    assert server.faults.counters["auth"] == 3 and server.faults.counters["attest"] == 1
    async with http.get(f"{server.url}/__standin__/counters") as r:
        assert (await r.json())["auth"] == 3


async def test_fault_garbage_and_oversized_via_endpoint(standin, http):
    server = await standin()
    faults = {"faults": [{"route": "auth", "mode": "garbage"},
                         {"route": "auth", "mode": "oversized", "size": 3 * 1024 * 1024}]}
    async with http.post(f"{server.url}/__standin__/faults", json=faults) as r:
        assert r.status == 200 and len((await r.json())["pending"]) == 2
    body = messages.auth_request(Dialect.V0_1_0, "sample")
    async with http.post(f"{server.url}/kbs/v0/auth", json=body) as r:
        raw = await r.read()
        assert r.status == 200
    with pytest.raises(ValueError):
        json.loads(raw)
    async with http.post(f"{server.url}/kbs/v0/auth", json=body) as r:
        assert len(await r.read()) == 3 * 1024 * 1024
    async with http.post(f"{server.url}/kbs/v0/auth", json=body) as r:
        assert r.status == 200 and "nonce" in await r.json()
    for bad in ({"route": "nope", "mode": "status"}, {"route": "auth", "mode": "explode"},
                {"route": "auth", "mode": "status", "count": 0}, {"route": "auth"}, [1]):
        async with http.post(f"{server.url}/__standin__/faults", json=bad) as r:
            assert r.status == 400, bad


async def test_fault_truncate_jwe(standin, http, rsa_key, ec_key):
    for dialect, key in ((Dialect.V0_1_0, rsa_key), (Dialect.V0_4_0, ec_key)):
        server = await standin(dialect)
        result = await rcar(http, server.url, dialect, key)
        server.faults.inject("resource", "truncate_jwe")
        status, body = await get_resource(http, server.url, session_id=result.session_id)
        assert status == 200
        with pytest.raises(JweError):
            decrypt_resource(json.dumps(body), key)
        status, body = await get_resource(http, server.url, session_id=result.session_id)
        assert decrypt_resource(json.dumps(body), key) == SECRET


async def test_fault_hang(standin, http):
    server = await standin()
    server.faults.inject("auth", "hang", seconds=5)
    body = messages.auth_request(Dialect.V0_1_0, "sample")
    with pytest.raises(asyncio.TimeoutError):
        async with http.post(f"{server.url}/kbs/v0/auth", json=body,
                             timeout=aiohttp.ClientTimeout(total=0.3)):
            pass
    server.faults.inject("auth", "hang", seconds=0.2)
    started = time.monotonic()
    async with http.post(f"{server.url}/kbs/v0/auth", json=body) as r:
        assert r.status == 200
    assert time.monotonic() - started >= 0.2


async def test_fault_drop_sessions(standin, http, rsa_key):
    server = await standin()
    result = await rcar(http, server.url, Dialect.V0_1_0, rsa_key)
    async with http.post(f"{server.url}/__standin__/faults",
                         json={"route": "resource", "mode": "drop_sessions"}) as r:
        assert r.status == 200
    status, body = await get_resource(http, server.url, session_id=result.session_id)
    assert status == 401 and kbs_error(body, "TokenNotFound")
    assert len(server.state.sessions) == 0
    async with http.delete(f"{server.url}/__standin__/faults") as r:
        assert (await r.json()) == {"pending": []}


async def test_fault_endpoint_can_be_disabled(standin, http):
    server = await standin(fault_endpoint=False)
    async with http.post(f"{server.url}/__standin__/faults", json={"route": "auth", "mode": "garbage"}) as r:
        assert r.status == 404


# --- CLI -----------------------------------------------------------------------------------------

def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--dialect" in out and "--resource" in out and "DEVELOPMENT AND TESTS ONLY" in out


def test_cli_rejects_bad_resource_argument(capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main(["--repository", str(tmp_path), "--resource", "a/b=@nofile"])
    assert exc.value.code == 2


# --- pluggable verifiers, logging hygiene ------------------------------------------------------

async def test_registered_verifier_is_used_for_its_tee(standin, http, rsa_key):
    from attestation_agent.kbs.canonical import tdx_report_data
    from trustee_standin.verifiers import VerificationError, get_verifier, register_verifier

    seen: list[bytes] = []
    previous = get_verifier("tdx")

    def fake_tdx(evidence: Any, expected: bytes | None) -> dict[str, Any]:
        assert expected is not None
        seen.append(expected)
        if b64url_decode(evidence["quote"]) != tdx_report_data(expected):
            raise VerificationError("REPORT_DATA mismatch")
        return {"quote": {"body": {"mr_td": "ab"}}, "report_data": evidence["quote"]}

    register_verifier("tdx", fake_tdx)
    try:
        server = await standin()
        auth = messages.auth_request(Dialect.V0_1_0, "tdx")
        async with http.post(f"{server.url}/kbs/v0/auth", json=auth) as r:
            sid = session_id_from_set_cookie(r.headers.getall("Set-Cookie"))
            nonce = (await r.json())["nonce"]
        pub = rsa_key.public_jwk()
        quote = b64url_encode(tdx_report_data(binding_v0_1_0(nonce, pub)))
        body = messages.attest_request(Dialect.V0_1_0, nonce=nonce, tee_pubkey=pub,
                                       primary_evidence={"quote": quote})
        headers = {"Cookie": cookie_header(sid)}
        async with http.post(f"{server.url}/kbs/v0/attest", json=body, headers=headers) as r:
            assert r.status == 200
            claims = unverified_claims((await r.json())["token"])
        assert claims["tee"] == "tdx" and json.loads(claims["tcb-status"])["tdx.quote.body.mr_td"] == "ab"
        assert seen == [binding_v0_1_0(nonce, pub)]
    finally:
        register_verifier("tdx", previous)  # the real verifier other tests rely on


async def test_logs_carry_no_secrets(standin, http, rsa_key):
    import io

    from agents.logsetup import configure_logging, reset_logging

    stream = io.StringIO()
    configure_logging(level="debug", stream=stream)
    try:
        server = await standin(duplicate_set_cookie=True)
        result = await rcar(http, server.api_url, Dialect.V0_1_0, rsa_key)
        status, body = await get_resource(http, server.api_url, session_id=result.session_id)
        assert status == 200
        await get_resource(http, server.url, bearer=result.token + "x")
    finally:  # undo the global logging setup, as the agents.logsetup tests do
        reset_logging()
    text = stream.getvalue()
    assert "trustee stand-in: for development and tests only" in text
    assert "kbs resource released" in text
    for secret in (SECRET.decode("latin-1"), SECRET.hex(), result.token, result.session_id, result.nonce,
                   body["ciphertext"], body["encrypted_key"]):
        assert secret not in text


async def test_cli_serves_and_stops_on_sigterm(tmp_path, ca_dir, http, rsa_key):
    import signal
    import sys

    secret_file = tmp_path / "key.bin"
    secret_file.write_bytes(SECRET)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "trustee_standin", "--dialect", "0.1.0", "--repository", str(tmp_path / "repo"),
        "--listen", "127.0.0.1:0", "--ca-dir", str(ca_dir), "--log-level", "warning",
        "--resource", f"{RESOURCE}=@{secret_file}", "--resource", "default/aliyun/alt-key=literal",
        stderr=asyncio.subprocess.PIPE, cwd=Path(__file__).resolve().parents[2])
    try:
        line = b""
        while b" on http://" not in line:
            line = await asyncio.wait_for(proc.stderr.readline(), timeout=10)
            assert line, "stand-in exited before listening"
        base = line.split(b" on ", 1)[1].split()[0].decode()
        result = await rcar(http, base + "/api", Dialect.V0_1_0, rsa_key)
        status, body = await get_resource(http, base, session_id=result.session_id)
        assert status == 200 and decrypt_resource(json.dumps(body), rsa_key) == SECRET
        assert (tmp_path / "repo/default/aliyun/alt-key").read_bytes() == b"literal"
        async with http.post(f"{base}/__standin__/faults", json={"route": "auth", "mode": "garbage"}) as r:
            assert r.status == 404  # the control plane is opt-in on the command line
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0


async def test_as_challenge_carries_a_signed_jwt(standin, http):
    """Trustee >= 1.6 AS /challenge: nonce + extra-params.jwt signed by the AS key (TNG OHTTP needs it)."""
    server = await standin()
    async with http.post(f"{server.as_url}/challenge", json={}) as resp:
        assert resp.status == 200
        body = await resp.json()
    claims = unverified_claims(body["extra-params"]["jwt"])
    assert claims["nonce"] == body["nonce"] and len(base64.b64decode(body["nonce"])) == 32
    assert claims["exp"] > claims["iat"]
    server.state.tokens.verify(body["extra-params"]["jwt"])  # signed by the stand-in's own AS key
