"""End to end: KbsClient + sample TEE + fake-NVML GPU against a 0.4.0 Trustee stand-in over HTTP.

The stand-in verifies the ``nvidia`` additional evidence with real checks (chain, FWID, signature,
nonce = first 32 bytes of H(D)). The fake GPU signs with a test device CA, which the stand-in is
told to trust (``trustee_standin.verifiers.nvidia.TRUSTED_ROOTS``); tests that must fail at the
stand-in make the agent and the stand-in disagree on purpose.
"""

from __future__ import annotations

import pytest

from agents.retry import Backoff
from attestation_agent.attesters.nvidia import NvidiaGpuAttester
from attestation_agent.attesters.sample import SampleAttester
from attestation_agent.errors import KbsAttestationRejectedError
from attestation_agent.evidence import LocalEvidence
from attestation_agent.kbs import canonical
from attestation_agent.kbs.client import DialectMemory, KbsClient, KbsClientConfig
from attestation_agent.kbs.dialect import Dialect
from attestation_agent.nvidia.chain import nvidia_device_root
from attestation_agent.nvidia.errors import SignatureError
from tests.conftest import UPSTREAM
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml, load_hex_report
from trustee_standin.config import StandinConfig
from trustee_standin.server import StandinServer
from trustee_standin.verifiers import nvidia as standin_nvidia
from trustee_standin.verifiers import register_verifier

MODEL_KEY = "default/aliyun/model-decryption-key"
FAST = Backoff(initial=0.01, maximum=0.05, attempts=2)
REPORT = load_hex_report(UPSTREAM / "trustee/nvidia/hopper_coco_report1.txt")


def coco(repository) -> StandinConfig:
    """Upstream CoCo error style: the verifier's reason is shown to the client."""
    return StandinConfig(dialect=Dialect.V0_4_0, repository=repository, error_style="coco")


def client(url: str, gpu: NvidiaGpuAttester) -> KbsClient:
    return KbsClient(KbsClientConfig(url=url, dialect=Dialect.V0_4_0, backoff=FAST),
                     LocalEvidence(SampleAttester(), (gpu,)), dialects=DialectMemory())


async def test_gpu_evidence_attests_and_releases_the_resource(repository, secret, monkeypatch):
    fake = FakeNvml([FakeGpu(REPORT), FakeGpu(REPORT)])
    monkeypatch.setattr(standin_nvidia, "TRUSTED_ROOTS", [fake.ca.root])
    seen: list[bytes] = []
    original = standin_nvidia.verify_nvidia

    def spy(evidence, expected):
        seen.append(expected)
        return original(evidence, expected)

    register_verifier("nvidia", spy)
    try:
        gpu = NvidiaGpuAttester(fake, trusted_roots=[fake.ca.root])
        async with StandinServer(StandinConfig(dialect=Dialect.V0_4_0, repository=repository)) as trustee:
            async with client(trustee.url, gpu) as kbs:
                assert await kbs.get_resource(MODEL_KEY) == secret
                attestation = await kbs.attestation()
        assert await gpu.set_ready_state(True) and fake.ready_state == 1
    finally:
        register_verifier("nvidia", original)
    # The stand-in checked the GPU reports against H(D), and both GPUs signed exactly its first 32 bytes.
    assert len(seen) == 1 and len(seen[0]) == 48
    assert all(g.last_nonce == canonical.gpu_nonce(seen[0]) for g in fake.gpus)
    assert attestation.tee == "sample"


async def test_standin_rejects_gpu_chain_it_does_not_trust(repository, monkeypatch):
    fake = FakeNvml([FakeGpu(REPORT)])
    monkeypatch.setattr(standin_nvidia, "TRUSTED_ROOTS", [nvidia_device_root()])  # the real root only
    gpu = NvidiaGpuAttester(fake, trusted_roots=[fake.ca.root])
    async with StandinServer(coco(repository)) as trustee:
        async with client(trustee.url, gpu) as kbs:
            with pytest.raises(KbsAttestationRejectedError, match="not a trusted NVIDIA root CA"):
                await kbs.attest()
        assert trustee.faults.counters["attest"] >= 1
    assert not await gpu.set_ready_state(False)
    assert fake.ready_state == 0


async def test_standin_rejects_wrong_nonce(repository, monkeypatch):
    fake = FakeNvml([FakeGpu(REPORT)])
    monkeypatch.setattr(standin_nvidia, "TRUSTED_ROOTS", [fake.ca.root])
    # A locally consistent agent that asks the GPU for the wrong nonce (e.g. the second half of H(D)).
    gpu = NvidiaGpuAttester(fake, trusted_roots=[fake.ca.root], nonce_source=lambda digest: digest[16:48])
    async with StandinServer(coco(repository)) as trustee:
        async with client(trustee.url, gpu) as kbs:
            with pytest.raises(KbsAttestationRejectedError, match="does not match the expected nonce"):
                await kbs.attest()


async def test_tampered_gpu_report_never_leaves_the_agent(repository, monkeypatch):
    fake = FakeNvml([FakeGpu(REPORT, tamper=True)])
    monkeypatch.setattr(standin_nvidia, "TRUSTED_ROOTS", [fake.ca.root])
    gpu = NvidiaGpuAttester(fake, trusted_roots=[fake.ca.root])
    async with StandinServer(StandinConfig(dialect=Dialect.V0_4_0, repository=repository)) as trustee:
        async with client(trustee.url, gpu) as kbs:
            with pytest.raises(SignatureError, match="signature does not verify"):
                await kbs.attest()
        assert trustee.faults.counters["attest"] == 0  # refused before anything was sent
