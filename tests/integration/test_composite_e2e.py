"""Composite attestation end to end: emulated TDX (configfs-tsm) + fake-NVML GPUs, both dialects.

Protocol 0.1.0 (Trustee 1.5): the GPUs travel inside the TDX evidence as Alibaba's ``gpu_evidence``,
with nonce = first 32 bytes of the one binding digest. Protocol 0.4.0: they are ``nvidia``
additional evidence bound to H(D) while the quote binds H(P). The stand-in verifies the quote, the
event logs and every GPU report (chain to the fake's test device CA, signature, nonce). After the
Trustee accepted, the AA service sets the GPUs' CC ready state; after a refusal it does not.
"""

from __future__ import annotations

import pytest

from agents.retry import Backoff
from attestation_agent.attesters.nvidia import NvidiaGpuAttester
from attestation_agent.attesters.tdx import TdxAttester, TdxConfig
from attestation_agent.errors import KbsAttestationRejectedError
from attestation_agent.kbs.client import DialectMemory, KbsClientConfig
from attestation_agent.kbs.dialect import Dialect
from attestation_agent.service import AgentOptions, AttestationAgent
from tests.conftest import UPSTREAM
from tests.fakes.configfs_tsm import emulated_guest
from tests.fakes.fake_pynvml import FakeGpu, FakeNvml, load_hex_report
from trustee_standin.config import StandinConfig
from trustee_standin.server import StandinServer
from trustee_standin.verifiers import nvidia as standin_nvidia

MODEL_KEY = "default/aliyun/model-decryption-key"
REPORT = load_hex_report(UPSTREAM / "trustee/nvidia/hopper_coco_report1.txt")


def tdx_attester(tmp_path) -> TdxAttester:
    guest = emulated_guest(UPSTREAM / "go-tdx-guest/ccel", tmp_path / "td")
    acpi = tmp_path / "td" / "acpi" / "tables"
    config = TdxConfig(tsm_root=guest.tsm_root, ccel_table=acpi / "CCEL", ccel_data=acpi / "data" / "CCEL",
                       measurements_dir=tmp_path / "td" / "measurements", eventlog_path=tmp_path / "run" / "eventlog",
                       enable_eventlog=True, retry_delay=0.01)
    return TdxAttester(config, tsm_fs=guest.fs, register=guest.rtmr(3))


def agent_for(tmp_path, url: str, gpu: NvidiaGpuAttester) -> AttestationAgent:
    kbs = KbsClientConfig(url=url, backoff=Backoff(initial=0.01, maximum=0.05, attempts=2))
    agent = AttestationAgent(tdx_attester(tmp_path), AgentOptions(kbs=kbs), devices=(gpu,))
    agent._client()._dialects = DialectMemory()  # no dialect knowledge shared between tests
    return agent


@pytest.mark.parametrize("dialect", list(Dialect))
async def test_tdx_plus_gpus_attest_and_set_ready(tmp_path, repository, secret, dialect, monkeypatch):
    fake = FakeNvml([FakeGpu(REPORT), FakeGpu(REPORT)])
    monkeypatch.setattr(standin_nvidia, "TRUSTED_ROOTS", [fake.ca.root])
    gpu = NvidiaGpuAttester(fake, trusted_roots=[fake.ca.root])
    async with StandinServer(StandinConfig(dialect=dialect, repository=repository)) as trustee:
        agent = agent_for(tmp_path, trustee.api_url, gpu)
        try:
            assert fake.ready_state == 0
            await agent.token("kbs")
            assert fake.ready_state == 1  # set only after the Trustee accepted
            assert await agent._client().get_resource(MODEL_KEY) == secret
            assert (await agent._client().attestation()).dialect is dialect
        finally:
            await agent.close()


@pytest.mark.parametrize("dialect", list(Dialect))
async def test_gpu_the_trustee_does_not_trust_blocks_everything(tmp_path, repository, dialect, monkeypatch):
    """The GPU verifies locally (test CA) but the Trustee trusts only NVIDIA's root: refused, never ready."""
    fake = FakeNvml([FakeGpu(REPORT)])
    from attestation_agent.nvidia.chain import nvidia_device_root
    monkeypatch.setattr(standin_nvidia, "TRUSTED_ROOTS", [nvidia_device_root()])
    gpu = NvidiaGpuAttester(fake, trusted_roots=[fake.ca.root])
    config = StandinConfig(dialect=dialect, repository=repository, error_style="coco")
    async with StandinServer(config) as trustee:
        agent = agent_for(tmp_path, trustee.api_url, gpu)
        try:
            with pytest.raises(KbsAttestationRejectedError):
                await agent.token("kbs")
            assert fake.ready_state == 0
        finally:
            await agent.close()
