"""OHTTP egress: real tng 2.12 ingress in OHTTP mode → our egress → backend; non-TNG requests get 403."""

from __future__ import annotations

import os

import aiohttp

from tests.integration.test_gateway_support import (
    attestation_agent,
    backend,
    free_port,
    our_ingress,
    our_ohttp_egress,
    real_tng,
)
from tests.integration.test_gateway_tng_interop import _echo_and_stream
from trustee_standin.server import StandinServer


async def test_real_tng_ohttp_ingress_to_our_egress():
    async with StandinServer() as standin, attestation_agent() as (aa_sock, _), backend() as be_port, \
            our_ohttp_egress(aa_sock, be_port) as (eg_port, _):
        listen = free_port()
        config = {"add_ingress": [{
            "mapping": {"in": {"host": "127.0.0.1", "port": listen}, "out": {"host": "127.0.0.1", "port": eg_port}},
            "ohttp": {},
            "verify": {"as_addr": standin.as_url, "policy_ids": ["default"],
                       "trusted_certs_paths": [str(standin.ca_cert_path)]}}]}
        async with real_tng(config, listen):
            await _echo_and_stream(listen)
        # tng asked for an attested key config: one AS verdict for the key, then cached
        assert standin.faults.counters.get("as", 0) == 1


async def test_non_tng_request_gets_403():
    async with backend() as be_port, our_ohttp_egress(None, be_port, direct_forward=[{"http_path": "/stream"}]) \
            as (eg_port, _):
        async with aiohttp.ClientSession() as http:
            async with http.post(f"http://127.0.0.1:{eg_port}/echo", data=b"plain") as resp:
                assert resp.status == 403
                assert (await resp.json())["code"] == "RejectNonTngRequest"
            async with http.get(f"http://127.0.0.1:{eg_port}/stream?n=2") as resp:  # direct_forward
                assert resp.status == 200 and (await resp.read()).count(b"data:") == 2


async def test_real_tng_ohttp_ingress_refuses_unattested_egress():
    """A no_ra OHTTP egress (key config without evidence) is refused by a verifying tng ingress."""
    async with StandinServer() as standin, backend() as be_port, our_ohttp_egress(None, be_port) as (eg_port, _):
        listen = free_port()
        config = {"add_ingress": [{
            "mapping": {"in": {"host": "127.0.0.1", "port": listen}, "out": {"host": "127.0.0.1", "port": eg_port}},
            "ohttp": {},
            "verify": {"as_addr": standin.as_url, "policy_ids": ["default"],
                       "trusted_certs_paths": [str(standin.ca_cert_path)]}}]}
        async with real_tng(config, listen):
            async with aiohttp.ClientSession() as http:
                try:
                    async with http.post(f"http://127.0.0.1:{listen}/echo", data=b"secret") as resp:
                        assert resp.status >= 400
                except aiohttp.ClientError:
                    pass


async def _through_proxy(proxy_port: int, target_port: int) -> None:
    proxy = f"http://127.0.0.1:{proxy_port}"
    payload = os.urandom(300_000)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{target_port}/echo", data=payload, proxy=proxy) as resp:
            assert resp.status == 200 and await resp.read() == payload
        async with http.get(f"http://127.0.0.1:{target_port}/stream?n=5", proxy=proxy) as resp:
            events = [line async for line in resp.content if line.startswith(b"data:")]
    assert [e.strip() for e in events] == [f"data: token-{i}".encode() for i in range(5)]


async def test_our_ohttp_ingress_to_our_egress_and_refusals():
    async with StandinServer() as standin, attestation_agent() as (aa_sock, _), backend() as be_port:
        verify = {"as_addr": standin.as_url, "trusted_certs_paths": [str(standin.ca_cert_path)]}
        async with our_ohttp_egress(aa_sock, be_port) as (eg_port, _), \
                our_ingress(verify, ohttp=True) as (proxy_port, ingress):
            await _through_proxy(proxy_port, eg_port)
            assert ingress.verifier is not None and ingress.verifier.as_calls == 1  # key config cached
        async with our_ohttp_egress(aa_sock, be_port) as (eg_port, _), \
                our_ingress({**verify, "policy_ids": ["gpu"]}, ohttp=True) as (proxy_port, _):
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{eg_port}/stream", proxy=f"http://127.0.0.1:{proxy_port}") \
                        as resp:
                    assert resp.status == 502 and "gpu" in await resp.text()
        async with our_ohttp_egress(None, be_port) as (eg_port, _), \
                our_ingress(verify, ohttp=True) as (proxy_port, _):
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{eg_port}/stream", proxy=f"http://127.0.0.1:{proxy_port}") \
                        as resp:
                    assert resp.status == 502 and "carries no attestation" in await resp.text()


async def test_our_ohttp_ingress_to_real_tng_ohttp_egress():
    async with StandinServer() as standin, attestation_agent() as (_, aa_rest), backend() as be_port:
        eg_port = free_port()
        config = {"add_egress": [{
            "mapping": {"in": {"host": "127.0.0.1", "port": eg_port}, "out": {"host": "127.0.0.1", "port": be_port}},
            "ohttp": {}, "attest": {"aa_type": "uds", "aa_provider": "coco_asr", "asr_addr": aa_rest}}]}
        async with real_tng(config, eg_port):
            verify = {"as_addr": standin.as_url, "trusted_certs_paths": [str(standin.ca_cert_path)]}
            async with our_ingress(verify, ohttp=True) as (proxy_port, _):
                await _through_proxy(proxy_port, eg_port)
