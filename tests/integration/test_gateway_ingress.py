"""Our ingress (verifying HTTP proxy) ↔ our egress, and every way the ingress must refuse a peer.

Refusals are checked on three levels: the proxy answers 502 with the reason, a structured
``gateway.peer.rejected`` log line is written, and not one byte of the client's request reached
the peer (a counting fake egress records what it decrypts).
"""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import os
import time

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from agents.health import Metrics
from agents.logsetup import configure_logging, reset_logging
from attestation_agent.aa_client import AaClient
from gateway.cert_manager import server_context
from gateway.metrics import GatewayMetrics
from gateway.ratls_cert import (
    EvidenceRecord,
    binding_claims,
    build_certificate,
    report_data,
    runtime_data_text,
    spki_der,
)
from tests.integration.test_gateway_support import attestation_agent, backend, our_egress, our_ingress
from trustee_standin.ca import load_or_create
from trustee_standin.server import StandinServer


@pytest.fixture
def captured_logs():
    stream = io.StringIO()
    configure_logging(level="INFO", fmt="json", stream=stream)
    yield stream
    reset_logging()


def _verify(standin: StandinServer, **overrides: object) -> dict[str, object]:
    return {"as_addr": standin.as_url, "policy_ids": ["default"],
            "trusted_certs_paths": [str(standin.ca_cert_path)], **overrides}


async def test_ingress_to_egress_connect_and_absolute_form():
    async with StandinServer() as standin, attestation_agent() as (aa_sock, _), backend() as be_port, \
            our_egress(aa_sock, be_port) as (eg_port, _):
        metrics = GatewayMetrics(Metrics())
        async with our_ingress(_verify(standin), metrics=metrics) as (proxy_port, ingress):
            proxy = f"http://127.0.0.1:{proxy_port}"
            payload = os.urandom(2 * 1024 * 1024)
            async with aiohttp.ClientSession() as http:
                # absolute-form (plain http:// through the proxy)
                async with http.post(f"http://127.0.0.1:{eg_port}/echo", data=payload, proxy=proxy) as resp:
                    assert resp.status == 200 and await resp.read() == payload
                async with http.get(f"http://127.0.0.1:{eg_port}/stream?n=4", proxy=proxy) as resp:
                    body = await resp.read()
                assert body.count(b"data: token-") == 4
            # CONNECT tunnel, raw bytes
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
            writer.write(f"CONNECT 127.0.0.1:{eg_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
            response = await reader.read()
            writer.close()
            assert response.startswith(b"HTTP/1.1 200") and response.endswith(b"hello")
            assert ingress.verifier is not None and ingress.verifier.as_calls == 1
        registry = metrics.metrics.registry
        labels = {"side": "ingress", "type": "http_proxy", "id": "0", "listen": f"127.0.0.1:{proxy_port}"}
        assert registry.get_sample_value("cx_total", labels) == 3  # TNG's metric name, unchanged
        assert registry.get_sample_value("cx_active", labels) == 0
        assert registry.get_sample_value("rx_bytes_total", labels) > len(payload)
        assert registry.get_sample_value("attestation_results_total", {"side": "ingress", "result": "verified"}) == 3


class CountingPeer:
    """A fake rats-tls egress: serves a given certificate and records every decrypted byte."""

    def __init__(self, der: bytes, key: ec.EllipticCurvePrivateKey) -> None:
        self.context = server_context(der, key, "rats-tls")
        self.received = b""
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> int:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while data := await reader.read(65536):
                    self.received += data
            except (ConnectionError, OSError):
                pass
            writer.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=self.context)
        return int(self.server.sockets[0].getsockname()[1])

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


async def _attested_cert(aa_sock: str, *, key: ec.EllipticCurvePrivateKey | None = None,
                         bind_to: ec.EllipticCurvePrivateKey | None = None,
                         tamper: bool = False) -> tuple[bytes, ec.EllipticCurvePrivateKey]:
    """A certificate for ``key`` whose evidence is bound to ``bind_to`` (default: ``key``)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    runtime = runtime_data_text(binding_claims(spki_der((bind_to or key).public_key())))
    async with AaClient(aa_sock) as aa:
        evidence = await aa.primary_evidence(report_data(runtime), embed_devices=False)
    if tamper:
        evidence["svn"] = "2"  # still well-formed, but ...
        evidence["report_data"] = evidence["report_data"][:-4] + ("AAAA" if evidence["report_data"][-4:] != "AAAA"
                                                                  else "BBBB")
    record = EvidenceRecord(tee_type="sample", aa_evidence=json.dumps(evidence).encode(), aa_runtime_data=runtime)
    now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=1)
    return build_certificate(key, record, now), key


async def _refused_through(proxy_port: int, target_port: int) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    writer.write(f"CONNECT 127.0.0.1:{target_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    writer.write(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\nsecret")  # sent early on purpose
    response = (await reader.read()).decode()
    writer.close()
    assert response.startswith("HTTP/1.1 502"), response
    return response


@pytest.mark.parametrize("case", ["tampered", "wrong-binding", "no-evidence"])
async def test_ingress_refuses_bad_peers_before_any_byte(case, captured_logs):
    async with StandinServer() as standin, attestation_agent() as (aa_sock, _):
        if case == "tampered":
            der, key = await _attested_cert(aa_sock, tamper=True)
            reason = "REPORT_DATA is different"
        elif case == "wrong-binding":
            der, key = await _attested_cert(aa_sock, bind_to=ec.generate_private_key(ec.SECP256R1()))
            reason = "key binding mismatch"
        else:
            from gateway.cert_manager import _plain_certificate

            key = ec.generate_private_key(ec.SECP256R1())
            der = _plain_certificate(key, datetime.datetime.now(datetime.UTC))
            reason = "no rats-tls evidence extension"
        peer = CountingPeer(der, key)
        async with peer as peer_port, our_ingress(_verify(standin)) as (proxy_port, _):
            response = await _refused_through(proxy_port, peer_port)
        assert reason in response
        assert peer.received == b"", "request bytes reached an unverified peer"
        logs = [json.loads(line) for line in captured_logs.getvalue().splitlines() if line.startswith("{")]
        rejected = [entry for entry in logs if entry.get("event") == "gateway.peer.rejected"]
        assert rejected and reason in rejected[0]["reason"]


async def test_ingress_refuses_wrong_policy_expired_token_and_wrong_anchor(tmp_path):
    async with StandinServer() as standin, attestation_agent() as (aa_sock, _), backend() as be_port, \
            our_egress(aa_sock, be_port) as (eg_port, _):
        async with our_ingress(_verify(standin, policy_ids=["default", "gpu-policy"])) as (proxy_port, _):
            response = await _refused_through(proxy_port, eg_port)
            assert "gpu-policy" in response
        # The token is valid for the stand-in's 5 minutes; a verifier whose clock is an hour ahead
        # must see it expired (and must not have cached anything from the refused attempts).
        async with our_ingress(_verify(standin), clock=lambda: time.time() + 3600) as (proxy_port, _):
            response = await _refused_through(proxy_port, eg_port)
            assert "expired" in response
        # a wrong trust anchor: the token chain does not lead to it
        other = load_or_create(tmp_path / "other-ca")
        async with our_ingress(_verify(standin, trusted_certs_paths=[str(other.root_cert_path)])) as (proxy_port, _):
            response = await _refused_through(proxy_port, eg_port)
            assert "does not lead to a trusted certificate" in response
