"""The KBS protocol core against the synthetic vectors and upstream known answers."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from attestation_agent.attesters.sample import SampleAttester, SampleDeviceAttester
from attestation_agent.errors import JweError
from attestation_agent.evidence import LocalEvidence, compose
from attestation_agent.kbs import canonical, jwe, messages
from attestation_agent.kbs.dialect import Dialect
from attestation_agent.kbs.tee_key import KeyAlgorithm, TeeKey
from tests.conftest import UPSTREAM


def _load(kbs_vectors, name):
    return json.loads((kbs_vectors / name).read_text())


@pytest.fixture(scope="module")
def rsa_private(kbs_vectors):
    return load_pem_private_key((kbs_vectors / "tee_rsa2048_private_pkcs8.pem").read_bytes(), None)


@pytest.fixture(scope="module")
def ec_private(kbs_vectors):
    return load_pem_private_key((kbs_vectors / "tee_p256_private_pkcs8.pem").read_bytes(), None)


def test_canonical_json_matches_attestation_service_vector():
    # The AS unit test vector quoted in the reference: sorted keys, compact separators.
    assert canonical.canonical_json({"b": 1, "a": "test", "c": {"d": "e"}}) == b'{"a":"test","b":1,"c":{"d":"e"}}'
    assert hashlib.sha384(canonical.canonical_json({"b": 1, "a": "test", "c": {"d": "e"}})).hexdigest().startswith(
        "e71ce8e7")


def test_binding_v0_1_0_vector(kbs_vectors, rsa_private):
    vec = _load(kbs_vectors, "runtime-data-v0.1.0.json")
    key = TeeKey(KeyAlgorithm.RSA1_5, rsa_private)
    assert key.public_jwk() == vec["tee-pubkey"]
    assert list(key.public_jwk()) == ["kty", "alg", "n", "e"]
    digest = canonical.binding_v0_1_0(vec["nonce"], key.public_jwk())
    assert canonical.canonical_json({"nonce": vec["nonce"], "tee-pubkey": vec["tee-pubkey"]}).decode() == \
        vec["canonical_json"]
    assert digest.hex() == vec["sha384_hex"]
    assert canonical.tdx_report_data(digest).hex() == vec["tdx_report_data_hex"]
    assert canonical.gpu_nonce(digest).hex() == vec["gpu_nonce_hex_first32"]


def test_binding_v0_4_0_vector(kbs_vectors, ec_private):
    vec = _load(kbs_vectors, "runtime-data-v0.4.0.json")
    key = TeeKey(KeyAlgorithm.ECDH_ES_A256KW, ec_private)
    assert key.public_jwk() == vec["tee-pubkey"]
    nonce = vec["nonce"]
    device = canonical.device_binding_v0_4_0(nonce, key.public_jwk())
    assert device.hex() == vec["device_runtime_data"]["sha384_hex"]
    assert canonical.gpu_nonce(device).hex() == vec["device_runtime_data"]["gpu_nonce_hex_first32"]
    primary = canonical.primary_binding_v0_4_0(nonce, key.public_jwk(), "")
    assert primary.hex() == vec["primary_runtime_data_no_devices"]["sha384_hex"]
    for name, case in vec.items():
        if name.startswith("primary_runtime_data_with"):
            body = json.loads(case["canonical_json"])
            got = canonical.primary_binding_v0_4_0(nonce, key.public_jwk(), body["additional-evidence"])
            assert got.hex() == case["sha384_hex"], name


def test_binding_matches_genuine_trustee_1_5_sample_token():
    """A real Trustee 1.5 token's report_data equals our digest of its runtime data."""
    claims = json.loads((UPSTREAM / "openanolis-trustee-v1.5.2/docs/gateway-audit-simple-token-claims.sample-tee.json")
                        .read_text())
    text = json.dumps(claims)
    # Find runtime_data (nonce + tee-pubkey) and report_data wherever the sample nests them.
    found = {}

    def walk(node):
        if isinstance(node, dict):
            for k, v in node.items():
                if k == "runtime_data" and isinstance(v, dict) and "tee-pubkey" in v:
                    found["runtime"] = v
                if k in ("report_data", "sample.report_data") and isinstance(v, str):
                    found["report_data"] = v
                if isinstance(v, str) and v.startswith("{"):
                    try:
                        walk(json.loads(v))
                    except ValueError:
                        pass
                walk(v)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(claims)
    assert "runtime" in found and "report_data" in found, text[:500]
    digest = canonical.binding_v0_1_0(found["runtime"]["nonce"], found["runtime"]["tee-pubkey"])
    assert base64.b64decode(found["report_data"]) == digest


