"""``cai aa`` as a real process: readiness over sd_notify, both listeners, fail-closed, no secret leaks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from agents.health import HealthState, Metrics
from agents.http import free_port, unix_session
from agents.supervisor import NotifyListener
from attestation_agent.aa_client import AaClient
from attestation_agent.api import build_app
from attestation_agent.attesters.sample import SampleAttester
from attestation_agent.kbs import token as token_codec
from attestation_agent.kbs.client import DialectMemory, KbsClient, KbsClientConfig
from attestation_agent.kbs.dialect import Dialect
from attestation_agent.kbs.encoding import b64std_decode
from attestation_agent.service import AgentOptions, AttestationAgent
from trustee_standin.config import StandinConfig
from trustee_standin.server import StandinServer

MODEL_KEY = "default/aliyun/model-decryption-key"




async def start_aa(tmp_path: Path, *extra: str, kbs_url: str | None = None):
    notify = NotifyListener(tmp_path / "notify.sock")
    port = free_port()
    log = open(tmp_path / "aa.log", "wb")
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path)}
    env.pop("TRUSTEE_URL", None)
    argv = [sys.executable, "-m", "agents.cli", "aa", "--socket", str(tmp_path / "aa.sock"),
            "--rest-listen", f"127.0.0.1:{port}", *extra]
    if kbs_url:
        argv += ["--kbs-url", kbs_url]
    proc = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=log, env=env)
    log.close()
    return proc, notify, port


async def stop(proc) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), 15)


@pytest.mark.parametrize("dialect", list(Dialect))
async def test_daemon_serves_token_evidence_and_remote_attestation(tmp_path, repository, secret, dialect):
    async with StandinServer(StandinConfig(dialect=dialect, repository=repository)) as trustee:
        proc, notify, port = await start_aa(tmp_path, "--allow-sample", kbs_url=trustee.api_url)
        try:
            await notify.wait_for("READY=1")
            sock = str(tmp_path / "aa.sock")
            assert oct(os.stat(sock).st_mode & 0o777) == "0o660"
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/aa/token?token_type=kbs") as resp:
                    assert resp.status == 200
                    token = json.loads(await resp.read())
                async with http.get(f"http://127.0.0.1:{port}/aa/token?token_type=kbs&x=1") as resp:
                    assert resp.status == 405  # api-server-rest: exactly one query parameter
                async with http.get(f"http://127.0.0.1:{port}/aa/evidence?runtime_data=hello") as resp:
                    evidence = json.loads(await resp.read())
                async with http.get(f"http://127.0.0.1:{port}/aa/evidence?runtime_data={'x' * 65}") as resp:
                    assert resp.status == 400
                    assert "64" in (await resp.json())["error"]
            claims = token_codec.unverified_claims(token["token"])
            assert claims["tee"] == "sample"
            assert "PRIVATE KEY" in token["tee_keypair"]
            assert b64std_decode(evidence["report_data"]) == b"hello"
            async with unix_session(sock) as http:
                async with http.get("http://localhost/readyz") as resp:
                    assert resp.status == 200
                async with http.get("http://localhost/metrics") as resp:
                    metrics = await resp.text()
                async with http.post("http://localhost/aa/aael",
                                     json={"domain": "d", "operation": "op", "content": "c"}) as resp:
                    assert resp.status == 501 and (await resp.json())["result"] == "NOT_SUPPORTED"
            assert 'cai_aa_attestations_total{result="ok"} 1.0' in metrics
            # The data hub's path: a KbsClient in another process using the AA as its evidence source.
            async with AaClient(sock) as aa, KbsClient(KbsClientConfig(url=trustee.url), aa,
                                                       dialects=DialectMemory()) as client:
                assert await client.get_resource(MODEL_KEY) == secret
                assert (await client.attestation()).dialect is dialect
        finally:
            code = await stop(proc)
        await notify.wait_for("STOPPING=1", 5)
        assert code == 0
        assert not (tmp_path / "aa.sock").exists()
    text = (tmp_path / "aa.log").read_text()
    assert '"aa.ready"' in text
    for value in (token["token"], secret.decode(), token["tee_keypair"].splitlines()[1]):
        assert value not in text, "secret material in the AA log"


async def test_sample_tee_refused_without_allow(tmp_path):
    proc, notify, _ = await start_aa(tmp_path)
    code = await asyncio.wait_for(proc.wait(), 20)
    text = (tmp_path / "aa.log").read_text()
    assert code == 1
    assert "Traceback" not in text
    fatal = [json.loads(line) for line in text.splitlines() if '"fatal"' in line]
    assert len(fatal) == 1 and "sample" in fatal[0]["error"]
    assert "READY=1" not in notify.seen
    assert not (tmp_path / "aa.sock").exists()


async def test_token_without_trustee_is_a_clear_503(tmp_path):
    proc, notify, port = await start_aa(tmp_path, "--allow-sample")
    try:
        await notify.wait_for("READY=1")
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/aa/token?token_type=kbs") as resp:
                assert resp.status == 503
                assert "TRUSTEE_URL" in (await resp.json())["error"]
            async with http.get(f"http://127.0.0.1:{port}/aa/token?token_type=bogus") as resp:
                assert resp.status == 500 or resp.status == 400
                assert "not supported" in (await resp.json())["error"]
    finally:
        assert await stop(proc) == 0


async def test_rest_bridge_refuses_non_loopback_peers():
    agent = AttestationAgent(SampleAttester(), AgentOptions(kbs=None))
    app = build_app(agent, HealthState(), Metrics(), rest_bridge=True)
    app.freeze()
    handler = app._handle  # the full middleware chain

    class Transport:
        def __init__(self, peer):
            self.peer = peer

        def get_extra_info(self, name, default=None):
            return (self.peer, 40000) if name == "peername" else default

        def is_closing(self):
            return False

    for peer, status in (("10.1.2.3", 403), ("127.0.0.1", 200), ("::1", 200)):
        request = make_mocked_request("GET", "/aa/evidence?runtime_data=x", app=app, transport=Transport(peer))
        response = await handler(request)
        assert isinstance(response, web.StreamResponse)
        assert response.status == status, peer
