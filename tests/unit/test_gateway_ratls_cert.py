"""The rats-tls certificate codec against a certificate captured from the real tng 2.12.0, plus
round trips and fuzzing (random or mutated input yields only CertFormatError)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation_agent.kbs.canonical import canonical_json
from gateway.errors import CertFormatError
from gateway.ratls_cert import (
    MAX_CERT_DER,
    TAG_COCO_EVIDENCE,
    EvidenceRecord,
    binding_claims,
    build_certificate,
    check_binding,
    decode_extension,
    encode_extension,
    parse_certificate,
    pubkey_hash_value,
    report_data,
    runtime_data_text,
    spki_der,
)

# Served by `tng launch` 2.12.0 (egress, aa_provider coco_asr, TEE "sample") on loopback; the
# sample evidence's report_data is the SHA-384 of the canonical runtime data.
TNG_2_12_CERT = bytes.fromhex(
    "308202da3082027fa00302010202012a300a06082a8648ce3d040302302d311d301b060355040a0c14496e636c6176617265"
    "20436f6e7461696e657273310c300a06035504030c03544e47301e170d3236313132333132333532385a170d323631313233"
    "3138333532385a302d311d301b060355040a0c14496e636c617661726520436f6e7461696e657273310c300a06035504030c"
    "03544e473059301306072a8648ce3d020106082a8648ce3d030107034200045fb9318857de00e69cf22259b0c48378cd189b"
    "a2dd87d8adb9bd6d8080111188fd450b90fff3cdea4b24cc34da49483dbf05199bea150602c9379f12a3ca4368a382018e30"
    "82018a301d0603551d0e04160414a6ed21e262896d459193c2634ccd670188517e3b301f0603551d23041830168014a6ed21"
    "e262896d459193c2634ccd670188517e3b300c0603551d130101ff04023000300e0603551d0f0101ff0404030203e8308201"
    "1c060667810505040904820110da00c0c00082590106a5687465655f747970656673616d706c656b61615f65766964656e63"
    "65585f7b2273766e223a202231222c20227265706f72745f64617461223a20224236497a39716638793136766b7762492f49"
    "56683175716c41584441487066726c7748622b6a59416b6771682f4c58386462697954754a544c426959764b696e227d7661"
    "615f6164646974696f6e616c5f65766964656e6365f66f61615f72756e74696d655f6461746178427b227075626b65792d68"
    "617368223a2267674659494f6c6e386a6e4b5372346f383848475564664c354e34507231794a5546746d6b536d4a69764142"
    "5930364c227d781961615f72756e74696d655f646174615f686173685f616c676f0740300a06066781050504020400300a06"
    "082a8648ce3d04030203490030460221009755e916423ccc0da4b4826b3bce50ffb85b944c7e2b10f577d455d8668cf0b302"
    "2100af2919228078ce0880293837784252699cea19abf50c982b1bf782658678c869")
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def test_real_tng_certificate_parses_and_binds():
    cert = parse_certificate(TNG_2_12_CERT)
    record = cert.record
    assert record.tee_type == "sample"
    assert record.hash_algo == 7 and record.aa_additional_evidence is None
    claims = check_binding(cert)
    assert claims == binding_claims(cert.spki)
    # the report data in the evidence is SHA-384 of exactly the runtime data text
    evidence = json.loads(record.aa_evidence)
    assert base64.b64decode(evidence["report_data"]) == hashlib.sha384(record.aa_runtime_data.encode()).digest()
    # pubkey-hash = b64(CBOR [1, sha256(SPKI)]) = 82 01 58 20 ...
    raw = base64.b64decode(claims["pubkey-hash"])
    assert raw[:4] == bytes.fromhex("82015820") and raw[4:] == hashlib.sha256(cert.spki).digest()
    # our encoder reproduces tng's extension bytes from the decoded values
    from cryptography import x509

    ext = x509.load_der_x509_certificate(TNG_2_12_CERT).extensions.get_extension_for_oid(
        x509.ObjectIdentifier("2.23.133.5.4.9")).value.value
    assert encode_extension(record) == ext


def test_canonical_runtime_data_vector():
    # Trustee/TNG canonical JSON example from the reference note: sorted, compact
    assert canonical_json({"b": 1, "a": "test", "c": {"d": "e"}}) == b'{"a":"test","b":1,"c":{"d":"e"}}'
    assert hashlib.sha384(canonical_json({"b": 1, "a": "test", "c": {"d": "e"}})).hexdigest().startswith("e71ce8e7")


def _record(key: ec.EllipticCurvePrivateKey, **kw: object) -> EvidenceRecord:
    runtime = runtime_data_text(binding_claims(spki_der(key.public_key())))
    evidence = json.dumps({"svn": "1", "report_data": base64.b64encode(report_data(runtime)).decode()}).encode()
    return EvidenceRecord(**{"tee_type": "sample", "aa_evidence": evidence, "aa_runtime_data": runtime, **kw})


def test_build_parse_round_trip():
    key = ec.generate_private_key(ec.SECP256R1())
    der = build_certificate(key, _record(key), NOW)
    cert = parse_certificate(der)
    assert cert.spki == spki_der(key.public_key())
    assert cert.record == _record(key)
    assert check_binding(cert)["pubkey-hash"] == base64.b64encode(pubkey_hash_value(cert.spki)).decode()


def test_binding_to_another_key_is_refused():
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    cert = parse_certificate(build_certificate(key, _record(other), NOW))
    with pytest.raises(CertFormatError, match="binding mismatch"):
        check_binding(cert)


def test_broken_self_signature_is_refused():
    der = bytearray(TNG_2_12_CERT)
    der[-5] ^= 0x01  # inside the ECDSA signature
    with pytest.raises(CertFormatError):
        parse_certificate(bytes(der))


def test_oversized_certificate_is_refused_at_build_time():
    key = ec.generate_private_key(ec.SECP256R1())
    big = _record(key, aa_additional_evidence=b"x" * MAX_CERT_DER)
    with pytest.raises(CertFormatError, match="rustls"):
        build_certificate(key, big, NOW)


def test_format_a_and_passport_are_named():
    with pytest.raises(CertFormatError, match="format A"):
        decode_extension(cbor2.dumps(cbor2.CBORTag(TAG_COCO_EVIDENCE, [b"\xa0", b"\xa1\x01\x02"])))
    with pytest.raises(CertFormatError, match="passport"):
        decode_extension(cbor2.dumps(cbor2.CBORTag(0xC0C001, "jwt")))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_extension_random_bytes(data):
    try:
        decode_extension(data)
    except CertFormatError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_certificate_mutations(data):
    der = bytearray(TNG_2_12_CERT)
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(der) - 1))
        der[i] = data.draw(st.integers(0, 255))
    try:
        cert = parse_certificate(bytes(der))
        check_binding(cert)
    except CertFormatError:
        pass


_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8) | st.binary(max_size=8),
                       lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=20), c, max_size=5),
                       max_leaves=10)


@settings(max_examples=300, deadline=None)
@given(_values, st.sampled_from([TAG_COCO_EVIDENCE, 0xC0C001, 60000]))
def test_fuzz_extension_structured(value, tag):
    try:
        decode_extension(cbor2.dumps(cbor2.CBORTag(tag, value)))
    except CertFormatError:
        pass
    inner = cbor2.dumps(value) if not isinstance(value, bytes) else value
    try:
        decode_extension(cbor2.dumps(cbor2.CBORTag(TAG_COCO_EVIDENCE, [inner, b""])))
    except CertFormatError:
        pass