@pytest.mark.parametrize(("name", "alg", "keyname"), [
    ("jwe-trustee-1.5-rsa1_5.json", KeyAlgorithm.RSA1_5, "rsa"),
    ("jwe-v0.4.0-rsa-oaep-256.json", KeyAlgorithm.RSA_OAEP_256, "rsa"),
    ("jwe-v0.4.0-ecdh-es-a256kw-p256.json", KeyAlgorithm.ECDH_ES_A256KW, "ec"),
])
def test_jwe_vectors_decrypt(kbs_vectors, rsa_private, ec_private, name, alg, keyname):
    key = TeeKey(alg, rsa_private if keyname == "rsa" else ec_private)
    plaintext = (kbs_vectors / "jwe-plaintext.txt").read_bytes()
    assert jwe.decrypt_resource((kbs_vectors / name).read_bytes(), key) == plaintext


@pytest.mark.parametrize("name", ["jwe-trustee-1.5-rsa1_5.json", "jwe-v0.4.0-rsa-oaep-256.json"])
def test_jwe_rejects_tampering_and_wrong_key(kbs_vectors, rsa_private, name):
    alg = KeyAlgorithm.RSA1_5 if "1.5" in name else KeyAlgorithm.RSA_OAEP_256
    good = _load(kbs_vectors, name)
    key = TeeKey(alg, rsa_private)
    for member in ("ciphertext", "iv", "encrypted_key"):
        bad = dict(good)
        raw = bytearray(base64.urlsafe_b64decode(bad[member] + "=" * (-len(bad[member]) % 4)))
        raw[len(raw) // 2] ^= 0x01
        bad[member] = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
        with pytest.raises(JweError):
            jwe.decrypt_resource(json.dumps(bad), key)
    truncated = dict(good, ciphertext=good["ciphertext"][:8], tag="")
    with pytest.raises(JweError):
        jwe.decrypt_resource(json.dumps(truncated), key)
    other = TeeKey.generate(alg)
    with pytest.raises(JweError) as info:
        jwe.decrypt_resource(json.dumps(good), other)
    assert "wrong TEE key" in str(info.value)


def test_jwe_alg_mismatch_is_refused(kbs_vectors, ec_private):
    # An ECDH key must not be tricked into the RSA path or vice versa.
    key = TeeKey(KeyAlgorithm.ECDH_ES_A256KW, ec_private)
    with pytest.raises(JweError, match="does not match"):
        jwe.decrypt_resource((kbs_vectors / "jwe-trustee-1.5-rsa1_5.json").read_bytes(), key)


@pytest.mark.parametrize(("dialect", "alg"), [
    (Dialect.V0_1_0, KeyAlgorithm.RSA1_5),
    (Dialect.V0_4_0, KeyAlgorithm.RSA1_5),
    (Dialect.V0_4_0, KeyAlgorithm.RSA_OAEP_256),
    (Dialect.V0_4_0, KeyAlgorithm.ECDH_ES_A256KW),
])
def test_server_encrypt_has_trustee_shape_and_roundtrips(dialect, alg):
    key = TeeKey.generate(alg)
    body = jwe.encrypt_resource(b"model-key-bytes", key.public_jwk(), dialect)
    assert set(body) == {"protected", "encrypted_key", "iv", "ciphertext", "tag"}
    if dialect is Dialect.V0_1_0:
        assert body["protected"] == '{"alg":"RSA1_5","enc":"A256GCM"}'
        assert body["tag"] == ""
    else:
        header = json.loads(base64.urlsafe_b64decode(body["protected"] + "=" * (-len(body["protected"]) % 4)))
        assert header["alg"] == alg.value and header["enc"] == "A256GCM"
        assert ("epk" in header) == (alg is KeyAlgorithm.ECDH_ES_A256KW)
        assert len(base64.urlsafe_b64decode(body["tag"] + "==")) == 16
    assert jwe.decrypt_resource(json.dumps(body), key) == b"model-key-bytes"


def test_trustee_1_5_refuses_non_rsa1_5_keys():
    key = TeeKey.generate(KeyAlgorithm.ECDH_ES_A256KW)
    with pytest.raises(ValueError, match="RSA1_5"):
        jwe.encrypt_resource(b"x", key.public_jwk(), Dialect.V0_1_0)


async def test_sample_attest_body_v0_1_0_equals_vector(kbs_vectors, rsa_private):
    vec = _load(kbs_vectors, "rcar-sample-v0.1.0.json")
    assert messages.auth_request(Dialect.V0_1_0, "sample") == vec["auth_request"]
    challenge = messages.parse_challenge(json.dumps(vec["challenge"]))
    key = TeeKey(KeyAlgorithm.RSA1_5, rsa_private)
    composed = await compose(LocalEvidence(SampleAttester()), Dialect.V0_1_0, challenge.nonce, key.public_jwk())
    body = messages.attest_request(Dialect.V0_1_0, nonce=challenge.nonce, tee_pubkey=key.public_jwk(),
                                   primary_evidence=composed.primary, additional_evidence=composed.additional)
    assert body == vec["attest_request"]
    assert isinstance(body["tee-evidence"], str)
    assert json.dumps(body, separators=(",", ":")) == json.dumps(vec["attest_request"], separators=(",", ":"))


async def test_sample_attest_body_v0_4_0_equals_vector(kbs_vectors, ec_private):
    vec = _load(kbs_vectors, "rcar-sample-v0.4.0.json")
    assert messages.auth_request(Dialect.V0_4_0, "sample") == vec["auth_request"]
    challenge = messages.parse_challenge(json.dumps(vec["challenge"]))
    key = TeeKey(KeyAlgorithm.ECDH_ES_A256KW, ec_private)
    composed = await compose(LocalEvidence(SampleAttester()), Dialect.V0_4_0, challenge.nonce, key.public_jwk())
    body = messages.attest_request(Dialect.V0_4_0, nonce=challenge.nonce, tee_pubkey=key.public_jwk(),
                                   primary_evidence=composed.primary, additional_evidence=composed.additional)
    assert body == vec["attest_request"]
    assert json.dumps(body, separators=(",", ":")) == json.dumps(vec["attest_request"], separators=(",", ":"))


async def test_composite_v0_4_0_binds_devices_with_device_digest(kbs_vectors, ec_private):
    vec = _load(kbs_vectors, "runtime-data-v0.4.0.json")
    key = TeeKey(KeyAlgorithm.ECDH_ES_A256KW, ec_private)
    source = LocalEvidence(SampleAttester(), (SampleDeviceAttester(),))
    composed = await compose(source, Dialect.V0_4_0, vec["nonce"], key.public_jwk())
    devices = json.loads(composed.additional)
    device_digest = canonical.device_binding_v0_4_0(vec["nonce"], key.public_jwk())
    assert base64.b64decode(devices["sampledevice"]["report_data"]) == device_digest
    primary_digest = canonical.primary_binding_v0_4_0(vec["nonce"], key.public_jwk(), composed.additional)
    assert base64.b64decode(composed.primary["report_data"]) == primary_digest
    # A device that cannot be embedded refuses the Trustee 1.5 dialect instead of dropping evidence.
    from attestation_agent.errors import EvidenceError
    with pytest.raises(EvidenceError, match=r"0\.4\.0"):
        await compose(source, Dialect.V0_1_0, vec["nonce"], key.public_jwk())
