"""KbsClient against the Trustee stand-in over real HTTP, in both dialects, good and hostile."""

from __future__ import annotations

import asyncio
import io
import json
import time

import pytest

from agents.logsetup import configure_logging, reset_logging
from agents.retry import Backoff
from attestation_agent.attesters.sample import SampleAttester
from attestation_agent.errors import (
    JweError,
    KbsAttestationRejectedError,
    KbsError,
    KbsPolicyDeniedError,
    KbsResourceNotFoundError,
    KbsUnavailableError,
    KbsVersionMismatchError,
    ProtocolError,
)
from attestation_agent.evidence import LocalEvidence
from attestation_agent.kbs.client import DialectMemory, KbsClient, KbsClientConfig
from attestation_agent.kbs.dialect import Dialect
from attestation_agent.kbs.tee_key import KeyAlgorithm
from trustee_standin.config import StandinConfig
from trustee_standin.server import StandinServer

MODEL_KEY = "default/aliyun/model-decryption-key"
FAST = Backoff(initial=0.01, maximum=0.05, attempts=3)


@pytest.fixture
def logs():
    stream = io.StringIO()
    configure_logging(level="debug", fmt="json", stream=stream, service="test")
    yield stream
    reset_logging()


def client_for(url: str, *, dialects: DialectMemory | None = None, **kw) -> KbsClient:
    kw.setdefault("backoff", FAST)
    return KbsClient(KbsClientConfig(url=url, **kw), LocalEvidence(SampleAttester()),
                     dialects=dialects or DialectMemory())


def assert_no_secrets(text: str, *values) -> None:
    for value in values:
        if isinstance(value, bytes):
            value = value.decode()
        assert value not in text, "a secret value reached the log"


@pytest.mark.parametrize("dialect", list(Dialect))
@pytest.mark.parametrize("prefix", [True, False], ids=["api-prefix", "bare-kbs"])
async def test_rcar_and_resource_in_each_dialect(repository, secret, logs, dialect, prefix):
    async with StandinServer(StandinConfig(dialect=dialect, repository=repository)) as trustee:
        url = trustee.api_url if prefix else trustee.url
        async with client_for(url) as client:
            value = await client.get_resource(MODEL_KEY)
            attestation = await client.attestation()
        assert value == secret
        assert attestation.dialect is dialect
        assert attestation.tee == "sample"
        # Token reused: one handshake for attestation() + get_resource().
        assert trustee.faults.counters["attest"] == 1
    text = logs.getvalue()
    assert '"kbs.attested"' in text and '"kbs.resource"' in text
    assert_no_secrets(text, secret, attestation.token, attestation.session_id)


@pytest.mark.parametrize("server", list(Dialect))
async def test_dialect_is_detected_and_remembered(repository, secret, server, logs):
    memory = DialectMemory()
    async with StandinServer(StandinConfig(dialect=server, repository=repository)) as trustee:
        async with client_for(trustee.api_url, dialects=memory) as client:
            assert await client.get_resource(MODEL_KEY) == secret
        probes = trustee.faults.counters["auth"]
        # The probe is 0.1.0-shaped: a 0.4.0 server costs exactly one extra /auth, a 0.1.0 server none.
        assert probes == (2 if server is Dialect.V0_4_0 else 1)
        assert memory.get(trustee.api_url) is server
        async with client_for(trustee.api_url, dialects=memory) as again:
            assert await again.get_resource(MODEL_KEY) == secret
        assert trustee.faults.counters["auth"] == probes + 1  # remembered: no second probe
    if server is Dialect.V0_4_0:
        assert '"kbs.dialect_switch"' in logs.getvalue()


async def test_pinned_dialect_mismatch_is_a_clear_error(repository):
    async with StandinServer(StandinConfig(dialect=Dialect.V0_4_0, repository=repository)) as trustee:
        async with client_for(trustee.url, dialect=Dialect.V0_1_0) as client:
            with pytest.raises(KbsVersionMismatchError, match=r"expects protocol 0\.4\.0.*pinned to 0\.1\.0"):
                await client.attest()


