"""Whole-chain fault tests, Trustee side: unreachable at start, slow, restarted mid-run, 5xx bursts.

Real ``cai aa`` and ``cai cdh`` processes (plus both gateways for the restart case) against the
Trustee stand-ins of :mod:`tests.chain`. Each test asserts what an operator sees during the fault
(``/cdh/status``, ``/readyz``, ``/metrics``, the JSON log), that the chain recovers without a
restart, that resource files always hold the Trustee's value, and that no key reaches a
persistent file or a log. The expected behaviour is written up in ``docs/operations-faults.md``.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from attestation_agent.aa_client import AaClient
from attestation_agent.kbs.client import KbsClientConfig
from data_hub.config import CDH_SETTINGS
from tests.chain import Chain, ChainOptions, eventually

#: The Trustee gateway (trustee-gateway) gives up on a KBS request after 30 s and answers 5xx.
TRUSTEE_GATEWAY_TIMEOUT = 30.0
#: Fast start-up retries so a test waits seconds, not the production 0.5 → 30 s schedule.
FAST_RETRY = ["--startup-retry-initial", "0.2", "--startup-retry-max", "0.5"]


async def cdh_status(chain: Chain) -> dict[str, Any]:
    status, body = await chain.api("cdh", "/cdh/status")
    assert status == 200, body
    return {entry["file"]: entry for entry in json.loads(body)["resources"]}


def assert_nothing_leaked(chain: Chain, daemons: tuple[str, ...]) -> None:
    assert all(chain.log(name) for name in daemons), "control: every daemon logged something"
    assert chain.leaks(daemons) == []


def min_duration(config: KbsClientConfig) -> float:
    """The shortest time the KBS client's retry schedule can take between its first and last attempt."""
    backoff, total, delay = config.backoff, 0.0, config.backoff.initial
    for _ in range(backoff.attempts - 1):
        total += min(backoff.maximum, delay) * (1 - backoff.jitter)
        delay *= backoff.multiplier
    return total



async def first_refresh_error(chain: Chain, what: str) -> str:
    """Wait for model-key's ``last_refresh_error`` while checking the file stays and the hub stays ready."""

    async def reported() -> str | None:
        chain.assert_files()
        assert (await chain.api("cdh", "/readyz"))[0] == 200
        return (await cdh_status(chain))["model-key"]["last_refresh_error"]

    return await eventually(reported, 30, what=what)


