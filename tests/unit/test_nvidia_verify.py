"""Local GPU report verification against the real NVIDIA root: chains, FWID, signature, nonce, expiry.

Fixture certificate encodings: ``trustee/nvidia/hopper_cert_chain_case*.txt``,
``hopper_coco_certs1.txt``, ``nvtrust/samples/hopperCertChain.txt`` and every NVAT
``*CertChain*.txt`` are PEM concatenations, leaf first; ``hopper_signing_cert.pem`` is one PEM leaf;
the roots are single PEM certificates; NVAT's serialized evidence JSON carries base64 of the PEM
chain in ``certificate`` and base64 of the report in ``evidence``; reports in ``*.txt`` are hex.

"Expired" fixture: NVAT's ``hopperCertChainExpired.txt`` belongs to its *expired driver RIM*
scenario — none of its certificates is expired by date (all valid to 9999-12-31) — so the expiry
check is exercised by moving the injectable clock outside the validity window, on that chain and
on a chain whose intermediate really expires.
"""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation_agent.nvidia.chain import (
    MAX_CERTS,
    fwid_from_cert,
    load_cert_chain,
    load_trusted_roots,
    nvidia_device_root,
    verify_chain,
)
from attestation_agent.nvidia.errors import (
    CertChainError,
    CertExpiredError,
    FwidMismatchError,
    GpuEvidenceError,
    NonceMismatchError,
    SignatureError,
)
from attestation_agent.nvidia.spdm import parse_report
from attestation_agent.nvidia.verify import verify_report
from tests.conftest import UPSTREAM
from tests.fakes.fake_pynvml import FakeGpu, TestDeviceCA

TRUSTEE = UPSTREAM / "trustee" / "nvidia"
GPU_SAMPLES = UPSTREAM / "nv-attestation-sdk" / "unit-testdata" / "sample_attestation_data" / "gpu"
REPORT = bytes.fromhex((TRUSTEE / "hopperAttestationReport.txt").read_text().strip())
REPORT_NONCE = bytes.fromhex("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb")
CASE1 = (TRUSTEE / "hopper_cert_chain_case1.txt").read_bytes()
FWID = "f5c384aebb579217a2c66b17ed0f28e6a9b8d639041acd7b4721cec004f7275494ba94bb5cdfdb3055ee051762b1f75d"


def hex_file(path) -> bytes:
    return bytes.fromhex(path.read_text().strip())


def test_shipped_root_is_the_fixture_root():
    shipped = nvidia_device_root().public_bytes(Encoding.PEM)
    assert load_cert_chain((TRUSTEE / "nvidia_device_root.pem").read_bytes())[0].public_bytes(Encoding.PEM) == shipped
    assert load_cert_chain((UPSTREAM / "nvtrust/certs/verifier_device_root.pem").read_bytes())[0] == \
        nvidia_device_root()


def test_valid_chain_and_signature_are_accepted():
    verified = verify_report(REPORT, CASE1, expected_nonce=REPORT_NONCE)
    claims = verified.claims()
    assert claims["fwid"] == FWID
    assert claims["driver_version"] == "550.90.07" and claims["vbios_version"] == "96.00.9F.00.01"
    assert claims["project"] == "1010" and claims["chip_sku"] == "882"
    assert len(claims["measurements"]) == 64 and len(claims["measurement"]) == 96
    assert verified.chain.root == nvidia_device_root()


def test_claims_match_trustee_expected_claims():
    expected = json.loads((TRUSTEE / "hopperAttestationReport-claims.txt").read_text())
    claims = verify_report(REPORT, CASE1, expected_nonce=REPORT_NONCE).claims()
    assert claims["measurements"] == expected["measurements"]
    for key in ("driver_version", "fwid", "project", "project_sku", "chip_sku"):
        assert claims[key] == expected["config"][key], key
    assert claims["vbios_version"].lower() == expected["config"]["vbios_version"]


def test_fwid_read_from_signing_cert_as_trustee_does():
    cert = load_cert_chain((TRUSTEE / "hopper_signing_cert.pem").read_bytes())[0]
    assert fwid_from_cert(cert).hex() == FWID


def test_trustee_case2_only_root_is_rejected():
    with pytest.raises(CertChainError, match=r"has 1 certificate\(s\); it needs at least the signing"):
        verify_report(REPORT, (TRUSTEE / "hopper_cert_chain_case2.txt").read_bytes(), expected_nonce=REPORT_NONCE)