@pytest.mark.parametrize("alg", [KeyAlgorithm.RSA_OAEP_256, KeyAlgorithm.RSA1_5])
async def test_v0_4_0_with_rsa_keys(repository, secret, alg):
    async with StandinServer(StandinConfig(dialect=Dialect.V0_4_0, repository=repository)) as trustee:
        async with client_for(trustee.url, key_algorithm=alg) as client:
            assert await client.get_resource(MODEL_KEY) == secret
            assert (await client.attestation()).key.algorithm is alg


async def test_bearer_token_reads(repository, secret):
    async with StandinServer(StandinConfig(dialect=Dialect.V0_4_0, repository=repository)) as trustee:
        async with client_for(trustee.api_url) as client:
            assert await client.get_resource(MODEL_KEY, use_bearer=True) == secret


async def test_duplicate_set_cookie_through_gateway(repository, secret):
    config = StandinConfig(dialect=Dialect.V0_1_0, repository=repository, duplicate_set_cookie=True)
    async with StandinServer(config) as trustee:
        async with client_for(trustee.api_url) as client:
            assert await client.get_resource(MODEL_KEY) == secret


# --- hostile or failing servers -------------------------------------------------------------------

@pytest.mark.parametrize("dialect", list(Dialect))
async def test_401_mid_run_reattests_once(repository, secret, dialect, logs):
    async with StandinServer(StandinConfig(dialect=dialect, repository=repository)) as trustee:
        async with client_for(trustee.api_url) as client:
            assert await client.get_resource(MODEL_KEY) == secret
            trustee.faults.inject("resource", "drop_sessions")  # KBS restarted: sessions gone
            assert await client.get_resource(MODEL_KEY) == secret
        assert trustee.faults.counters["attest"] == 2
    assert '"kbs.reattest"' in logs.getvalue()


async def test_expired_token_triggers_reattestation(repository, secret):
    config = StandinConfig(dialect=Dialect.V0_1_0, repository=repository, token_duration_s=31,
                           token_leeway_s=0)
    async with StandinServer(config) as trustee:
        # token_margin 30 s: a 31 s token is considered stale after ~1 s.
        async with client_for(trustee.url, token_margin=30.0) as client:
            assert await client.get_resource(MODEL_KEY) == secret
            await asyncio.sleep(1.1)
            assert await client.get_resource(MODEL_KEY) == secret
        assert trustee.faults.counters["attest"] == 2


async def test_garbage_json_is_a_protocol_error(repository, logs):
    async with StandinServer(StandinConfig(dialect=Dialect.V0_1_0, repository=repository)) as trustee:
        trustee.faults.inject("auth", "garbage")
        async with client_for(trustee.url) as client:
            with pytest.raises(ProtocolError, match="not valid JSON"):
                await client.attest()


async def test_oversized_body_is_bounded(repository):
    async with StandinServer(StandinConfig(dialect=Dialect.V0_1_0, repository=repository)) as trustee:
        async with client_for(trustee.url, max_resource_size=64 * 1024) as client:
            await client.attest()
            trustee.faults.inject("resource", "oversized", size=8 * 1024 * 1024)
            with pytest.raises(ProtocolError, match="exceeds"):
                await client.get_resource(MODEL_KEY)
            trustee.faults.inject("attest", "oversized", size=4 * 1024 * 1024)
            client.invalidate()
            with pytest.raises(ProtocolError, match="exceeds"):
                await client.attest()


@pytest.mark.parametrize("dialect", list(Dialect))
async def test_truncated_jwe_is_rejected(repository, secret, dialect, logs):
    async with StandinServer(StandinConfig(dialect=dialect, repository=repository)) as trustee:
        async with client_for(trustee.url) as client:
            trustee.faults.inject("resource", "truncate_jwe")
            with pytest.raises(JweError):
                await client.get_resource(MODEL_KEY)
            assert await client.get_resource(MODEL_KEY) == secret  # the next read is fine
    assert_no_secrets(logs.getvalue(), secret)


