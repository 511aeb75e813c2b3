"""TNG <= 2.2.4 compatibility (``"compat": "2.2.4"``) and HTTP/2 CONNECT multiplexing in our ingress.

No TNG 2.2.x binary exists on PyPI, so the 2.2.4 framings are tested ours ↔ ours here (the pure
pieces have vector tests against the rats-rs/TNG sources in the unit tests); multiplexing is also
tested against the real tng 2.12 egress with ``rats_tls.multiplex: true``.
"""

from __future__ import annotations

import asyncio
import os

import aiohttp
import h2.config
import h2.connection
import h2.events

from gateway.ratls_cert import parse_certificate
from tests.integration.test_gateway_support import (
    attestation_agent,
    backend,
    free_port,
    our_egress,
    our_ingress,
    real_tng,
)
from trustee_standin.server import StandinServer

COMPAT = {"compat": "2.2.4"}


def _verify(standin: StandinServer) -> dict[str, object]:
    return {"as_addr": standin.as_url, "policy_ids": ["default"], "trusted_certs_paths": [str(standin.ca_cert_path)]}


async def _exchange(proxy_port: int, eg_port: int, *, connects: int = 1) -> None:
    """Absolute-form echo (2 MiB), an SSE stream and raw CONNECT tunnels through the proxy."""
    proxy = f"http://127.0.0.1:{proxy_port}"
    payload = os.urandom(2 * 1024 * 1024 + 3)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{eg_port}/echo", data=payload, proxy=proxy) as resp:
            assert resp.status == 200
            assert await resp.read() == payload
        async with http.get(f"http://127.0.0.1:{eg_port}/stream?n=4", proxy=proxy) as resp:
            assert (await resp.read()).count(b"data: token-") == 4

    async def tunnel(i: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        writer.write(f"CONNECT 127.0.0.1:{eg_port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
        body = f"tunnel-{i}".encode()
        writer.write(b"POST /echo HTTP/1.1\r\nHost: svc\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (len(body), body))
        response = await reader.read()
        writer.close()
        assert response.startswith(b"HTTP/1.1 200") and response.endswith(body), response[:200]

    await asyncio.gather(*(tunnel(i) for i in range(connects)))


async def test_2_2_4_encap_in_http_ours_to_ours():
    """TCP → h2c POST (tng header) → TLS (ALPN h2, format A) → HTTP/2 CONNECT → backend."""
    async with StandinServer() as standin, attestation_agent() as (aa_sock, _), backend() as be_port, \
            our_egress(aa_sock, be_port, decap_from_http={}, **COMPAT) as (eg_port, egress):
        assert egress.certs.alpn == "h2" and egress.certs.binding == "A"
        assert egress.certs.cert_der is not None
        assert parse_certificate(egress.certs.cert_der).claims_buffer  # format A carries the claims buffer
        rewrites = {"path_rewrites": [{"match_regex": "/(echo|stream)", "substitution": "/api/$1"}]}
        async with our_ingress(_verify(standin), encap_in_http=rewrites, **COMPAT) as (proxy_port, ingress):
            await _exchange(proxy_port, eg_port, connects=3)
            assert ingress.verifier is not None and ingress.verifier.as_calls == 1
            assert ingress.pool is not None
            # one pooled session per (endpoint, inner authority, rewritten outer path), as TNG 2.2.4 pools
            paths = {key.outer_path for key in ingress.pool.sessions}
            assert paths == {"/api/echo", "/api/stream"}
            assert {key.outer_authority for key in ingress.pool.sessions} == {f"127.0.0.1:{eg_port}", "svc"}


async def test_2_2_4_without_encap_and_multiplex_ours_to_ours():
    """compat 2.2.4 without encap_in_http (TLS h2 + CONNECT + format A), and >= 2.7 multiplex (format B)."""
    async with StandinServer() as standin, attestation_agent() as (aa_sock, _), backend() as be_port:
        for extra in (COMPAT, {"rats_tls": {"multiplex": True}}):
            async with our_egress(aa_sock, be_port, **extra) as (eg_port, egress), \
                    our_ingress(_verify(standin), **extra) as (proxy_port, ingress):
                assert egress.certs.binding == ("A" if extra is COMPAT else "B")
                await _exchange(proxy_port, eg_port, connects=4)
                assert ingress.pool is not None and ingress.pool.sessions_made == 1  # all streams on one session


async def test_2_2_4_generation_mismatches_are_refused():
    async with StandinServer() as standin, attestation_agent() as (aa_sock, _), backend() as be_port:
        # a >= 2.7 multiplexing egress (format B) behind a 2.2.4 ingress: the binding format is wrong
        async with our_egress(aa_sock, be_port, rats_tls={"multiplex": True}) as (eg_port, _), \
                our_ingress(_verify(standin), **COMPAT) as (proxy_port, _):
            async with aiohttp.ClientSession() as http:
                async with http.post(f"http://127.0.0.1:{eg_port}/echo", data=b"x",
                                     proxy=f"http://127.0.0.1:{proxy_port}") as resp:
                    assert resp.status == 502
                    assert "format B" in await resp.text()
        # a 2.2.4 egress (format A) behind a >= 2.7 multiplexing ingress: refused the other way round
        async with our_egress(aa_sock, be_port, **COMPAT) as (eg_port, _), \
                our_ingress(_verify(standin), rats_tls={"multiplex": True}) as (proxy_port, _):
            async with aiohttp.ClientSession() as http:
                async with http.post(f"http://127.0.0.1:{eg_port}/echo", data=b"x",
                                     proxy=f"http://127.0.0.1:{proxy_port}") as resp:
                    assert resp.status == 502
                    assert "format A" in await resp.text()


async def test_decap_from_http_refuses_non_tng_clients_and_honours_direct_forward():
    async with attestation_agent() as (aa_sock, _), backend() as be_port, \
            our_egress(aa_sock, be_port, decap_from_http={}, direct_forward=[{"http_path": "^/echo$"}],
                       **COMPAT) as (eg_port, _):
        async with aiohttp.ClientSession() as http:
            # a plain HTTP/1 client gets TNG's 418 explanation, nothing reaches the backend
            async with http.get(f"http://127.0.0.1:{eg_port}/stream") as resp:
                assert resp.status == 418
                assert "secured by TNG" in await resp.text()
            # direct_forward: the path is passed to the backend in plaintext (health probes)
            async with http.post(f"http://127.0.0.1:{eg_port}/echo", data=b"probe") as resp:
                assert resp.status == 200 and await resp.read() == b"probe"
        # an h2c request without the tng header is refused with 400
        reader, writer = await asyncio.open_connection("127.0.0.1", eg_port)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        conn.send_headers(1, [(":method", "POST"), (":scheme", "http"), (":authority", "svc"), (":path", "/")])
        writer.write(conn.data_to_send())
        status = None
        while status is None:
            data = await asyncio.wait_for(reader.read(65536), 10)
            assert data, "egress closed without answering"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = dict(event.headers)[":status"]
        writer.close()
        assert status == "400"


async def test_our_multiplex_ingress_to_real_tng_egress():
    """Our ingress with ``rats_tls.multiplex: true`` → real tng 2.12 egress (ALPN h2, CONNECT) → backend."""
    async with StandinServer() as standin, attestation_agent() as (_, aa_rest), backend() as be_port:
        eg_port = free_port()
        config = {"add_egress": [{
            "mapping": {"in": {"host": "127.0.0.1", "port": eg_port}, "out": {"host": "127.0.0.1", "port": be_port}},
            "attest": {"aa_type": "uds", "aa_provider": "coco_asr", "asr_addr": aa_rest},
            "rats_tls": {"multiplex": True}}]}
        async with real_tng(config, eg_port):
            async with our_ingress(_verify(standin), rats_tls={"multiplex": True}) as (proxy_port, ingress):
                await _exchange(proxy_port, eg_port, connects=3)
                assert ingress.pool is not None and ingress.pool.sessions_made == 1
                assert ingress.verifier is not None and ingress.verifier.as_calls == 1
