"""Sealed secrets: upstream payload fixtures, our own ES256-signed secrets, tampering, fuzzing."""

from __future__ import annotations

import base64
import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jwcrypto import jwk, jws

from attestation_agent.kbs.encoding import b64url_encode
from data_hub import sealed
from data_hub.errors import SealedSecretError, SignatureError
from data_hub.unseal import Unsealer
from data_hub.uri import ResourceUri
from tests.conftest import UPSTREAM

FIXTURES = UPSTREAM / "trustiflux" / "v1.3.1" / "sealed-secret"
KEY = jwk.JWK.generate(kty="EC", crv="P-256")
OTHER_KEY = jwk.JWK.generate(kty="EC", crv="P-256")


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def test_upstream_payload_fixtures():
    vault1 = sealed.parse_payload(fixture("vault-1.json"))
    assert vault1 == sealed.VaultSecret(name="xxx", provider="aliyun")
    vault2 = sealed.parse_payload(fixture("vault-2.json"))
    assert vault2 == sealed.VaultSecret(name="kbs:///one/2/trois", provider="kbs")
    envelope = sealed.parse_payload(fixture("envelope-1.json"))
    assert isinstance(envelope, sealed.EnvelopeSecret)
    assert (envelope.key_id, envelope.encrypted_key, envelope.encrypted_data, envelope.wrap_type, envelope.iv,
            envelope.provider) == ("xxx", "yyy", "zzz", "A256GCM", "www", "aliyun")
    # Our serialisation is upstream's JSON (same members and values).
    for name, secret in (("vault-1.json", vault1), ("vault-2.json", vault2), ("envelope-1.json", envelope)):
        assert json.loads(sealed.payload_json(secret)) == json.loads(fixture(name))


def test_trustiflux_style_unsigned_secret_parses_but_has_no_kid():
    text = f"sealed.fakejwsheader.{b64url_encode(fixture('vault-2.json'))}.fakesignature"
    parsed = sealed.parse_sealed(text)
    assert parsed.kid is None and parsed.secret.name == "kbs:///one/2/trois"
    with pytest.raises(SignatureError):
        sealed.verify(parsed, KEY)


def test_signed_secret_verifies_with_its_key_only():
    text = sealed.seal(sealed.VaultSecret(name="kbs:///one/2/trois", provider="kbs"), KEY, "test-key")
    assert text.startswith("sealed.") and text.count(".") == 3
    parsed = sealed.parse_sealed(text)
    assert parsed.header == {"alg": "ES256", "kid": "test-key"}
    sealed.verify(parsed, sealed.load_verification_key(KEY.export_public().encode()))
    sealed.verify(parsed, sealed.load_verification_key(KEY.export_to_pem()))  # PEM form too
    with pytest.raises(SignatureError, match="does not verify"):
        sealed.verify(parsed, sealed.load_verification_key(OTHER_KEY.export_public().encode()))


@pytest.mark.parametrize("part", [0, 1, 2])
def test_tampering_any_part_is_refused(part):
    text = sealed.seal(sealed.VaultSecret(name="kbs:///one/2/trois", provider="kbs"), KEY, "test-key")
    pieces = text[len("sealed."):].split(".")
    if part == 1:  # a different, well-formed payload: the attacker's resource
        pieces[1] = b64url_encode(sealed.payload_json(sealed.VaultSecret(name="kbs:///one/2/other", provider="kbs")))
    else:
        chars = list(pieces[part])
        chars[5] = "A" if chars[5] != "A" else "B"
        pieces[part] = "".join(chars)
    forged = "sealed." + ".".join(pieces)
    with pytest.raises(SealedSecretError):
        sealed.verify(sealed.parse_sealed(forged), KEY)


