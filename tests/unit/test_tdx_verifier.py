"""The stand-in ``tdx`` verifier on real evidence and on emulated-guest evidence."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

import trustee_standin.verifiers.tdx as tdx_verifier
from attestation_agent.tdx import ccel
from attestation_agent.tdx.quote import parse_quote
from tests.conftest import UPSTREAM
from tests.fakes.configfs_tsm import EmulatedTdxGuest
from trustee_standin.verifiers import VerificationError, get_verifier

AAEL = UPSTREAM / "openanolis-trustee-v1.5.2/aael"
GO = UPSTREAM / "go-tdx-guest/ccel"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_registered_for_tdx():
    assert get_verifier("tdx") is tdx_verifier.verify_tdx


def test_real_quote_with_aael_text_verifies_and_binds_its_report_data():
    quote = (AAEL / "AAEL_quote_tdx").read_bytes()
    report_data = parse_quote(quote).report_data
    assert report_data[48:] == bytes(16)  # the KBS layout: 48-byte digest + 16 zero bytes
    evidence = {"quote": b64(quote), "cc_eventlog": None, "aa_eventlog": (AAEL / "AAEL_data_1").read_text()}
    claims = tdx_verifier.verify_tdx(evidence, report_data[:48])
    assert claims["report_data"] == report_data.hex()
    assert claims["aael"] == {"image-rs/CreateContainer": ["docker.io/library/alpine"]}
    assert claims["AA"]["eventlog"]["image-rs"]["CreateContainer"] == "docker.io/library/alpine"
    assert "no TCB status" in claims["verifier"]["collateral"]
    with pytest.raises(VerificationError, match="REPORT_DATA is different"):
        tdx_verifier.verify_tdx(evidence, hashlib.sha384(b"other nonce").digest())
    with pytest.raises(VerificationError, match="AA eventlog does not pass check"):
        tdx_verifier.verify_tdx({**evidence, "aa_eventlog": (AAEL / "AAEL_data_2").read_text()}, None)


def test_real_ccel_replays_against_real_quote_and_claims_match_trustee_shape():
    evidence = {"quote": b64((GO / "cos-113-tdx-quote.dat").read_bytes()),
                "cc_eventlog": b64(ccel.trim((GO / "ccel_data.dat").read_bytes()))}
    claims = tdx_verifier.verify_tdx(evidence, None)
    assert len(claims["uefi_event_logs"]) == 43
    # trustee's published claims for tdx_quote_4.dat (+ CCEL_data, which does not replay to it)
    expected = json.loads((UPSTREAM / "trustee/tdx/parse_tdx_claims_expected.json").read_text())
    quote4 = parse_quote((UPSTREAM / "trustee/tdx/tdx_quote_4.dat").read_bytes())
    assert tdx_verifier.quote_claims(quote4) == expected["quote"]
    log = ccel.parse_event_log((UPSTREAM / "trustee/ccel/CCEL_data").read_bytes())
    ours = tdx_verifier.event_log_claims(log)
    assert [{k: v for k, v in e.items() if k != "details"} for e in expected["uefi_event_logs"]] == ours


def test_mismatching_ccel_is_rejected():
    evidence = {"quote": b64((UPSTREAM / "trustee/tdx/tdx_quote_4.dat").read_bytes()),
                "cc_eventlog": b64((UPSTREAM / "trustee/ccel/CCEL_data").read_bytes())}
    with pytest.raises(VerificationError, match="RTMR 0, 1, 2"):
        tdx_verifier.verify_tdx(evidence, None)


@pytest.mark.parametrize("evidence, match", [
    ([], "not a JSON object"),
    ({}, "'quote' must be"),
    ({"quote": ""}, "'quote' must be"),
    ({"quote": "***"}, "not standard base64"),
    ({"quote": b64(b"\x04\x00" + bytes(100))}, "quote:"),
    ({"quote": b64((GO / "cos-113-tdx-quote.dat").read_bytes()), "cc_eventlog": 5}, "string or null"),
    ({"quote": b64((GO / "cos-113-tdx-quote.dat").read_bytes()), "cc_eventlog": b64(b"junk")}, "Parse CC Eventlog"),
    ({"quote": b64((GO / "cos-113-tdx-quote.dat").read_bytes()), "aa_eventlog": "junk"}, "Parse AA Eventlog"),
])
def test_malformed_evidence(evidence, match):
    with pytest.raises(VerificationError, match=match):
        tdx_verifier.verify_tdx(evidence, None)


def test_gpu_evidence_goes_to_the_hook_and_fails_closed_without_one(tmp_path, monkeypatch):
    guest = EmulatedTdxGuest((GO / "cos-113-tdx-quote.dat").read_bytes(), tmp_path)
    digest = hashlib.sha384(b"binding").digest()
    quote = guest.generate_quote(digest + bytes(16))
    evidence = {"quote": b64(quote), "gpu_evidence": {"evidence_list": []}}
    calls = []

    def fake_gpu(gpu_evidence, report_data):
        calls.append((gpu_evidence, report_data))
        return {"nvidia_gpu.0": {"ok": True}}

    monkeypatch.setattr(tdx_verifier, "GPU_VERIFIER", fake_gpu)
    claims = tdx_verifier.verify_tdx(evidence, digest)
    assert calls == [({"evidence_list": []}, digest)] and claims["nvidia_gpu.0"] == {"ok": True}
    monkeypatch.setattr(tdx_verifier, "GPU_VERIFIER", None)
    monkeypatch.setattr(tdx_verifier, "_gpu_verifier", lambda: None)
    with pytest.raises(VerificationError, match="no GPU verifier"):
        tdx_verifier.verify_tdx(evidence, digest)
