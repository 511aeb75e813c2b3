"""End to end: KbsClient + TdxAttester on an emulated TD against the Trustee stand-in.

The emulated TD (tests/fakes/configfs_tsm.py) serves quotes through the configfs-tsm ABI with
REPORTDATA = the binding digest, RTMRs from its registers, CCEL from go-tdx-guest's consistent
fixtures, and RTMR3 extended by the attester's runtime event log. The stand-in's ``tdx`` verifier
checks quote signature + QE binding, REPORTDATA, CCEL replay (RTMR0-2) and AAEL replay (RTMR3).
Tampering with any piece must make attestation fail with a clear error.
"""

from __future__ import annotations

import base64
import io
import re
from typing import Any

import pytest

import trustee_standin.verifiers.tdx  # noqa: F401  (registers the tdx verifier)
from agents.logsetup import configure_logging, reset_logging
from agents.retry import Backoff
from attestation_agent.attesters.base import RuntimeEvent
from attestation_agent.attesters.tdx import TdxAttester, TdxConfig
from attestation_agent.errors import EvidenceError, KbsAttestationRejectedError
from attestation_agent.evidence import LocalEvidence
from attestation_agent.kbs.client import DialectMemory, KbsClient, KbsClientConfig
from attestation_agent.kbs.dialect import Dialect
from attestation_agent.tdx import ccel
from tests.conftest import UPSTREAM
from tests.fakes.configfs_tsm import emulated_guest
from trustee_standin.config import StandinConfig
from trustee_standin.server import StandinServer

MODEL_KEY = "default/aliyun/model-decryption-key"
FAST = Backoff(initial=0.01, maximum=0.05, attempts=2)


@pytest.fixture
def logs():
    stream = io.StringIO()
    configure_logging(level="debug", fmt="json", stream=stream, service="test")
    yield stream
    reset_logging()


@pytest.fixture
def guest(tmp_path):
    return emulated_guest(UPSTREAM / "go-tdx-guest/ccel", tmp_path / "td")


@pytest.fixture
def attester(guest, tmp_path):
    acpi = tmp_path / "td" / "acpi" / "tables"
    config = TdxConfig(tsm_root=guest.tsm_root, ccel_table=acpi / "CCEL", ccel_data=acpi / "data" / "CCEL",
                       measurements_dir=tmp_path / "td" / "measurements", eventlog_path=tmp_path / "run" / "eventlog",
                       enable_eventlog=True, retry_delay=0.01)
    return TdxAttester(config, tsm_fs=guest.fs, register=guest.rtmr(3))


class Tampering(LocalEvidence):
    """Changes the evidence after the attester produced it (an attacker between AA and KBS)."""

    def __init__(self, attester, mutate) -> None:
        super().__init__(attester)
        self.mutate = mutate

    async def primary_evidence(self, report_data: bytes, *, embed_devices: bool) -> dict[str, Any]:
        return self.mutate(await super().primary_evidence(report_data, embed_devices=embed_devices), report_data)


def client(url: str, source) -> KbsClient:
    return KbsClient(KbsClientConfig(url=url, backoff=FAST), source, dialects=DialectMemory())


@pytest.mark.parametrize("dialect", list(Dialect))
async def test_tdx_attestation_completes_in_each_dialect(repository, secret, attester, guest, dialect):
    result = await attester.extend_runtime_measurement(
        RuntimeEvent("github.com/confidential-containers", "PullImage", "docker.io/library/busybox"))
    assert result.value == "OK"
    async with StandinServer(StandinConfig(dialect=dialect, repository=repository)) as trustee:
        async with client(trustee.url, LocalEvidence(attester)) as kbs:
            assert await kbs.get_resource(MODEL_KEY) == secret
            attestation = await kbs.attestation()
    assert attestation.tee == "tdx"
    assert guest.fs.inblob_writes == [64] and not guest.fs.entries  # one quote, directory removed


def _flip_quote_byte(offset: int):
    def mutate(evidence, _report_data):
        quote = bytearray(base64.b64decode(evidence["quote"]))
        quote[offset] ^= 1
        return {**evidence, "quote": base64.b64encode(bytes(quote)).decode()}
    return mutate


def _tamper_aael(evidence, _report_data):
    return {**evidence, "aa_eventlog": evidence["aa_eventlog"].replace("busybox", "evilbox")}


def _tamper_ccel(evidence, _report_data):
    log = bytearray(base64.b64decode(evidence["cc_eventlog"]))
    # a digest of an RTMR1 event (event data is not replayed; RTMR3 is the AAEL's business in 1.5)
    target = next(e for e in ccel.parse_event_log(bytes(log)).events if e.mr_index == 2)
    log[target.offset + 12 + 2] ^= 1  # MR index, type, count (12 bytes), alg id (2), digest
    return {**evidence, "cc_eventlog": base64.b64encode(bytes(log)).decode()}


@pytest.mark.parametrize("dialect", list(Dialect))
@pytest.mark.parametrize("mutate, reason", [
    (_flip_quote_byte(48 + 136), "quote signature"),        # MRTD bit
    (_flip_quote_byte(48 + 520), "quote signature"),        # REPORTDATA bit
    (_tamper_aael, "AA eventlog does not pass check"),
    (_tamper_ccel, "RTMR 0, 1, 2 values from TD quote is not equal"),
], ids=["mrtd", "report-data", "aael", "ccel"])
async def test_tampered_evidence_is_rejected(repository, attester, logs, dialect, mutate, reason):
    assert (await attester.extend_runtime_measurement(RuntimeEvent("d", "op", "busybox"))).value == "OK"
    async with StandinServer(StandinConfig(dialect=dialect, repository=repository)) as trustee:
        async with client(trustee.url, Tampering(attester, mutate)) as kbs:
            with pytest.raises(KbsAttestationRejectedError, match="rejected the tdx evidence"):
                await kbs.attest()
    # Trustee 1.5 hides the cause from the client; the stand-in logs it like Trustee does
    assert re.search(reason, logs.getvalue()), logs.getvalue()[-2000:]


@pytest.mark.parametrize("dialect", list(Dialect))
async def test_evidence_for_another_nonce_is_rejected(repository, attester, guest, logs, dialect):
    stale = {}

    class Replay(LocalEvidence):
        async def primary_evidence(self, report_data: bytes, *, embed_devices: bool) -> dict[str, Any]:
            if "evidence" not in stale:  # a genuine quote, but bound to some other challenge
                stale["evidence"] = await attester.evidence(bytes(48))
            return stale["evidence"]

    async with StandinServer(StandinConfig(dialect=dialect, repository=repository)) as trustee:
        async with client(trustee.url, Replay(attester)) as kbs:
            with pytest.raises(KbsAttestationRejectedError, match="rejected the tdx evidence"):
                await kbs.attest()
    assert "REPORT_DATA is different from that in TDX Quote" in logs.getvalue()


async def test_attester_refuses_a_quote_not_bound_to_its_report_data(repository, attester, guest):
    guest.faults.tamper_report_data = True
    with pytest.raises(EvidenceError, match="does not carry the report data"):
        await attester.evidence(bytes(range(48)))