def test_trustee_case3_missing_intermediate_is_rejected():
    with pytest.raises(CertChainError, match="broken certificate chain: certificate 1 'GH100 A01 GSP BROM'") as info:
        verify_report(REPORT, (TRUSTEE / "hopper_cert_chain_case3.txt").read_bytes(), expected_nonce=REPORT_NONCE)
    assert not isinstance(info.value, CertExpiredError | FwidMismatchError)


def test_trustee_case4_missing_signing_cert_is_rejected():
    with pytest.raises(FwidMismatchError, match="FWID extension not found in the signing certificate 'GH100 A01"):
        verify_report(REPORT, (TRUSTEE / "hopper_cert_chain_case4.txt").read_bytes(), expected_nonce=REPORT_NONCE)


def test_invalid_signature_sample_is_rejected():
    report = hex_file(GPU_SAMPLES / "hopperAttestationReportInvalidSignature.txt")
    with pytest.raises(SignatureError, match="signature does not verify with the key of 'GH100 A01 GSP FMC LF'"):
        verify_report(report, (GPU_SAMPLES / "hopperCertChainExpired.txt").read_bytes(), expected_nonce=None)


def test_report_of_another_gpu_is_a_signature_error():
    report = hex_file(GPU_SAMPLES / "hopperAttestationReport.txt")  # no FWID field; different GPU
    with pytest.raises(SignatureError):
        verify_report(report, CASE1, expected_nonce=None)


def test_nonce_mismatch_is_rejected():
    with pytest.raises(NonceMismatchError, match="does not match the expected nonce"):
        verify_report(REPORT, CASE1, expected_nonce=bytes(32))


def test_tampered_report_is_rejected():
    data = bytearray(REPORT)
    data[100] ^= 0x40
    with pytest.raises(SignatureError):
        verify_report(bytes(data), CASE1, expected_nonce=REPORT_NONCE)


def test_expired_sample_chain_passes_now_and_fails_outside_its_validity():
    chain = (GPU_SAMPLES / "hopperCertChainExpired.txt").read_bytes()
    report = hex_file(GPU_SAMPLES / "hopperAttestationReportExpired.txt")
    verify_report(report, chain, expected_nonce=REPORT_NONCE)  # the "expired" part is the driver RIM
    with pytest.raises(CertExpiredError, match="expired at 9999-12-31"):
        verify_report(report, chain, expected_nonce=REPORT_NONCE,
                      now=dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC))
    with pytest.raises(CertExpiredError, match="not valid before 2020-10-17"):
        verify_report(report, chain, expected_nonce=REPORT_NONCE, now=dt.datetime(2019, 1, 1, tzinfo=dt.UTC))


def test_really_expired_leaf_is_rejected():
    ca = TestDeviceCA()
    gpu = FakeGpu(REPORT, leaf_not_after=dt.datetime(2024, 6, 1, tzinfo=dt.UTC))
    gpu.enrol(ca)
    nonce = bytes(range(32))
    with pytest.raises(CertExpiredError, match="expired at 2024-06-01"):
        verify_report(gpu.attestation_report(nonce), gpu.chain_pem, expected_nonce=nonce, trusted_roots=[ca.root])
    verify_report(gpu.attestation_report(nonce), gpu.chain_pem, expected_nonce=nonce, trusted_roots=[ca.root],
                  now=dt.datetime(2024, 5, 1, tzinfo=dt.UTC))


def test_chain_from_another_root_is_not_trusted():
    ca = TestDeviceCA()
    gpu = FakeGpu(REPORT)
    gpu.enrol(ca)
    with pytest.raises(CertChainError, match="not a trusted NVIDIA root CA"):
        verify_report(gpu.attestation_report(REPORT_NONCE), gpu.chain_pem, expected_nonce=REPORT_NONCE)


def test_chain_of_another_gpu_is_a_signature_error():
    coco_chain = (TRUSTEE / "hopper_coco_certs1.txt").read_bytes()
    with pytest.raises(SignatureError):
        verify_report(REPORT, coco_chain, expected_nonce=REPORT_NONCE)


def test_leaf_certifying_other_firmware_is_an_fwid_mismatch():
    ca = TestDeviceCA()
    gpu = FakeGpu(REPORT)
    gpu.key, gpu.leaf = ca.issue_leaf(gpu.uuid, bytes(48))  # signs fine, but certifies another FWID
    gpu.chain_pem = b"".join(c.public_bytes(Encoding.PEM) for c in (gpu.leaf, ca.ica, ca.root))
    with pytest.raises(FwidMismatchError, match=f"FWID mismatch: certificate {'00' * 48}, report {FWID}"):
        verify_report(gpu.attestation_report(REPORT_NONCE), gpu.chain_pem, expected_nonce=REPORT_NONCE,
                      trusted_roots=[ca.root])