async def test_trustee_unreachable_at_start_then_ready_without_restart(tmp_path: Path) -> None:
    options = ChainOptions(daemons=("aa",), trustee_up=False, args={"cdh": FAST_RETRY})
    async with Chain(tmp_path, options) as chain:
        a, b = chain.trustees["a"], chain.trustees["b"]
        # The AA is an evidence provider: it became READY (Chain waited for it) with no Trustee listening.
        assert (await chain.api("aa", "/readyz"))[0] == 200

        started = time.monotonic()
        proc = await chain.start("cdh", wait_ready=False)

        async def refused_twice() -> dict[str, Any]:
            failed = (await chain.metrics("cdh")).get('cai_cdh_fetches_total{resource="model-key",result="error"}', 0)
            return (await cdh_status(chain))["model-key"] if failed >= 2 else {}

        state = await eventually(refused_twice, 30, what="two failed start-up attempts at Trustee A")
        # What the operator sees: the Trustee URL and the cause, in words.
        assert a.api_url in state["last_error"] and "connection refused" in state["last_error"], state
        assert not state["present"]
        assert "READY=1" not in chain.notified("cdh")
        status, body = await chain.api("cdh", "/readyz")
        failing = json.loads(body)["failing"]
        assert status == 503 and a.api_url in failing["resource:model-key"], failing
        assert b.url in failing["resource:alt-key"] and "connection refused" in failing["resource:alt-key"]
        metrics = await chain.metrics("cdh")
        assert metrics['cai_cdh_fetches_total{resource="model-key",result="error"}'] >= 2
        assert metrics["cai_cdh_ready"] == 0
        assert metrics[f'cai_kbs_retries_total{{route="auth",trustee="{a.api_url}"}}'] >= 1
        failed = chain.events("cdh", "cdh.fetch_failed", resource="model-key")
        assert failed and all(e["trustee"] == a.api_url and e["retry_in_s"] > 0 for e in failed)

        # Not a hot loop: every connection attempt to Trustee A is logged (kbs.retry, or cdh.fetch_failed
        # for the last of a series); the KBS client's backoff allows at most this many in the time so far.
        elapsed = time.monotonic() - started
        attempts = (len(chain.events("cdh", "kbs.retry", url=a.api_url))
                    + len(chain.events("cdh", "cdh.fetch_failed", resource="model-key")))
        config = KbsClientConfig(url=a.api_url)
        assert attempts <= config.backoff.attempts * (elapsed / min_duration(config) + 1), (attempts, elapsed)

        # The Trustees come up: READY without restarting anything.
        await chain.start_trustee("a")
        await chain.start_trustee("b")
        await chain.wait_ready("cdh")
        assert chain.procs["cdh"] is proc and proc.returncode is None and chain.incarnations["cdh"] == 1
        chain.assert_files()
        state = (await cdh_status(chain))["model-key"]
        assert state["present"] and state["last_error"] is None
        assert (await chain.api("cdh", "/readyz"))[0] == 200
        assert (await chain.metrics("cdh"))["cai_cdh_ready"] == 1
        assert chain.events("cdh", "cdh.resource_ready", resource="model-key")
        assert_nothing_leaked(chain, ("aa", "cdh"))


def test_timeout_defaults_bound_a_hung_trustee() -> None:
    """A hung Trustee costs at most ``kbs_timeout`` per request and ``attempt_timeout`` per fetch attempt.

    The defaults must cut a request no later than the Trustee gateway does (30 s), leave room in one
    attempt for a timed-out request plus its retry, and let the AA answer (its client timeout) inside
    one attempt; docs/operations-faults.md states these numbers.
    """
    defaults = {setting.name: setting.default for setting in CDH_SETTINGS}
    assert defaults["kbs_timeout"] <= TRUSTEE_GATEWAY_TIMEOUT
    assert defaults["kbs_timeout"] == KbsClientConfig(url="http://x").timeout
    assert defaults["attempt_timeout"] >= 2 * defaults["kbs_timeout"]
    assert AaClient("/x").timeout < defaults["attempt_timeout"]
    doc = (Path(__file__).parents[2] / "docs" / "operations-faults.md").read_text()
    for name in ("kbs_timeout", "attempt_timeout"):
        assert f"| `cdh.{name}` | {defaults[name]:g} s |" in doc, f"docs/operations-faults.md: {name} default"


