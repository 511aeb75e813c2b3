"""Interop with the real ``tng`` 2.12 binary (rats-tls, ALPN ``rats-tls``, background check).

* real tng ingress (verifying with the stand-in's AS and test CA) → our egress → plaintext backend;
* our ingress → real tng egress (attesting through our AA's REST API with ``coco_asr``) → backend;
* misconfigured or unattested peers are refused on both sides.
"""

from __future__ import annotations

import asyncio
import os
import ssl

import aiohttp

from gateway.ratls_cert import binding_claims, parse_certificate, report_data, runtime_data_text
from tests.integration.test_gateway_support import (
    attestation_agent,
    backend,
    free_port,
    our_egress,
    our_ingress,
    real_tng,
    tng_ingress_config,
)
from trustee_standin.server import StandinServer


async def _echo_and_stream(port: int) -> None:
    payload = os.urandom(3 * 1024 * 1024 + 7)
    async with aiohttp.ClientSession() as http:
        async with http.post(f"http://127.0.0.1:{port}/echo", data=payload) as resp:
            assert resp.status == 200
            assert await resp.read() == payload
        async with http.get(f"http://127.0.0.1:{port}/stream?n=6") as resp:
            assert resp.headers["content-type"] == "text/event-stream"
            events = []
            async for line in resp.content:
                if line.startswith(b"data:"):
                    events.append(line.strip())
    assert events == [f"data: token-{i}".encode() for i in range(6)]


async def test_real_tng_ingress_to_our_egress():
    async with StandinServer() as standin, attestation_agent() as (aa_sock, _), backend() as be_port, \
            our_egress(aa_sock, be_port) as (eg_port, egress):
        listen = free_port()
        config = tng_ingress_config(listen, eg_port, standin.as_url, str(standin.ca_cert_path))
        async with real_tng(config, listen):
            await _echo_and_stream(listen)
        assert egress.certs.refreshes == 1  # one certificate served every connection


async def _refused(port: int) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        try:
            async with http.post(f"http://127.0.0.1:{port}/echo", data=b"secret request") as resp:
                assert resp.status >= 400, "an unverified peer must not get the request through"
        except (TimeoutError, aiohttp.ClientError):
            pass


async def test_real_tng_ingress_refuses_wrong_policy_and_unattested_egress():
    """The real tng ingress refuses our egress under an unknown policy id, and an egress without evidence.

    Observed: tng 2.12's ingress verifies lazily and may already have written the first request
    bytes into the TLS session when it gives up, so the assertion here is on the client's outcome
    only; our own ingress is held to "no byte before the verdict" in test_gateway_ingress.py.
    """
    async with StandinServer() as standin, attestation_agent() as (aa_sock, _), backend() as be_port:
        async with our_egress(aa_sock, be_port) as (eg_port, _):
            listen = free_port()
            config = tng_ingress_config(listen, eg_port, standin.as_url, str(standin.ca_cert_path),
                                        policy_ids=["no-such-policy"])
            async with real_tng(config, listen) as (_, log_path):
                await _refused(listen)
                for _ in range(100):  # tng logs the AS's reason once its verifier task finishes
                    if "no-such-policy" in log_path.read_text(errors="replace"):
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("tng did not log the attestation service's reason")
        from gateway.cert_manager import AttestedCertManager

        plain = AttestedCertManager(None, alpn="rats-tls")
        await plain.refresh()

        async def plain_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await writer.start_tls(plain.context)
                await reader.read(100)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nfake")
                await writer.drain()
            except (ssl.SSLError, ConnectionError, OSError):
                pass
            writer.close()

        fake = await asyncio.start_server(plain_tls, "127.0.0.1", 0)
        listen = free_port()
        config = tng_ingress_config(listen, fake.sockets[0].getsockname()[1], standin.as_url,
                                    str(standin.ca_cert_path))
        async with real_tng(config, listen):
            await _refused(listen)
        fake.close()