@pytest.mark.parametrize("alg", ["HS256", "none", "ES384", None])
def test_only_es256_is_accepted(alg):
    header = {"kid": "k"} if alg is None else {"alg": alg, "kid": "k"}
    payload = sealed.payload_json(sealed.VaultSecret(name="kbs:///a/b/c", provider="kbs"))
    text = f"sealed.{b64url_encode(json.dumps(header).encode())}.{b64url_encode(payload)}.{b64url_encode(b'x' * 64)}"
    with pytest.raises(SignatureError, match="not allowed"):
        sealed.verify(sealed.parse_sealed(text), KEY)


def test_non_p256_verification_keys_are_refused():
    for key in (jwk.JWK.generate(kty="EC", crv="P-384"), jwk.JWK.generate(kty="RSA", size=2048),
                jwk.JWK.generate(kty="oct", size=256)):
        with pytest.raises(SignatureError):
            sealed.load_verification_key(key.export().encode())
    with pytest.raises(SignatureError):
        sealed.load_verification_key(b"not a key")


def test_envelope_roundtrip_and_tamper():
    kek, plaintext = os.urandom(32), b"rag-master-" + os.urandom(8).hex().encode()
    secret = sealed.envelope_encrypt(plaintext, kek, "kbs:///default/kek/1")
    assert plaintext.hex() not in repr(secret)
    assert sealed.envelope_decrypt(secret, kek) == plaintext
    with pytest.raises(SealedSecretError, match="does not decrypt"):
        sealed.envelope_decrypt(secret, os.urandom(32))
    data = bytearray(base64.b64decode(secret.encrypted_data))
    data[0] ^= 1
    altered = sealed.EnvelopeSecret(**{**secret.__dict__, "encrypted_data": base64.b64encode(data).decode()})
    with pytest.raises(SealedSecretError, match="authenticate"):
        sealed.envelope_decrypt(altered, kek)
    with pytest.raises(SealedSecretError, match="32"):
        sealed.envelope_decrypt(secret, b"short")
    with pytest.raises(SealedSecretError, match="wrap type"):
        sealed.envelope_decrypt(sealed.EnvelopeSecret(**{**secret.__dict__, "wrap_type": "A256CTR"}), kek)


@pytest.mark.parametrize("text, match", [
    ("hello", "must start with 'sealed.'"),
    ("sealed.a.b", "4 dot-separated parts"),
    ("sealed.a.!!!.c", "not base64url"),
    ("sealed.a." + b64url_encode(b"[1]") + ".c", "not a JSON object"),
    ("sealed.a." + b64url_encode(b'{"version":"0.2.0","type":"vault"}') + ".c", "version"),
    ("sealed.a." + b64url_encode(b'{"version":"0.1.0","type":"magic"}') + ".c", "type"),
    ("sealed.a." + b64url_encode(b'{"version":"0.1.0","type":"vault","provider":"kbs"}') + ".c", "'name'"),
    ("sealed." + "a" * 70000, "larger"),
])
def test_malformed_inputs_are_clean_errors(text, match):
    with pytest.raises(SealedSecretError, match=match):
        sealed.parse_sealed(text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400) | st.text(max_size=400).map(lambda s: "sealed." + s))
def test_fuzz_parse_only_raises_typed_errors(data):
    try:
        sealed.parse_sealed(data)
    except SealedSecretError:
        pass


GOOD = sealed.seal(sealed.VaultSecret(name="kbs:///one/2/trois", provider="kbs"), KEY, "test-key")


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=len("sealed."), max_value=len(GOOD) - 1), st.sampled_from("AZaz09-_.="))
def test_fuzz_mutated_secret_never_verifies(index, char):
    mutated = GOOD[:index] + char + GOOD[index + 1:]
    if mutated == GOOD:
        return
    try:
        parsed = sealed.parse_sealed(mutated)
        sealed.verify(parsed, KEY)
    except SealedSecretError:
        return
    # Only base64 padding-bit aliases of the signature may survive: the signed content is unchanged.
    assert parsed.secret == sealed.parse_sealed(GOOD).secret and parsed.signature == sealed.parse_sealed(GOOD).signature


