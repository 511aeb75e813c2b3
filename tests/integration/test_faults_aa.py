"""Whole-chain fault test: the attestation agent crashes (SIGKILL) while the data hub and both gateways run.

During the outage the data hub keeps its files and its readiness and says which socket is down;
the egress keeps serving with the certificate (evidence) it already has; the restarted AA comes
back on the same (stale) socket and both recover without a restart. When the AA stays down longer
than the certificate's ``max_age`` (2.5 refresh intervals), the egress refuses new connections
with a logged reason (fail closed) and nothing reaches the app. See docs/operations-faults.md.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import aiohttp

from gateway.cert_manager import STALE_AFTER_INTERVALS
from tests.chain import Chain, ChainOptions, eventually

REFRESH = 10  # the egress's attest.refresh_interval (the gateway's minimum)


async def cdh_model_key(chain: Chain) -> dict[str, Any]:
    status, body = await chain.api("cdh", "/cdh/status")
    assert status == 200, body
    return next(entry for entry in json.loads(body)["resources"] if entry["file"] == "model-key")


async def ask_ok(chain: Chain, prompt: str) -> None:
    status, text = await chain.ask(prompt)
    assert status == 200 and f"echo: {prompt}" in text, (status, text)


async def test_aa_killed_and_restarted_then_killed_for_good(tmp_path: Path) -> None:
    options = ChainOptions(daemons=("aa", "cdh", "gateway", "ingress"), cdh_refresh=1.0,
                           egress_attest={"refresh_interval": REFRESH})
    async with Chain(tmp_path, options) as chain:
        a = chain.trustees["a"]
        await ask_ok(chain, "before")
        assert await chain.kill("aa") == -signal.SIGKILL
        assert os.path.exists(chain.aa_socket)  # a crash leaves the socket file behind

        # Data hub: a refresh only needs the AA when it must attest again. The Trustee forgets the
        # session (as after its own restart): the 401 makes the hub re-attest, which needs the AA.
        a.faults.inject("resource", "drop_sessions", count=1)

        async def refresh_names_the_aa() -> str:
            chain.assert_files()
            assert (await chain.api("cdh", "/readyz"))[0] == 200  # keys on disk are still valid: stays ready
            return (await cdh_model_key(chain))["last_refresh_error"] or ""

        error = await eventually(refresh_names_the_aa, 30, what="a refresh error naming the AA")
        assert f"cannot reach the attestation agent at {chain.aa_socket}: connection refused" in error, error
        assert "Traceback" not in chain.log("cdh")
        assert (await chain.metrics("cdh"))['cai_cdh_refresh_failures_total{resource="model-key"}'] >= 1

        # Egress: the certificate it holds keeps serving existing and new client connections.
        await ask_ok(chain, "during the outage")
        failures = await eventually(lambda: chain.events("gateway", "gateway.cert.refresh_failed"), REFRESH + 10,
                                    what="a failed certificate refresh")
        assert chain.aa_socket in failures[0]["error"] and "connection refused" in failures[0]["error"], failures
        assert failures[0]["refuse_in_s"] > 0
        await ask_ok(chain, "with cached evidence")  # after a failed refresh, well before max_age
        status, body = await chain.api("gateway", "/readyz")  # still ready, and says what is failing
        check = json.loads(body)["checks"]["egress0.certificate"]
        assert status == 200 and check["ok"] and "refresh failing" in check["detail"], body
        gw = await chain.metrics("gateway")
        assert gw['cert_refresh_failures_total{id="0"}'] >= 1 and gw['cert_age_seconds{id="0"}'] > 0

        # The AA comes back on the same (stale) socket; everything recovers without a restart.
        await chain.start("aa")
        assert (await chain.api("aa", "/readyz"))[0] == 200

        async def hub_recovered() -> bool:
            chain.assert_files()
            return (await cdh_model_key(chain))["last_refresh_error"] is None

        await eventually(hub_recovered, 30, what="the data hub's next good refresh")
        await eventually(lambda: chain.events("gateway", "gateway.cert.recovered"), REFRESH + 10,
                         what="the egress's next good certificate")
        await ask_ok(chain, "after the restart")
        for name in ("cdh", "gateway", "ingress"):
            assert chain.incarnations[name] == 1 and chain.procs[name].returncode is None

        # Killed for good: once the certificate is older than max_age, new connections are refused.
        await chain.kill("aa")

        async def refused() -> bool:
            try:
                status, _ = await chain.ask("after expiry")
            except (aiohttp.ClientError, TimeoutError):
                return True
            return status != 200

        await eventually(refused, REFRESH * STALE_AFTER_INTERVALS + 20, interval=1.0,
                         what="the egress refusing with expired evidence")
        requests = chain.app_requests
        status, text = await chain.ask("refused")
        assert status == 502 and "TEE verification failed" in text, (status, text)  # the ingress's answer
        assert await refused()
        assert chain.app_requests == requests  # fail closed: nothing reached the app
        expired = chain.events("gateway", "gateway.cert.expired")
        assert expired and expired[0]["max_age_s"] == REFRESH * STALE_AFTER_INTERVALS
        assert chain.aa_socket in expired[0]["last_error"] and "connection refused" in expired[0]["last_error"]
        assert "Traceback" not in chain.log("gateway")
        assert not chain.events("gateway", "gateway.peer.rejected"), "our own stale evidence is not the peer's fault"
        assert (await chain.api("cdh", "/readyz"))[0] == 200
        status, body = await chain.api("gateway", "/readyz")  # the orchestrator stops routing to it
        assert status == 503 and "new connections are refused" in json.loads(body)["failing"]["egress0.certificate"]
        assert (await chain.api("gateway", "/livez"))[0] == 200  # alive: it recovers once the AA is back
        assert (await chain.metrics("gateway"))['cert_refused_handshakes_total{id="0"}'] >= 1
        chain.assert_files()

        assert chain.leaks(("aa", "cdh", "gateway", "ingress")) == []