async def test_our_ingress_to_real_tng_egress():
    async with StandinServer() as standin, attestation_agent() as (_, aa_rest), backend() as be_port:
        eg_port = free_port()
        config = {"add_egress": [{
            "mapping": {"in": {"host": "127.0.0.1", "port": eg_port}, "out": {"host": "127.0.0.1", "port": be_port}},
            "attest": {"aa_type": "uds", "aa_provider": "coco_asr", "asr_addr": aa_rest}}]}
        async with real_tng(config, eg_port):
            verify = {"as_addr": standin.as_url, "policy_ids": ["default"],
                      "trusted_certs_paths": [str(standin.ca_cert_path)]}
            async with our_ingress(verify) as (proxy_port, ingress):
                proxy = f"http://127.0.0.1:{proxy_port}"
                async with aiohttp.ClientSession() as http:
                    for _ in range(3):
                        async with http.post(f"http://127.0.0.1:{eg_port}/echo", data=b"hello tee",
                                             proxy=proxy) as resp:
                            assert resp.status == 200
                            assert await resp.read() == b"hello tee"
                assert ingress.verifier is not None
                assert ingress.verifier.as_calls == 1  # verdict cached until the token expires
            # the same egress with a policy id the AS does not know: refused with the reason
            bad = {**verify, "policy_ids": ["no-such-policy"]}
            async with our_ingress(bad) as (proxy_port, _):
                async with aiohttp.ClientSession() as http:
                    async with http.post(f"http://127.0.0.1:{eg_port}/echo", data=b"x",
                                         proxy=f"http://127.0.0.1:{proxy_port}") as resp:
                        assert resp.status == 502
                        assert "no-such-policy" in await resp.text()


async def test_real_tng_certificate_decodes_with_our_codec():
    """A certificate made by the real tng egress parses, self-verifies and binds its key (format B)."""
    async with attestation_agent() as (_, aa_rest), backend() as be_port:
        eg_port = free_port()
        config = {"add_egress": [{
            "mapping": {"in": {"host": "127.0.0.1", "port": eg_port}, "out": {"host": "127.0.0.1", "port": be_port}},
            "attest": {"aa_type": "uds", "aa_provider": "coco_asr", "asr_addr": aa_rest}}]}
        async with real_tng(config, eg_port):
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["rats-tls"])
            _, writer = await asyncio.open_connection("127.0.0.1", eg_port, ssl=ctx, server_hostname="x")
            der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
            writer.close()
    cert = parse_certificate(der)
    runtime = runtime_data_text(binding_claims(cert.spki))
    assert cert.record.aa_runtime_data == runtime
    assert cert.record.tee_type == "sample"
    import base64
    import json

    evidence = json.loads(cert.record.aa_evidence)
    assert base64.b64decode(evidence["report_data"]) == report_data(runtime)


async def test_real_tng_multiplex_ingress_to_our_egress():
    """``rats_tls.multiplex: true`` on both sides: ALPN h2, one HTTP/2 CONNECT stream per connection."""
    async with StandinServer() as standin, attestation_agent() as (aa_sock, _), backend() as be_port, \
            our_egress(aa_sock, be_port, rats_tls={"multiplex": True}) as (eg_port, egress):
        assert egress.certs.alpn == "h2"
        listen = free_port()
        config = tng_ingress_config(listen, eg_port, standin.as_url, str(standin.ca_cert_path))
        config["add_ingress"][0]["rats_tls"] = {"multiplex": True}
        async with real_tng(config, listen):
            await asyncio.gather(_echo_and_stream(listen), _echo_and_stream(listen))
        # a multiplexing client against a raw (ALPN rats-tls) egress is a generation mismatch: refused
    async with StandinServer() as standin, attestation_agent() as (aa_sock, _), backend() as be_port, \
            our_egress(aa_sock, be_port) as (eg_port, _):
        listen = free_port()
        config = tng_ingress_config(listen, eg_port, standin.as_url, str(standin.ca_cert_path))
        config["add_ingress"][0]["rats_tls"] = {"multiplex": True}
        async with real_tng(config, listen):
            await _refused(listen)
