"""NvidiaGpuAttester with the fake NVML: evidence shapes, local refusal, ready state, NVML errors.

The fake signs fresh reports with a test device CA (see tests/fakes/fake_pynvml.py), so these tests
trust ``fake.ca.root``; the replay test uses NVIDIA-signed fixture evidence and NVIDIA's real root.
"""

from __future__ import annotations

import datetime as dt
import inspect
import os

import pynvml
import pytest

from agents.settings import parse_settings
from attestation_agent.attesters.nvidia import NvidiaGpuAttester
from attestation_agent.kbs import canonical
from attestation_agent.kbs.encoding import b64std_decode
from attestation_agent.nvidia import evidence as formats
from attestation_agent.nvidia.errors import GpuEvidenceError, NonceMismatchError, NvmlError, SignatureError
from attestation_agent.nvidia.settings import GPU_SETTINGS
from attestation_agent.nvidia.spdm import parse_report
from tests.conftest import UPSTREAM
from tests.fakes import fake_pynvml
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml, load_hex_report
from trustee_standin.verifiers import VerificationError
from trustee_standin.verifiers import nvidia as standin

COCO_REPORT = load_hex_report(UPSTREAM / "trustee/nvidia/hopper_coco_report1.txt")
COCO_CHAIN = (UPSTREAM / "trustee/nvidia/hopper_coco_certs1.txt").read_bytes()


def attester_for(fake: FakeNvml, **kw) -> NvidiaGpuAttester:
    return NvidiaGpuAttester(fake, trusted_roots=[fake.ca.root], **kw)


@pytest.fixture
def digest() -> bytes:
    return os.urandom(48)


@pytest.fixture
def trust_fake(monkeypatch):
    def apply(fake: FakeNvml) -> None:
        monkeypatch.setattr(standin, "TRUSTED_ROOTS", [fake.ca.root])
    return apply


API = ["nvmlInit", "nvmlShutdown", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetUUID",
       "nvmlDeviceGetName", "nvmlDeviceGetVbiosVersion", "nvmlDeviceGetArchitecture", "nvmlSystemGetDriverVersion",
       "nvmlSystemGetConfComputeState", "nvmlSystemGetConfComputeSettings",
       "nvmlDeviceGetConfComputeGpuAttestationReport", "nvmlDeviceGetConfComputeGpuCertificate",
       "nvmlSystemGetConfComputeGpusReadyState", "nvmlSystemSetConfComputeGpusReadyState"]


@pytest.mark.parametrize("name", API)
def test_fake_mirrors_pynvml_signatures(name):
    real = inspect.signature(getattr(pynvml, name))
    fake = inspect.signature(getattr(FakeNvml([]), name))
    assert list(fake.parameters) == list(real.parameters), name


def test_fake_uses_real_pynvml_structs_and_errors():
    assert fake_pynvml.c_nvmlConfComputeGpuAttestationReport_t is pynvml.c_nvmlConfComputeGpuAttestationReport_t
    assert isinstance(pynvml.NVMLError(12), pynvml.NVMLError_LibraryNotFound)
    fake = FakeNvml([FakeGpu(COCO_REPORT)])
    fake.nvmlInit()
    handle = fake.nvmlDeviceGetHandleByIndex(0)
    with pytest.raises(TypeError):  # same ctypes failure as pynvml for a nonce that is not 32 bytes
        fake.nvmlDeviceGetConfComputeGpuAttestationReport(handle, list(range(16)))


async def test_additional_evidence_shape_nonce_and_standin_verification(digest, trust_fake):
    fake = FakeNvml([FakeGpu(COCO_REPORT), FakeGpu(COCO_REPORT)])
    trust_fake(fake)
    attester = attester_for(fake)
    value = await attester.evidence(digest)
    entries = value["device_evidence_list"]
    assert [e["uuid"] for e in entries] == [g.uuid for g in fake.gpus]
    assert all(set(e) == {"arch", "uuid", "evidence", "certificate"} and e["arch"] == "HOPPER" for e in entries)
    for entry in entries:
        report = parse_report(b64std_decode(entry["evidence"]))
        assert report.request.nonce == canonical.gpu_nonce(digest)
        assert b64std_decode(entry["certificate"]).startswith(b"-----BEGIN CERTIFICATE-----")
    claims = standin.verify_nvidia(value, digest)
    assert claims["device_count"] == 2
    assert claims["devices"][0]["driver_version"] == "580.95.05"
    with pytest.raises(VerificationError, match="does not match the expected nonce"):
        standin.verify_nvidia(value, os.urandom(48))


