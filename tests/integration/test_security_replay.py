"""Nonce freshness: a genuine attestation recorded in one KBS session is refused in the next.

Complements tests/integration/test_tdx_kbs.py::test_evidence_for_another_nonce_is_rejected (a TDX
quote bound to other report data) and test_kbs_client.py::test_wrong_key_cannot_decrypt (a
resource wrapped to another TEE key). Here the replayed evidence was valid — same client, same
TEE key, accepted once — and only the session nonce changed.
"""

from __future__ import annotations

from typing import Any

import pytest

from agents.retry import Backoff
from attestation_agent.attesters.sample import SampleAttester
from attestation_agent.errors import KbsAttestationRejectedError
from attestation_agent.evidence import LocalEvidence
from attestation_agent.kbs.client import DialectMemory, KbsClient, KbsClientConfig
from attestation_agent.kbs.dialect import Dialect
from trustee_standin.config import StandinConfig
from trustee_standin.server import StandinServer

MODEL_KEY = "default/aliyun/model-decryption-key"


class Recorder(LocalEvidence):
    """Hands out fresh evidence until told to replay the first one it produced."""

    replay: bool = False
    recorded: dict[str, Any] | None = None

    async def primary_evidence(self, report_data: bytes, *, embed_devices: bool) -> dict[str, Any]:
        if self.replay and self.recorded is not None:
            return self.recorded
        evidence = await super().primary_evidence(report_data, embed_devices=embed_devices)
        if self.recorded is None:
            self.recorded = evidence
        return evidence


@pytest.mark.parametrize("dialect", list(Dialect))
async def test_evidence_replayed_into_a_new_session_is_refused(repository, secret, dialect):
    source = Recorder(SampleAttester())
    async with StandinServer(StandinConfig(dialect=dialect, repository=repository)) as trustee:
        config = KbsClientConfig(url=trustee.url, backoff=Backoff(initial=0.01, maximum=0.05, attempts=2))
        async with KbsClient(config, source, dialects=DialectMemory()) as kbs:
            assert await kbs.get_resource(MODEL_KEY) == secret, "control: the recorded evidence was accepted"
            kbs.invalidate()
            source.replay = True
            with pytest.raises(KbsAttestationRejectedError):
                await kbs.attest()
            source.replay = False
            await kbs.attest()  # fresh evidence for the same key still works: only the replay was refused