@pytest.mark.parametrize(("report", "chain"), [
    ("trustee/nvidia/hopper_coco_report1.txt", "trustee/nvidia/hopper_coco_certs1.txt"),
    ("nvtrust/samples/hopperAttestationReport.txt", "nvtrust/samples/hopperCertChain.txt"),
    ("nv-attestation-sdk/unit-testdata/hopperAttestationReport.txt",
     "nv-attestation-sdk/unit-testdata/hopperCertChain.txt"),
    ("nv-attestation-sdk/unit-testdata/sample_attestation_data/gpu/blackwellAttestationReport.txt",
     "nv-attestation-sdk/unit-testdata/sample_attestation_data/gpu/blackwellCertChain.txt"),
    ("nv-attestation-sdk/unit-testdata/sample_attestation_data/switch/switchAttestationReport.txt",
     "nv-attestation-sdk/unit-testdata/sample_attestation_data/switch/switchCertChain.txt"),
])
def test_other_real_reports_verify(report, chain):
    data = hex_file(UPSTREAM / report)
    nonce = parse_report(data).request.nonce
    verify_report(data, (UPSTREAM / chain).read_bytes(), expected_nonce=nonce)


@pytest.mark.parametrize("path", sorted((UPSTREAM / "nv-attestation-sdk/serialized_test_evidence").glob("*.json")),
                         ids=lambda p: p.name)
def test_nvat_serialized_evidence_verifies_with_base64_chain(path):
    for entry in json.loads(path.read_text()):
        verify_report(base64.b64decode(entry["evidence"]), entry["certificate"],
                      expected_nonce=bytes.fromhex(entry["nonce"]))


# --- the certificate-chain loader -----------------------------------------------------------------

def test_chain_encodings_decode_to_the_same_certificates():
    pem = load_cert_chain(CASE1)
    assert len(pem) == 5
    assert load_cert_chain(base64.b64encode(CASE1)) == pem
    assert load_cert_chain(base64.b64encode(CASE1).decode()) == pem
    der = b"".join(c.public_bytes(Encoding.DER) for c in pem)
    assert load_cert_chain(der) == pem
    assert load_cert_chain(base64.b64encode(der)) == pem


@pytest.mark.parametrize(("data", "message"), [
    (b"", "empty"),
    (b"   \n", "empty"),
    (b"not a certificate", "neither PEM, DER nor base64"),
    (base64.b64encode(b"hello world"), "does not decode to PEM or DER"),
    (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "does not parse"),
    (CASE1 + b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not certificates"),
    (CASE1 * 3, f"more than {MAX_CERTS}"),
    (b"\x30\x82\xff\xff" + bytes(10), "truncated"),
    (b"A" * (65 * 1024), "at most"),
])
def test_bad_chains_are_rejected(data, message):
    with pytest.raises(CertChainError, match=message):
        load_cert_chain(data)


def test_trusted_roots_must_be_self_signed():
    with pytest.raises(CertChainError, match="not a self-signed"):
        load_trusted_roots(CASE1)
    assert load_trusted_roots((TRUSTEE / "nvidia_device_root.pem").read_bytes()) == (nvidia_device_root(),)


def test_chain_needs_a_configured_root_and_aware_clock():
    certs = load_cert_chain(CASE1)
    with pytest.raises(CertChainError, match="no trusted NVIDIA root"):
        verify_chain(certs, [])
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_chain(certs, [nvidia_device_root()], dt.datetime(2025, 1, 1))


def _load_or_chain_error(data) -> None:
    try:
        certs = load_cert_chain(data)
    except CertChainError:
        return
    assert 1 <= len(certs) <= MAX_CERTS


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=400), st.text(max_size=200)))
def test_fuzz_chain_loader_random(data):
    _load_or_chain_error(data)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(CASE1) - 1), st.integers(0, 255)), min_size=1, max_size=4),
       st.booleans())
def test_fuzz_chain_loader_mutated(mutations, as_der):
    source = bytearray(b"".join(c.public_bytes(Encoding.DER) for c in load_cert_chain(CASE1)) if as_der else CASE1)
    for offset, value in mutations:
        source[offset % len(source)] = value
    _load_or_chain_error(bytes(source))
    try:
        verify_report(REPORT, bytes(source), expected_nonce=REPORT_NONCE)
    except GpuEvidenceError:
        pass
