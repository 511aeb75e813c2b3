"""SPDM GET_MEASUREMENTS report parser: NVIDIA's golden parse, every fixture report, bounds, fuzz."""

from __future__ import annotations

import base64
import json
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation_agent.nvidia.errors import SpdmError
from attestation_agent.nvidia.spdm import (
    MAX_REPORT_SIZE,
    REQUEST_SIZE,
    OpaqueData,
    build_report,
    parse_report,
    request_to_nvidia_sdk_json,
    to_nvidia_sdk_json,
)
from tests.conftest import UPSTREAM

SDK = UPSTREAM / "nv-attestation-sdk" / "unit-testdata"
GPU_SAMPLES = SDK / "sample_attestation_data" / "gpu"
HEX_REPORTS = [
    UPSTREAM / "trustee/nvidia/hopperAttestationReport.txt",
    UPSTREAM / "trustee/nvidia/hopper_coco_report1.txt",
    UPSTREAM / "nvtrust/samples/hopperAttestationReport.txt",
    SDK / "hopperAttestationReport.txt",
    GPU_SAMPLES / "hopperAttestationReport.txt",
    GPU_SAMPLES / "hopperAttestationReportExpired.txt",
    GPU_SAMPLES / "hopperAttestationReportInvalidSignature.txt",
    GPU_SAMPLES / "blackwellAttestationReport.txt",
    SDK / "sample_attestation_data/switch/switchAttestationReport.txt",
]
JSON_EVIDENCE = sorted((UPSTREAM / "nv-attestation-sdk/serialized_test_evidence").glob("*.json"))


def hex_report(path) -> bytes:
    return bytes.fromhex(path.read_text().strip())


GOLDEN_REPORT = hex_report(SDK / "hopperAttestationReport.txt")


def test_response_equals_nvidia_golden_parse_field_by_field():
    expected = json.loads((SDK / "spdm_parsed_output.json").read_text())
    actual = to_nvidia_sdk_json(parse_report(GOLDEN_REPORT))
    for key in ("SPDMVersion", "RequestResponseCode", "Param1", "Param2", "NumberOfBlocks",
                "MeasurementRecordLength", "Nonce", "OpaqueLength", "Signature"):
        assert actual[key] == expected[key], key
    assert actual["MeasurementRecord"]["NumberOfBlocks"] == expected["MeasurementRecord"]["NumberOfBlocks"]
    exp_blocks = expected["MeasurementRecord"]["MeasurementBlocks"]
    act_blocks = actual["MeasurementRecord"]["MeasurementBlocks"]
    assert set(act_blocks) == set(exp_blocks)
    for index, block in exp_blocks.items():
        assert act_blocks[index] == block, f"measurement block {index}"
    exp_opaque = expected["OpaqueData"]["OpaqueDataField"]
    act_opaque = actual["OpaqueData"]["OpaqueDataField"]
    for name, value in exp_opaque.items():
        assert act_opaque[name] == value, name
    # The golden dump comes from NVIDIA's older Python SDK, which did not know opaque types 34 and 36
    # that this (newer, driver 580) report also carries; everything it knew matches exactly.
    assert set(act_opaque) - set(exp_opaque) == {"OPAQUE_FIELD_ID_OPAQUE_DATA_VERSION",
                                                 "OPAQUE_FIELD_ID_FEATURE_FLAG"}


def test_request_equals_nvidia_golden_parse():
    expected = json.loads((SDK / "spdm_req_parsed_output.json").read_text())
    assert request_to_nvidia_sdk_json(parse_report(GOLDEN_REPORT).request) == expected


def test_typed_accessors_on_golden_report():
    report = parse_report(GOLDEN_REPORT)
    opaque = report.response.opaque
    assert opaque.driver_version == "580.159.03"
    assert opaque.vbios_version == "96.00.74.00.20"  # 0x0074009620000000: reversed first half, then 0x20
    assert opaque.text("PROJECT") == "1010"
    assert opaque.text("PROJECT_SKU") == "0205"
    assert opaque.text("CHIP_SKU") == "862"
    assert opaque.feature_flag == "SPT"
    assert not opaque.protected_pcie
    assert len(opaque.measurement_counts) == 64
    assert len(report.response.blocks) == 64 and all(len(b.value) == 48 for b in report.response.blocks)
    assert report.signed == GOLDEN_REPORT[:-96] and report.signature == GOLDEN_REPORT[-96:]
    assert report.request.nonce.hex().startswith("5bb22e37")


@pytest.mark.parametrize("path", HEX_REPORTS, ids=lambda p: p.name)
def test_every_fixture_report_parses(path):
    data = hex_report(path)
    report = parse_report(data)
    assert len(report.signed) + 96 + len(report.trailing) == len(data)
    assert report.response.number_of_blocks == len(report.response.blocks)


def test_trailing_byte_of_coco_capture_is_tolerated_and_outside_the_signed_span():
    data = hex_report(UPSTREAM / "trustee/nvidia/hopper_coco_report1.txt")
    report = parse_report(data)
    assert report.trailing == b"\0"
    assert report.response.opaque.driver_version == "580.95.05"