async def test_embedded_evidence_shape_and_standin_verification(digest, trust_fake):
    fake = FakeNvml([FakeGpu(COCO_REPORT, name="NVIDIA H20")])
    trust_fake(fake)
    value = await attester_for(fake).evidence_embedded(digest)
    assert set(value) == {"evidence_list", "collection_time"}
    assert value["collection_time"].endswith("Z")
    entry = value["evidence_list"][0]
    assert entry["index"] == 0 and entry["name"] == "NVIDIA H20" and entry["cc_enabled"] is True
    assert entry["driver_version"] == "580.95.05" and entry["vbios_version"] == "96.00.74.00.1A"
    devices, collected = formats.parse_embedded_evidence(value)
    assert collected.tzinfo is not None and devices[0].uuid == fake.gpus[0].uuid
    claims = standin.verify_embedded_gpu_evidence(value, digest)["nvidia_gpu"]
    assert claims["0"]["uuid"] == fake.gpus[0].uuid and len(claims["0"]["measurement"]) == 96
    entry["driver_version"] = "999.1"  # unsigned field that lies
    with pytest.raises(VerificationError, match="differs from the signed"):
        standin.verify_embedded_gpu_evidence(value, digest)


async def test_tampered_report_is_refused_locally(digest):
    fake = FakeNvml([FakeGpu(COCO_REPORT), FakeGpu(COCO_REPORT, tamper=True)])
    attester = attester_for(fake)
    with pytest.raises(SignatureError, match=r"^GPU 1 \(GPU-"):
        await attester.evidence(digest)
    assert not await attester.set_ready_state(True)
    assert fake.ready_state == pynvml.NVML_CC_ACCEPTING_CLIENT_REQUESTS_FALSE
    assert "nvmlSystemSetConfComputeGpusReadyState" not in fake.calls


async def test_gpu_that_ignores_the_nonce_is_refused(digest):
    fake = FakeNvml([FakeGpu(COCO_REPORT, ignore_nonce=True)])
    with pytest.raises(NonceMismatchError, match="stale or replayed"):
        await attester_for(fake).evidence(digest)


async def test_ready_state_set_after_success_only_when_enabled(digest):
    fake = FakeNvml([FakeGpu(COCO_REPORT)])
    attester = attester_for(fake)
    assert not await attester.set_ready_state(True)  # nothing verified yet
    await attester.evidence(digest)
    assert not await attester.set_ready_state(False)  # the KBS refused
    assert fake.ready_state == 0
    assert await attester.set_ready_state(True)
    assert fake.ready_state == 1
    disabled = FakeNvml([FakeGpu(COCO_REPORT)])
    off = attester_for(disabled, set_ready=False)
    await off.evidence(digest)
    assert not await off.set_ready_state(True)
    assert disabled.ready_state == 0


async def test_nvml_stays_initialised_between_attestations(digest):
    fake = FakeNvml([FakeGpu(COCO_REPORT)])
    attester = attester_for(fake)
    await attester.evidence(digest)
    await attester.evidence_embedded(digest)
    assert fake.calls.count("nvmlInit") == 1 and fake.initialized == 1
    await attester.close()
    assert fake.initialized == 0


async def test_replayed_nvidia_signed_report_verifies_against_the_real_root():
    fixed = parse_report(COCO_REPORT).request.nonce
    fake = FakeNvml([FakeGpu(COCO_REPORT, COCO_CHAIN, mode="replay")])
    attester = NvidiaGpuAttester(fake, nonce_source=lambda _: fixed)  # default roots: NVIDIA's
    value = await attester.evidence(os.urandom(48))
    assert b64std_decode(value["device_evidence_list"][0]["evidence"]) == COCO_REPORT
    assert standin.verify_nvidia(value, fixed + bytes(16))["device_count"] == 1
    with pytest.raises(NonceMismatchError):  # the real nonce source cannot match a fixed fixture
        await NvidiaGpuAttester(fake).evidence(os.urandom(48))


async def test_expired_certificate_is_refused_with_injected_clock(digest):
    fake = FakeNvml([FakeGpu(COCO_REPORT)])
    late = dt.datetime(2100, 1, 1, tzinfo=dt.UTC)
    with pytest.raises(GpuEvidenceError, match="expired at 2099-01-01"):
        await attester_for(fake, clock=lambda: late).evidence(digest)