async def test_slow_trustee_is_cut_by_timeouts_and_retried(tmp_path: Path) -> None:
    # kbs_timeout 1 s per request; attempt_timeout 3 s per fetch attempt (attestation included).
    options = ChainOptions(daemons=("aa",), cdh_refresh=1.0,
                           args={"cdh": [*FAST_RETRY, "--kbs-timeout", "1", "--attempt-timeout", "3"]})
    async with Chain(tmp_path, options) as chain:
        a, b = chain.trustees["a"], chain.trustees["b"]
        # Start-up: one hung /resource at A and one hung /attest at B (30 s, like a stuck KBS behind
        # the Trustee gateway): each request is cut after 1 s and retried inside the same attempt.
        a.faults.inject("resource", "hang", seconds=30, count=1)
        b.faults.inject("attest", "hang", seconds=30, count=1)
        await chain.start("cdh")
        chain.assert_files()
        slow_a = chain.events("cdh", "kbs.retry", url=a.api_url, route="resource")
        slow_b = chain.events("cdh", "kbs.retry", url=b.url, route="attest")
        assert len(slow_a) == 1 and "did not answer GET /kbs/v0/resource within 1 s" in slow_a[0]["error"]
        assert a.api_url in slow_a[0]["error"]
        assert len(slow_b) == 1 and "did not answer POST /kbs/v0/attest within 1 s" in slow_b[0]["error"]
        assert a.faults.counters["resource"] == 2 and b.faults.counters["attest"] == 2
        metrics = await chain.metrics("cdh")
        assert metrics[f'cai_kbs_retries_total{{route="resource",trustee="{a.api_url}"}}'] == 1
        assert metrics[f'cai_kbs_retries_total{{route="attest",trustee="{b.url}"}}'] == 1

        # Refresh: A hangs on every /resource until cleared; the 3 s attempt bound cuts each refresh
        # (the 4-try retry budget of 1 s requests would take longer), the file keeps its value.
        a.faults.inject("resource", "hang", seconds=30, count=1000)
        # An API read of a resource that is not configured is fetched on demand: same bound, clear 503.
        status, body = await chain.api("cdh", "/cdh/resource/default/aliyun/not-configured")
        assert status == 503, (status, body)
        assert "timed out after 3 s (attempt_timeout)" in json.loads(body)["error"] and a.api_url in body.decode()
        error = await first_refresh_error(chain, "a refresh cut by attempt_timeout")
        assert "timed out after 3 s (attempt_timeout)" in error and a.api_url in error, error
        a.faults.clear()  # the Trustee answers in time again

        async def recovered() -> bool:
            chain.assert_files()
            return (await cdh_status(chain))["model-key"]["last_refresh_error"] is None

        await eventually(recovered, 40, what="a good refresh after the hang")
        refreshed = (await cdh_status(chain))["model-key"]["refreshes"]
        await eventually(lambda: cdh_status_refreshes(chain, refreshed), 20, what="one more good refresh")
        failed = chain.events("cdh", "cdh.refresh_failed", resource="model-key")
        assert failed and all(e["kept_last_good"] for e in failed)
        assert (await chain.metrics("cdh"))['cai_cdh_refresh_failures_total{resource="model-key"}'] == len(failed)
        chain.assert_files()
        assert_nothing_leaked(chain, ("aa", "cdh"))


async def cdh_status_refreshes(chain: Chain, more_than: int) -> bool:
    state = (await cdh_status(chain))["model-key"]
    return state["refreshes"] > more_than and state["last_refresh_error"] is None


async def test_trustee_restart_loses_sessions_one_reattestation(tmp_path: Path) -> None:
    options = ChainOptions(daemons=("aa", "cdh", "gateway", "ingress"), cdh_refresh=1.0,
                           egress_attest={"refresh_interval": 10})
    async with Chain(tmp_path, options) as chain:
        a = chain.trustees["a"]
        assert (await chain.ask("before"))[0] == 200
        await eventually(lambda: cdh_status_refreshes(chain, 0), 20, what="a first refresh")
        # The app's view of the files during the restart: never missing, never another value.
        reads, stop = 0, asyncio.Event()

        async def watch() -> None:
            nonlocal reads
            while not stop.is_set():
                chain.assert_files()
                reads += 1
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        certs_before = len(chain.events("gateway", "gateway.cert.refreshed"))
        await chain.restart_trustee("a")  # every session lost, token CA kept (as a real Trustee)

        async def refreshed_after_restart() -> bool:
            state = (await cdh_status(chain))["model-key"]
            return a.faults.counters["resource"] >= 4 and state["last_refresh_error"] is None

        await eventually(refreshed_after_restart, 30, what="refreshes against the restarted Trustee")
        # The first /resource after the restart got 401 (unknown session) → exactly one new RCAR handshake.
        assert a.faults.counters["auth"] == 1 and a.faults.counters["attest"] == 1, dict(a.faults.counters)
        assert len(chain.events("cdh", "kbs.reattest", url=a.api_url)) == 1
        assert (await chain.api("cdh", "/readyz"))[0] == 200

        # The ingress keeps verifying against the restarted attestation service: the egress's next
        # certificate (refresh_interval 10 s) is new to it, so it must ask the AS again.
        await eventually(lambda: len(chain.events("gateway", "gateway.cert.refreshed")) > certs_before, 20,
                         what="the egress's next certificate")
        requests = chain.app_requests
        status, text = await chain.ask("after")
        assert status == 200 and "echo: after" in text, text
        assert chain.app_requests > requests
        assert a.faults.counters["as"] >= 1, dict(a.faults.counters)
        stop.set()
        await watcher
        assert reads > 10
        chain.assert_files()
        assert_nothing_leaked(chain, ("aa", "cdh", "gateway", "ingress"))


