"""Whole-chain faults of the gateway's backend (issue 8): the inference app down, and resetting mid-response.

The chain (tests/chain.py) runs ``cai aa``, the ``cai gateway`` rats-tls egress in front of the
in-process inference app, and the verifying ``cai gateway`` ingress (HTTP proxy) on the client
side, all as real subprocesses. What an operator sees is written down in docs/operations-faults.md
("Gateway"); these tests hold the daemons to it:

* backend down: the client gets a prompt ``502`` from its proxy that says the TEE's gateway closed
  the connection without an answer (not a hang, not an empty reply); the egress logs one line per
  refused connection naming the backend address and the cause and counts it in ``cx_failed``; both
  gateways stay live and ready (like TNG, the egress does not probe its backend); once the app is
  back, requests succeed with no restart.
* backend reset mid-response: the client sees an aborted response (a payload or connection error),
  never a silently complete one, both with and without ``Content-Length``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from pathlib import Path

import aiohttp
import pytest

from tests.chain import Chain, ChainOptions, eventually

pytestmark = pytest.mark.timeout(120)

GATEWAY_DAEMONS = ("aa", "gateway", "ingress")


def _failed(metrics: dict[str, float], side: str) -> float:
    return sum(v for k, v in metrics.items() if k.startswith("cx_failed_total{") and f'side="{side}"' in k)


async def _get_through_proxy(chain: Chain, path: str) -> tuple[str, bytes]:
    """A raw HTTP/1.1 GET through the ingress; returns how the connection ended ("eof" or "reset") and the bytes.

    Raw on purpose: HTTP client libraries treat a reset after a close-delimited body as its end
    (aiohttp does), so only the socket shows whether the proxy said "aborted" or "complete".
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", chain.proxy_port)
    target = f"127.0.0.1:{chain.egress_port}"
    writer.write(f"GET http://{target}{path} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    received = b""
    try:
        while chunk := await reader.read(65536):
            received += chunk
        return "eof", received
    except ConnectionResetError:
        return "reset", received
    finally:
        writer.close()


class ResettingBackend:
    """A backend on the app's port that answers the head of a response, part of the body, then resets.

    ``length``: the Content-Length it announces (None: none, the body ends at connection close,
    the case where only a reset can tell the client the body is incomplete).
    """

    def __init__(self, port: int, *, length: int | None, sent: int = 64 * 1024) -> None:
        self.port, self.length, self.sent = port, length, sent
        self.server: asyncio.Server | None = None
        self.connections = 0

    async def __aenter__(self) -> ResettingBackend:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            head = b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\n"
            head += (b"content-length: %d\r\n" % self.length) if self.length is not None else b"connection: close\r\n"
            writer.write(head + b"\r\n" + b"t" * self.sent)
            await writer.drain()
            await asyncio.sleep(0.2)  # let the partial body reach the client side first
        sock = writer.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        writer.transport.abort()


async def test_backend_down_is_a_prompt_502_logged_counted_and_recovers_without_restart(tmp_path: Path) -> None:
    async with Chain(tmp_path, ChainOptions(daemons=GATEWAY_DAEMONS)) as chain:
        status, text = await chain.ask("before")
        assert status == 200 and "echo: before" in text
        served = chain.app_requests
        before = await chain.metrics("gateway")

        await chain.stop_app()
        backend = f"127.0.0.1:{chain.app_port}"
        for attempt in range(3):
            status, text = await asyncio.wait_for(chain.ask(f"down {attempt}"), chain.options.timeout)
            assert status == 502, text
            assert "closed the connection" in text and "backend" in text, text
        assert chain.app_requests == served

        # One log line per refused connection, naming the backend and the cause.
        def unreachable() -> list[dict]:
            lines = chain.events("gateway", "gateway.egress.backend_unreachable")
            return lines if len(lines) >= 3 else []

        lines = await eventually(unreachable, what="three backend_unreachable lines")
        assert len(lines) == 3
        assert all(line["backend"] == backend and line["level"] == "error" for line in lines)
        assert all("ConnectionRefusedError" in line["error"] and "refused" in line["error"].lower() for line in lines)
        after = await chain.metrics("gateway")
        assert _failed(after, "egress") - _failed(before, "egress") == 3
        assert after["live"] == 1
        # The ingress says the same thing in its own words: a refusal after verification, counted.
        ingress_lines = chain.events("ingress", "gateway.ingress.no_reply")
        assert len(ingress_lines) == 3 and all(f":{chain.egress_port}" in e["target"] for e in ingress_lines)

        # Live and ready: the egress still attests and accepts; its backend is the app's business (as in TNG).
        for name in ("gateway", "ingress"):
            assert (await chain.api(name, "/livez"))[0] == 200
            assert (await chain.api(name, "/readyz"))[0] == 200

        await chain.start_app()
        status, text = await chain.ask("after")
        assert status == 200 and "echo: after" in text
        assert chain.app_requests == served + 1
        assert {n: p.returncode for n, p in chain.procs.items()} == dict.fromkeys(GATEWAY_DAEMONS)
        assert all(chain.incarnations[n] == 1 for n in GATEWAY_DAEMONS)

        assert chain.leaks(GATEWAY_DAEMONS) == []


async def test_backend_reset_mid_response_is_never_a_complete_response(tmp_path: Path) -> None:
    async with Chain(tmp_path, ChainOptions(daemons=GATEWAY_DAEMONS)) as chain:
        await chain.stop_app()
        for length in (1 << 20, None):  # with Content-Length, and close-delimited
            async with ResettingBackend(chain.app_port, length=length) as backend:
                ending, received = await asyncio.wait_for(_get_through_proxy(chain, "/v1/weights"),
                                                          chain.options.timeout)
                assert backend.connections == 1
                head, _, body = received.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200") and 0 < len(body) <= backend.sent
                # The reset is passed on hop by hop (app -> egress -> rats-tls -> ingress -> client): the
                # client's socket is reset; it never ends cleanly as a complete close-delimited body would.
                assert ending == "reset", f"length={length}: the connection ended cleanly after {len(body)} bytes"
                if length is not None:
                    with pytest.raises(aiohttp.ClientPayloadError):  # what an HTTP client library reports
                        await _aiohttp_get(chain, "/v1/weights")
        def resets() -> list[dict]:
            lines = chain.events("gateway", "gateway.egress.backend_reset")
            return lines if len(lines) >= 3 else []

        events = await eventually(resets, what="a backend_reset log line per reset")
        assert len(events) == 3
        assert all(e["backend"] == f"127.0.0.1:{chain.app_port}" and "reset" in e["error"].lower() for e in events)
        assert chain.events("gateway", "gateway.egress.backend_unreachable") == []
        await chain.start_app()
        status, text = await chain.ask("after reset")
        assert status == 200 and "echo: after reset" in text
        assert all(p.returncode is None for p in chain.procs.values())
        assert chain.leaks(GATEWAY_DAEMONS) == []


async def _aiohttp_get(chain: Chain, path: str) -> bytes:
    timeout = aiohttp.ClientTimeout(total=chain.options.timeout)
    async with aiohttp.ClientSession(timeout=timeout) as http, http.get(
            f"http://127.0.0.1:{chain.egress_port}{path}", proxy=f"http://127.0.0.1:{chain.proxy_port}") as resp:
        return await resp.read()