@pytest.mark.parametrize(("fake_kw", "error", "message"), [
    ({"library_present": False}, NvmlError, "NVML nvmlInit failed.*libnvidia-ml.so.1"),
    ({"cc_enabled": False}, GpuEvidenceError, "confidential computing is off"),
    ({"devtools": True}, GpuEvidenceError, "DevTools mode"),
    ({"driver_version": "535.1"}, GpuEvidenceError, "NVML reports driver '535.1' but the signed report says"),
    ({"errors": {"nvmlDeviceGetConfComputeGpuAttestationReport": pynvml.NVML_ERROR_NOT_SUPPORTED}},
     NvmlError, "GpuAttestationReport for GPU 0 .* failed: Not Supported .*CC mode is off"),
    ({"errors": {"nvmlSystemGetConfComputeSettings": pynvml.NVML_ERROR_NO_PERMISSION}},
     NvmlError, "run the attestation agent as root"),
])
async def test_nvml_and_cc_problems_are_clear_errors(digest, fake_kw, error, message):
    fake = FakeNvml([FakeGpu(COCO_REPORT)], **fake_kw)
    with pytest.raises(error, match=message):
        await attester_for(fake).evidence(digest)


async def test_ppcie_mode_without_cc_feature_is_collected_and_reported(digest):
    fake = FakeNvml([FakeGpu(COCO_REPORT)], cc_enabled=False,
                    multi_gpu_mode=pynvml.NVML_CC_SYSTEM_MULTIGPU_PROTECTED_PCIE)
    attester = attester_for(fake)
    await attester.evidence(digest)
    assert attester.describe()["cc"]["multi_gpu_mode"] == "protected-pcie"


async def test_unsupported_architecture_and_no_gpus(digest):
    ampere = FakeNvml([FakeGpu(COCO_REPORT, arch=pynvml.NVML_DEVICE_ARCH_AMPERE, name="NVIDIA A100")])
    with pytest.raises(NvmlError, match="architecture 7"):
        await attester_for(ampere).evidence(digest)
    with pytest.raises(NvmlError, match="lists no GPU"):
        await attester_for(FakeNvml([])).evidence(digest)


async def test_report_data_is_checked(digest):
    attester = attester_for(FakeNvml([FakeGpu(COCO_REPORT)]))
    with pytest.raises(ValueError, match="at least 32 bytes"):
        await attester.evidence(b"short")


def test_settings_parse():
    values = parse_settings({"gpu_ra_enable": "true", "gpu_set_ready": "false"}, GPU_SETTINGS, where="[aa]")
    assert values == {"gpu_ra_enable": True, "gpu_set_ready": False}
    assert parse_settings({}, GPU_SETTINGS, where="[aa]") == {"gpu_ra_enable": False, "gpu_set_ready": True}


@pytest.mark.parametrize(("value", "message"), [
    (None, "must be a JSON object"),
    ({"device_evidence_list": []}, "non-empty"),
    ({"device_evidence_list": [{"arch": "AMPERE", "evidence": "", "certificate": ""}]}, "unknown architecture"),
    ({"device_evidence_list": [{"arch": "HOPPER", "evidence": "!!", "certificate": ""}]}, "neither standard base64"),
    ({"device_evidence_list": [{"arch": "HOPPER", "evidence": "00", "certificate": "%"}]}, "not standard base64"),
    ({"device_evidence_list": [{"arch": "HOPPER", "evidence": "00", "certificate": "QQ=="}]}, "too short"),
])
def test_standin_rejects_malformed_additional_evidence(value, message):
    with pytest.raises(VerificationError, match=message):
        standin.verify_nvidia(value, bytes(48))


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda v: v.pop("collection_time"), "collection_time"),
    (lambda v: v.update(collection_time="yesterday"), "not RFC3339"),
    (lambda v: v["evidence_list"][0].update(attestation_report=None), "cannot be verified"),
    (lambda v: v["evidence_list"][0].update(cc_enabled="yes"), "cc_enabled"),
    (lambda v: v["evidence_list"][0].update(index=-1), "index"),
    (lambda v: v["evidence_list"].append(dict(v["evidence_list"][0])), "twice"),
])
async def test_standin_rejects_malformed_embedded_evidence(digest, trust_fake, mutate, message):
    fake = FakeNvml([FakeGpu(COCO_REPORT)])
    trust_fake(fake)
    value = await attester_for(fake).evidence_embedded(digest)
    mutate(value)
    with pytest.raises(VerificationError, match=message):
        standin.verify_embedded_gpu_evidence(value, digest)


def test_nvidia_verifier_is_registered():
    from trustee_standin.verifiers import get_verifier
    assert get_verifier("nvidia") is standin.verify_nvidia