@pytest.mark.parametrize("path", JSON_EVIDENCE, ids=lambda p: p.name)
def test_nvat_serialized_evidence_parses(path):
    for entry in json.loads(path.read_text()):
        report = parse_report(base64.b64decode(entry["evidence"]))
        assert report.request.nonce.hex() == entry["nonce"]


def test_ppcie_flags_read_from_multi_gpu_sample():
    entries = json.loads((UPSTREAM / "nv-attestation-sdk/serialized_test_evidence/multi_gpu_hopper.json").read_text())
    for entry in entries:
        opaque = parse_report(base64.b64decode(entry["evidence"])).response.opaque
        assert opaque.protected_pcie and opaque.feature_flag == "PPCIE"
        assert len(opaque.get("SWITCH_PDI")) == 144


def test_build_report_round_trips():
    report = parse_report(GOLDEN_REPORT)
    nonce, response_nonce = os.urandom(32), os.urandom(32)
    body = build_report(nonce, report.response.blocks, response_nonce, report.response.opaque)
    again = parse_report(body + b"\x11" * 96)
    assert again.request.nonce == nonce and again.response.nonce == response_nonce
    assert again.response.blocks == report.response.blocks
    assert again.response.opaque == report.response.opaque
    assert again.signed == body


# --- malformed input: specific, clean errors ------------------------------------------------------

def _mutate(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


@pytest.mark.parametrize(("data", "message"), [
    (b"", "too short"),
    (GOLDEN_REPORT[:36], "too short"),
    (_mutate(GOLDEN_REPORT, 0, b"\x12"), "only SPDM 1.1"),
    (_mutate(GOLDEN_REPORT, 1, b"\x81"), "expected GET_MEASUREMENTS"),
    (_mutate(GOLDEN_REPORT, 2, b"\x00"), "did not ask for a signature"),
    (_mutate(GOLDEN_REPORT, REQUEST_SIZE, b"\x10"), "differs from the request"),
    (_mutate(GOLDEN_REPORT, REQUEST_SIZE + 1, b"\x7f"), "expected MEASUREMENTS"),
    (_mutate(GOLDEN_REPORT, REQUEST_SIZE + 4, b"\x3f"), "bytes after its 63 blocks"),
    (_mutate(GOLDEN_REPORT, REQUEST_SIZE + 5, b"\xff\xff\x00"), "truncated"),
    (_mutate(GOLDEN_REPORT, REQUEST_SIZE + 8 + 1, b"\x02"), "not DMTF"),
    (_mutate(GOLDEN_REPORT, REQUEST_SIZE + 8 + 55, b"\x01"), "appears twice"),
    (GOLDEN_REPORT[:-1], "truncated"),
    (GOLDEN_REPORT + b"\0" * 17, "after the signature"),
    (GOLDEN_REPORT + b"\0" * (MAX_REPORT_SIZE - len(GOLDEN_REPORT) + 1), "at most"),
])
def test_malformed_reports_are_rejected_with_a_reason(data, message):
    with pytest.raises(SpdmError, match=message):
        parse_report(data)


def test_duplicate_opaque_type_is_rejected():
    report = parse_report(GOLDEN_REPORT)
    fields = report.response.opaque.fields
    body = build_report(os.urandom(32), report.response.blocks, os.urandom(32), OpaqueData(fields + fields[:1]))
    with pytest.raises(SpdmError, match="VBIOS_VERSION appears twice"):
        parse_report(body + bytes(96))


def test_opaque_field_overrunning_its_section_is_rejected():
    report = parse_report(GOLDEN_REPORT)
    start = len(report.signed) - report.response.opaque_length
    data = _mutate(GOLDEN_REPORT, start + 2, struct.pack("<H", 0xFFFF))
    with pytest.raises(SpdmError, match="opaque field VBIOS_VERSION needs 65535 bytes"):
        parse_report(data)


# --- fuzz: random and mutated input gives SpdmError or a parse, nothing else ----------------------

def _parse_or_spdm_error(data: bytes) -> None:
    try:
        report = parse_report(data)
    except SpdmError:
        return
    assert len(report.signed) + 96 + len(report.trailing) == len(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data):
    _parse_or_spdm_error(data)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_random_bytes_behind_a_valid_request(data):
    _parse_or_spdm_error(GOLDEN_REPORT[:REQUEST_SIZE] + bytes([0x11, 0x60]) + data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(GOLDEN_REPORT) - 1), st.integers(0, 255)), min_size=1, max_size=6),
       st.integers(0, len(GOLDEN_REPORT)))
def test_fuzz_mutated_real_report(mutations, cut):
    data = bytearray(GOLDEN_REPORT)
    for offset, value in mutations:
        data[offset] = value
    _parse_or_spdm_error(bytes(data))
    _parse_or_spdm_error(bytes(data[:cut]))