async def test_wrong_key_cannot_decrypt(repository, secret):
    """A resource wrapped to another TEE key (e.g. a replayed response) does not decrypt."""
    async with StandinServer(StandinConfig(dialect=Dialect.V0_4_0, repository=repository)) as trustee:
        async with client_for(trustee.url) as victim, client_for(trustee.url) as other:
            await victim.attest()
            other_att = await other.attest()
            # Read with the other client's session but decrypt with the victim's key.
            victim._attestation.session_id = other_att.session_id
            with pytest.raises(JweError, match="wrong TEE key"):
                await victim.get_resource(MODEL_KEY)


async def test_500_bursts_are_retried_then_succeed(repository, secret, logs):
    async with StandinServer(StandinConfig(dialect=Dialect.V0_1_0, repository=repository)) as trustee:
        trustee.faults.inject("auth", "status", status=503, count=2, body={"error": "upstream down"})
        async with client_for(trustee.api_url) as client:
            assert await client.get_resource(MODEL_KEY) == secret
        assert trustee.faults.counters["auth"] == 3
    assert logs.getvalue().count('"kbs.retry"') == 2


async def test_persistent_500_gives_up_after_bounded_retries(repository, logs):
    async with StandinServer(StandinConfig(dialect=Dialect.V0_1_0, repository=repository)) as trustee:
        trustee.faults.inject("attest", "status", status=502, count=100, body="bad gateway")
        async with client_for(trustee.url) as client:
            with pytest.raises(KbsUnavailableError, match="answered 502"):
                await client.attest()
        assert trustee.faults.counters["attest"] == FAST.attempts


async def test_hanging_server_times_out(repository):
    async with StandinServer(StandinConfig(dialect=Dialect.V0_1_0, repository=repository)) as trustee:
        trustee.faults.inject("attest", "hang", seconds=30, count=10)
        async with client_for(trustee.url, timeout=0.3, backoff=Backoff(initial=0.01, attempts=2)) as client:
            started = time.monotonic()
            with pytest.raises(KbsUnavailableError, match="did not answer"):
                await client.attest()
            assert time.monotonic() - started < 5


async def test_unreachable_kbs(logs):
    async with client_for("http://127.0.0.1:9", timeout=1.0) as client:
        with pytest.raises(KbsUnavailableError, match="cannot reach KBS"):
            await client.attest()
    assert logs.getvalue().count('"kbs.retry"') == FAST.attempts - 1


async def test_policy_deny_is_final(repository, secret, logs):
    config = StandinConfig(dialect=Dialect.V0_1_0, repository=repository, resource_policy="deny_all")
    async with StandinServer(config) as trustee:
        async with client_for(trustee.url) as client:
            with pytest.raises(KbsPolicyDeniedError, match="denies default/aliyun/model-decryption-key"):
                await client.get_resource(MODEL_KEY)
        assert trustee.faults.counters["resource"] == 1  # not retried
    assert_no_secrets(logs.getvalue(), secret)


async def test_missing_resource_is_not_found(repository):
    async with StandinServer(StandinConfig(dialect=Dialect.V0_1_0, repository=repository)) as trustee:
        async with client_for(trustee.url) as client:
            with pytest.raises(KbsResourceNotFoundError, match="was not found"):
                await client.get_resource("default/aliyun/nope")


async def test_rejected_evidence(repository):
    config = StandinConfig(dialect=Dialect.V0_1_0, repository=repository, allowed_tees=frozenset({"tdx"}))
    async with StandinServer(config) as trustee:
        async with client_for(trustee.url) as client:
            with pytest.raises(KbsAttestationRejectedError, match="rejected the sample evidence"):
                await client.attest()


async def test_bad_urls_and_resource_paths():
    with pytest.raises(KbsError, match="not an http"):
        client_for("ftp://x")
    async with client_for("http://127.0.0.1:9") as client:
        with pytest.raises(KbsError, match="three segments"):
            await client.get_resource("../../etc/passwd")


def test_error_messages_carry_no_token_text():
    err = KbsPolicyDeniedError("KBS at http://x resource policy denies a/b/c to this TEE", status=403)
    assert json.dumps(str(err))