# --- the async unsealer with an in-memory "KBS" --------------------------------------------------

class FakeKbs:
    def __init__(self, values: dict[str, bytes]) -> None:
        self.values = values
        self.fetched: list[str] = []

    async def __call__(self, uri: ResourceUri) -> bytes:
        self.fetched.append(str(uri.path))
        return self.values[str(uri.path)]


async def test_unsealer_vault_with_kbs_kid_and_envelope_with_local_kid(tmp_path):
    kek, plaintext, vault_value = os.urandom(32), b"envelope-plain-1234", b"vault-value-5678"
    kbs = FakeKbs({"one/2/trois": vault_value, "keys/sealing/pub": KEY.export_public().encode(),
                   "default/kek/1": kek})
    (tmp_path / "local-key").write_text(KEY.export_public())
    unsealer = Unsealer(kbs, keys_dir=tmp_path)
    vault = sealed.seal(sealed.VaultSecret(name="kbs:///one/2/trois", provider="kbs"), KEY, "kbs:///keys/sealing/pub")
    assert await unsealer.unseal(vault) == vault_value
    assert kbs.fetched == ["keys/sealing/pub", "one/2/trois"]
    envelope = sealed.seal(sealed.envelope_encrypt(plaintext, kek, "kbs:///default/kek/1"), KEY, "local-key")
    assert await unsealer.unseal(envelope.encode()) == plaintext


async def test_unsealer_refusals(tmp_path):
    kbs = FakeKbs({"one/2/trois": b"value"})
    (tmp_path / "k").write_text(OTHER_KEY.export_public())
    outside = tmp_path.parent / "outside-key"
    outside.write_text(KEY.export_public())
    (tmp_path / "link").symlink_to(outside)
    unsealer = Unsealer(kbs, keys_dir=tmp_path)
    vault = sealed.VaultSecret(name="kbs:///one/2/trois", provider="kbs")
    with pytest.raises(SignatureError, match="does not verify"):
        await unsealer.unseal(sealed.seal(vault, KEY, "k"))
    for kid in ("../outside-key", "/etc/passwd", ".hidden"):
        with pytest.raises(SignatureError, match="key file name"):
            await unsealer.unseal(sealed.seal(vault, KEY, kid))
    with pytest.raises(SignatureError, match="outside"):
        await unsealer.unseal(sealed.seal(vault, KEY, "link"))
    with pytest.raises(SignatureError, match="no 'kid'"):
        await unsealer.unseal(sealed.seal_unsigned(vault))
    with pytest.raises(SealedSecretError, match="provider 'aliyun'"):
        await unsealer.unseal(sealed.seal(sealed.VaultSecret(name="x", provider="aliyun"), OTHER_KEY, "k"))
    with pytest.raises(SealedSecretError, match="invalid resource URI"):
        await unsealer.unseal(sealed.seal(sealed.VaultSecret(name="kbs:///../x/y", provider="kbs"), OTHER_KEY, "k"))
    assert kbs.fetched == []  # nothing reached the KBS for a refused secret


async def test_skip_verification_is_explicit():
    kbs = FakeKbs({"one/2/trois": b"value-1"})
    text = f"sealed.fakejwsheader.{b64url_encode(fixture('vault-2.json'))}.fakesignature"
    with pytest.raises(SignatureError):
        await Unsealer(kbs, keys_dir=None).unseal(text)
    assert await Unsealer(kbs, keys_dir=None, skip_verification=True).unseal(text) == b"value-1"


def test_jwcrypto_compact_is_what_we_sign():
    # Sanity: the JWS part of our sealed string is a standard compact JWS any JOSE library verifies.
    token = jws.JWS()
    token.deserialize(GOOD[len("sealed."):], KEY.public())
    assert json.loads(token.payload)["name"] == "kbs:///one/2/trois"
