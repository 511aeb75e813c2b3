"""Shared pieces for the gateway integration tests: real peers on loopback.

The real ``tng`` binary (PyPI ``tng-sdk`` 2.12) runs as a subprocess; our attestation agent, the
Trustee stand-in and a plaintext aiohttp backend run in-process. No test in this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web

from agents.health import HealthState, Metrics
from agents.http import bound_port, free_port, start_site
from attestation_agent.api import build_app
from attestation_agent.attesters.sample import SampleAttester
from attestation_agent.service import AgentOptions, AttestationAgent
from gateway.attester import AaEvidenceProvider
from gateway.cert_manager import AttestedCertManager
from gateway.config import parse_config
from gateway.egress import Egress
from gateway.ingress import Ingress
from gateway.metrics import GatewayMetrics
from gateway.verifier import PeerVerifier

TNG = shutil.which("tng", path=str(Path(sys.executable).parent)) or shutil.which("tng")


def backend_app() -> web.Application:
    """Plaintext backend: ``POST /echo`` echoes, ``GET /stream`` sends SSE events with pauses."""

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=body, headers={"x-len": str(len(body))})

    async def stream(request: web.Request) -> web.StreamResponse:
        n = int(request.query.get("n", "5"))
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(n):
            await resp.write(f"data: token-{i}\n\n".encode())
            await asyncio.sleep(0.05)
        await resp.write_eof()
        return resp

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/echo", echo)
    app.router.add_get("/stream", stream)
    return app


@contextlib.asynccontextmanager
async def backend() -> AsyncIterator[int]:
    runner = await start_site(backend_app(), host="127.0.0.1", port=0)
    try:
        yield bound_port(runner)
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def attestation_agent() -> AsyncIterator[tuple[str, str]]:
    """Our AA (sample TEE) on a Unix socket and on a loopback REST port; yields (socket, rest url).

    tng's ``coco_asr`` provider also calls ``GET /info`` on the REST port.
    """
    agent = AttestationAgent(SampleAttester(), AgentOptions(kbs=None))
    directory = tempfile.mkdtemp(prefix="gw-aa-")
    sock = os.path.join(directory, "aa.sock")
    unix_runner = await start_site(build_app(agent, HealthState(), Metrics()), unix_path=sock)
    rest = build_app(agent, HealthState(), Metrics(), rest_bridge=True)
    rest_runner = await start_site(rest, host="127.0.0.1", port=0)
    try:
        yield sock, f"http://127.0.0.1:{bound_port(rest_runner)}"
    finally:
        await rest_runner.cleanup()
        await unix_runner.cleanup()
        shutil.rmtree(directory, ignore_errors=True)


@contextlib.asynccontextmanager
async def our_egress(aa_socket: str, backend_port: int, **extra: Any) -> AsyncIterator[tuple[int, Egress]]:
    config = parse_config({"add_egress": [{
        "mapping": {"in": {"host": "127.0.0.1", "port": free_port()},
                    "out": {"host": "127.0.0.1", "port": backend_port}},
        "attest": {"aa_addr": "unix://" + aa_socket}, **extra}]})
    entry = config.egress[0]
    provider = AaEvidenceProvider(aa_socket)
    certs = AttestedCertManager(provider, alpn=entry.security.alpn, binding=entry.security.binding)
    await certs.start()
    egress = Egress(entry, certs, GatewayMetrics(Metrics()))
    await egress.start()
    try:
        yield egress.ports[0], egress
    finally:
        await egress.stop()
        await certs.stop()
        await provider.close()


@contextlib.asynccontextmanager
async def our_ingress(verify: dict[str, Any], *, dst_filters: Any = None, clock: Any = None,
                      metrics: GatewayMetrics | None = None, ohttp: bool = False, **extra: Any
                      ) -> AsyncIterator[tuple[int, Ingress]]:
    proxy: dict[str, Any] = {"proxy_listen": {"host": "127.0.0.1", "port": free_port()}}
    if dst_filters is not None:
        proxy["dst_filters"] = dst_filters
    entry_config: dict[str, Any] = {"http_proxy": proxy, "verify": verify}
    if ohttp:
        entry_config["encap_in_http"] = {}  # the deployment guide's spelling: OHTTP since TNG 2.2.5
    entry_config.update(extra)
    config = parse_config({"add_ingress": [entry_config]})
    entry = config.ingress[0]
    assert entry.security.verify is not None
    verifier = PeerVerifier(entry.security.verify, binding=entry.security.binding,
                            **({"clock": clock} if clock else {}))
    ingress = Ingress(entry, metrics or GatewayMetrics(Metrics()), verifier)
    await ingress.start()
    try:
        yield ingress.ports[0], ingress
    finally:
        await ingress.stop()


async def _wait_port(port: int, proc: asyncio.subprocess.Process, timeout: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if proc.returncode is not None:
            raise RuntimeError(f"tng exited early with {proc.returncode}")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"tng did not open port {port} within {timeout} s")


@contextlib.asynccontextmanager
async def real_tng(config: dict[str, Any], wait_port: int) -> AsyncIterator[tuple[asyncio.subprocess.Process, Path]]:
    """Run ``tng launch`` with ``config``; yields (process, log path). Stopped by its pid."""
    assert TNG, "the tng binary (PyPI tng-sdk) is not installed in the venv"
    log_path = Path(tempfile.mkstemp(prefix="tng-", suffix=".log")[1])
    with open(log_path, "wb") as log_file:
        proc = await asyncio.create_subprocess_exec(TNG, "launch", "--config-content", json.dumps(config),
                                                    stdout=log_file, stderr=asyncio.subprocess.STDOUT)
    try:
        await _wait_port(wait_port, proc)
        yield proc, log_path
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        log_path.unlink(missing_ok=True)


def tng_ingress_config(listen_port: int, egress_port: int, as_url: str, ca_path: str,
                       policy_ids: list[str] | None = None) -> dict[str, Any]:
    return {"add_ingress": [{
        "mapping": {"in": {"host": "127.0.0.1", "port": listen_port},
                    "out": {"host": "127.0.0.1", "port": egress_port}},
        "verify": {"as_addr": as_url, "policy_ids": policy_ids or ["default"], "trusted_certs_paths": [ca_path]},
    }]}


@contextlib.asynccontextmanager
async def our_ohttp_egress(aa_socket: str | None, backend_port: int, **extra: Any
                           ) -> AsyncIterator[tuple[int, Any]]:
    from gateway.ohttp_egress import OhttpEgress

    port = free_port()
    security: dict[str, Any] = {"attest": {"aa_addr": "unix://" + aa_socket}} if aa_socket else {"no_ra": True}
    config = parse_config({"add_egress": [{
        "mapping": {"in": {"host": "127.0.0.1", "port": port}, "out": {"host": "127.0.0.1", "port": backend_port}},
        "ohttp": {}, **security, **extra}]})
    provider = AaEvidenceProvider(aa_socket) if aa_socket else None
    egress = OhttpEgress(config.egress[0], provider, GatewayMetrics(Metrics()), f"127.0.0.1:{backend_port}")
    runner = await start_site(egress.app(f"127.0.0.1:{port}"), host="127.0.0.1", port=port)
    try:
        yield port, egress
    finally:
        await runner.cleanup()
        if provider is not None:
            await provider.close()