async def test_5xx_bursts_absorbed_or_reported_last_good_kept(tmp_path: Path) -> None:
    options = ChainOptions(daemons=("aa",), cdh_refresh=1.0, args={"cdh": FAST_RETRY})
    async with Chain(tmp_path, options) as chain:
        a = chain.trustees["a"]
        retries = f'cai_kbs_retries_total{{route="%s",trustee="{a.api_url}"}}'
        # First start: 6 x 503 on /auth = one failed attempt (4 tries) + 2 retried tries of the next.
        a.faults.inject("auth", "status", status=503, count=6)
        await chain.start("cdh")
        chain.assert_files()
        assert a.faults.counters["auth"] == 7
        failed = chain.events("cdh", "cdh.fetch_failed", resource="model-key")
        assert len(failed) == 1 and f"KBS at {a.api_url} answered 503 to POST /kbs/v0/auth" in failed[0]["error"]
        metrics = await chain.metrics("cdh")
        assert metrics[retries % "auth"] == 5
        assert metrics['cai_cdh_fetches_total{resource="model-key",result="error"}'] == 1

        # A short burst during refreshes (3 x 503 < 4 tries): the user sees nothing but the retry metric.
        await eventually(lambda: cdh_status_refreshes(chain, 0), 20, what="a first refresh")
        a.faults.reset_counters()
        a.faults.inject("resource", "status", status=503, count=3)

        async def burst_absorbed() -> bool:
            state = (await cdh_status(chain))["model-key"]
            assert state["last_refresh_error"] is None, state
            assert (await chain.api("cdh", "/readyz"))[0] == 200
            chain.assert_files()
            return a.faults.counters["resource"] >= 6

        await eventually(burst_absorbed, 30, what="refreshes through a short 503 burst")
        metrics = await chain.metrics("cdh")
        assert metrics[retries % "resource"] == 3
        assert metrics.get('cai_cdh_refresh_failures_total{resource="model-key"}', 0) == 0
        assert not chain.events("cdh", "cdh.refresh_failed")

        # A burst longer than the retry budget (2 refreshes x 4 tries): the refresh fails visibly,
        # the last good value stays on disk and the daemon stays ready; the next refresh recovers.
        a.faults.inject("resource", "status", status=503, count=8)
        error = await first_refresh_error(chain, "last_refresh_error during a long 503 burst")
        assert f"KBS at {a.api_url} answered 503 to GET /kbs/v0/resource" in error, error

        async def recovered() -> bool:
            chain.assert_files()
            return a.faults.pending() == [] and (await cdh_status(chain))["model-key"]["last_refresh_error"] is None

        await eventually(recovered, 40, what="recovery after the burst")
        failed = chain.events("cdh", "cdh.refresh_failed", resource="model-key")
        assert len(failed) == 2 and all(e["kept_last_good"] and "503" in e["error"] for e in failed)
        metrics = await chain.metrics("cdh")
        assert metrics['cai_cdh_refresh_failures_total{resource="model-key"}'] == 2
        assert (await chain.api("cdh", "/readyz"))[0] == 200
        chain.assert_files()
        assert_nothing_leaked(chain, ("aa", "cdh"))
