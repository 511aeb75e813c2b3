"""Ingress (client side): an HTTP proxy / port mapping that only talks to verified TEEs.

For each client connection whose target matches ``dst_filters`` (all targets when none are given)
the ingress opens a rats-tls connection (TLS 1.3, ALPN ``rats-tls``) to the target, verifies the
presented attested certificate through the attestation service (``PeerVerifier``) and only then
answers ``200`` to ``CONNECT`` or sends the (origin-form) request upstream: no byte of the client's
request leaves before the peer is verified. A refused peer gets ``502`` with the reason in the body
and header ``x-cai-gateway-error``, and one structured log line. Targets outside ``dst_filters`` are
proxied in plaintext, as TNG does.

With ``rats_tls.multiplex: true`` (ALPN ``h2``) or ``"compat": "2.2.4"`` each client connection is
one HTTP/2 ``CONNECT`` stream on a pooled, verified TLS session (``gateway.ingress_pool``); with
``"compat": "2.2.4"`` plus ``encap_in_http`` that session runs inside an h2c ``POST`` named after the
client's first request (authority, rewritten path), so the ingress reads that request head first
— locally, nothing leaves before the peer is verified.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import ssl
from collections.abc import Coroutine
from typing import Any

from agents.errors import CaiError
from agents.logsetup import get_logger
from gateway import bhttp
from gateway.config import EndpointFilter, IngressConfig, MappingRule
from gateway.errors import CertFormatError, GatewayError, VerificationFailed
from gateway.h2c_encap import PathRewriter
from gateway.http_head import MAX_HEAD, ProxyRequest, ProxyRequestError, parse_origin_request, parse_proxy_request
from gateway.http_inspect import InspectError, RequestInfo, inspect_request
from gateway.ingress_pool import PoolKey, TunnelPool, client_context
from gateway.metrics import GatewayMetrics, Listener
from gateway.ohttp_client import OhttpClient
from gateway.relay import close_writer, relay
from gateway.verifier import PeerVerifier

log = get_logger("gateway.ingress")

CONNECT_TIMEOUT = 15.0
MAX_OHTTP_BODY = 64 * 1024 * 1024
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "transfer-encoding", "te",
               "trailer", "upgrade", "content-length"}
HEAD_TIMEOUT = 30.0

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def ratls_connect(host: str, port: int, *, alpn: str, verifier: PeerVerifier | None) -> Streams:
    """Connect to a rats-tls egress and verify it; raise GatewayError with the reason otherwise."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=client_context(alpn), server_hostname="tng.internal"),
            CONNECT_TIMEOUT)
    except ssl.SSLError as exc:
        raise VerificationFailed(f"rats-tls handshake with {host}:{port} failed: {exc.reason or exc}") from None
    except (OSError, TimeoutError) as exc:
        raise GatewayError(f"cannot connect to {host}:{port}: {type(exc).__name__}") from None
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object.selected_alpn_protocol() != alpn:
            raise VerificationFailed(f"{host}:{port} did not negotiate ALPN {alpn!r}")
        if verifier is not None:
            der = ssl_object.getpeercert(binary_form=True)
            await verifier.verify_certificate(der)
    except BaseException:
        await close_writer(writer)
        raise
    return reader, writer


def _matches(flt: EndpointFilter, host: str, port: int) -> bool:
    if flt.port is not None and not flt.port <= port <= (flt.port_end or flt.port):
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if flt.ip is not None:
        return address is not None and address == ipaddress.ip_address(flt.ip)
    if flt.ip_cidr is not None:
        return address is not None and address in ipaddress.ip_network(flt.ip_cidr, strict=False)
    if flt.domain is not None:
        return address is None and fnmatch.fnmatchcase(host.lower(), flt.domain.lower())
    if flt.domain_regex is not None:
        import re

        return address is None and re.fullmatch(flt.domain_regex, host) is not None
    return True


class Ingress:
    """The listener of one ``add_ingress`` entry (``http_proxy`` or ``mapping``)."""

    def __init__(self, config: IngressConfig, metrics: GatewayMetrics, verifier: PeerVerifier | None) -> None:
        if verifier is not None and verifier.binding != config.security.binding:
            raise GatewayError(f"add_ingress[{config.id}]: the verifier expects binding format {verifier.binding} "
                               f"but the entry needs format {config.security.binding}")
        h2c = config.security.h2c
        self.pool = TunnelPool(verifier, encap_in_http=h2c is not None) if config.security.multiplex else None
        self.rewriter = PathRewriter(h2c.path_rewrites) if h2c is not None else None
        self.ohttp = OhttpClient(verifier) if config.security.ohttp is not None else None
        self.config = config
        self.metrics = metrics
        self.verifier = verifier
        self.alpn = config.security.alpn
        self.servers: list[asyncio.Server] = []
        self.tasks: set[asyncio.Task[object]] = set()

    @property
    def ports(self) -> list[int]:
        return [s.sockets[0].getsockname()[1] for s in self.servers]

    async def start(self) -> None:
        if self.config.http_proxy is not None:
            ep = self.config.http_proxy.listen
            listener = self.metrics.listener("ingress", "http_proxy", self.config.id, f"{ep.host}:{ep.port}")

            async def proxy_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                await self._tracked(self._serve_proxy(reader, writer, listener))

            self.servers.append(await asyncio.start_server(proxy_handler, ep.host, ep.port, backlog=1024))
        for rule in self.config.mapping:
            listener = self.metrics.listener("ingress", "mapping", self.config.id,
                                             f"{rule.listen.host}:{rule.listen.port}")

            async def map_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                                  rule: MappingRule = rule, listener: Listener = listener) -> None:
                await self._tracked(self._serve_mapping(reader, writer, rule, listener))

            self.servers.append(await asyncio.start_server(map_handler, rule.listen.host, rule.listen.port,
                                                           backlog=1024))
        log.info("gateway.ingress.listening", id=self.config.id, ports=self.ports, alpn=self.alpn)

    async def _tracked(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        try:
            await coro
        finally:
            self.tasks.discard(task)

    async def stop(self) -> None:
        for server in self.servers:
            server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for server in self.servers:
            await server.wait_closed()
        self.servers.clear()
        if self.ohttp is not None:
            await self.ohttp.close()
        if self.pool is not None:
            await self.pool.close()
        if self.verifier is not None:
            await self.verifier.close()

    def _protected(self, host: str, port: int) -> bool:
        filters = self.config.http_proxy.dst_filters if self.config.http_proxy else ()
        return not filters or any(_matches(f, host, port) for f in filters)

    async def _upstream(self, host: str, port: int, listener: Listener, peer: object,
                        request: RequestInfo | None = None) -> Streams | str:
        """Connected (and verified) upstream streams, or the refusal reason."""
        try:
            if self.pool is not None:
                key = PoolKey(host, port)
                if self.rewriter is not None:
                    assert request is not None
                    key = PoolKey(host, port, request.authority, self.rewriter.rewrite(request.path))
                return await self.pool.open_stream(key)
            return await ratls_connect(host, port, alpn=self.alpn, verifier=self.verifier)
        except (VerificationFailed, CertFormatError, GatewayError, CaiError) as exc:
            listener.cx_failed.inc()
            self.metrics.attestation.labels(side="ingress", result="rejected").inc()
            log.warning("gateway.peer.rejected", side="ingress", id=self.config.id, target=f"{host}:{port}",
                        client=str(peer), reason=str(exc)[:500])
            return str(exc)

    async def _serve_mapping(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, rule: MappingRule,
                             listener: Listener) -> None:
        listener.cx_total.inc()
        listener.cx_active.inc()
        try:
            if self.ohttp is not None:
                await self._serve_ohttp(reader, writer, None, f"{rule.target.host}:{rule.target.port}", listener)
                return
            early, info = b"", None
            if self.rewriter is not None:
                first = await self._first_request(reader, writer, listener)
                if first is None:
                    return
                early, info = first
            upstream = await self._upstream(rule.target.host, rule.target.port, listener,
                                            writer.get_extra_info("peername"), info)
            if isinstance(upstream, str):
                await close_writer(writer)
                return
            if early:
                upstream[1].write(early)
            await relay((reader, writer), upstream, on_rx=listener.rx_bytes.inc, on_tx=listener.tx_bytes.inc)
        finally:
            listener.cx_active.dec()

    async def _serve_proxy(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                           listener: Listener) -> None:
        listener.cx_total.inc()
        listener.cx_active.inc()
        peer = writer.get_extra_info("peername")
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
                request = parse_proxy_request(head)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError):
                listener.cx_failed.inc()
                await close_writer(writer)
                return
            except ProxyRequestError as exc:
                listener.cx_failed.inc()
                await _respond(writer, 400, "Bad Request", str(exc))
                return
            if self.ohttp is not None and self._protected(request.host, request.port):
                if request.connect:
                    listener.cx_failed.inc()
                    await _respond(writer, 501, "Not Implemented", "CONNECT is not available in OHTTP mode: send "
                                   "plain http:// requests through this proxy")
                    return
                await self._serve_ohttp(reader, writer, head, f"{request.host}:{request.port}", listener)
                return
            early, answered = b"", False
            if self._protected(request.host, request.port):
                info = None
                if self.rewriter is not None:  # encap_in_http (2.2.4): the outer POST is named after the request
                    if request.connect:
                        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        answered = True
                        first = await self._first_request(reader, writer, listener)
                        if first is None:
                            return
                        early, info = first
                    else:
                        info = _origin_info(request)
                upstream = await self._upstream(request.host, request.port, listener, peer, info)
                if isinstance(upstream, str):
                    # after a CONNECT 200 the client speaks HTTP inside the tunnel: it reads this answer too
                    await _respond(writer, 502, "Bad Gateway", "TEE verification failed: " + upstream)
                    return
                self.metrics.attestation.labels(side="ingress", result="verified").inc()
            else:
                try:
                    upstream = await asyncio.wait_for(asyncio.open_connection(request.host, request.port),
                                                      CONNECT_TIMEOUT)
                except (OSError, TimeoutError) as exc:
                    listener.cx_failed.inc()
                    await _respond(writer, 502, "Bad Gateway", f"cannot connect: {type(exc).__name__}")
                    return
            if request.connect:
                if not answered:
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                upstream[1].write(request.origin_form)
            if early:
                upstream[1].write(early)
            target = f"{request.host}:{request.port}"

            async def no_reply() -> None:
                # TNG answers 400 "Failed to send http request to upstream" here; 502 says whose fault it is.
                listener.cx_failed.inc()
                log.warning("gateway.ingress.no_reply", id=self.config.id, target=target, client=str(peer),
                            reason="the upstream closed the connection without sending a response")
                await _respond(writer, 502, "Bad Gateway", f"{target} closed the connection without sending a "
                               "response; if it is a TEE gateway, its backend (the application) is down or refused "
                               "the connection: check the application and the gateway's log there")

            await relay((reader, writer), upstream, on_rx=listener.rx_bytes.inc, on_tx=listener.tx_bytes.inc,
                        on_no_reply=None if request.connect else no_reply)
        finally:
            listener.cx_active.dec()


    async def _serve_ohttp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes | None,
                           target: str, listener: Listener) -> None:
        """One HTTP/1.1 request through the OHTTP tunnel; the answer is streamed back chunked."""
        assert self.ohttp is not None
        try:
            if head is None:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
            origin = parse_origin_request(head)
            fields = dict(origin.headers)
            if "transfer-encoding" in fields:
                raise ProxyRequestError("chunked request bodies are not supported in OHTTP mode; send "
                                        "Content-Length")
            length = int(fields.get("content-length", "0"))
            if not 0 <= length <= MAX_OHTTP_BODY:
                raise ProxyRequestError("request body is too large")
            body = await reader.readexactly(length) if length else b""
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ConnectionError, ValueError) \
                as exc:
            listener.cx_failed.inc()
            await _respond(writer, 400, "Bad Request", f"cannot read the request: {exc}"[:200])
            return
        headers = [(k, v) for k, v in origin.headers if k not in _HOP_BY_HOP]
        inner = bhttp.Request(origin.method, "http", fields.get("host", target), origin.path, headers, body)
        listener.rx_bytes.inc(len(head) + len(body))
        started = False
        try:
            async for item in self.ohttp.request(target, inner):
                if isinstance(item, tuple):
                    status, resp_headers = item
                    lines = [f"HTTP/1.1 {status} {_phrase(status)}".encode()]
                    lines += [f"{k}: {v}".encode("latin-1") for k, v in resp_headers if k not in _HOP_BY_HOP]
                    lines += [b"transfer-encoding: chunked", b"connection: close"]
                    writer.write(b"\r\n".join(lines) + b"\r\n\r\n")
                    started = True
                    self.metrics.attestation.labels(side="ingress", result="verified").inc()
                elif item:
                    writer.write(b"%x\r\n%s\r\n" % (len(item), item))
                    listener.tx_bytes.inc(len(item))
                    await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (VerificationFailed, CertFormatError, GatewayError, CaiError) as exc:
            listener.cx_failed.inc()
            self.metrics.attestation.labels(side="ingress", result="rejected").inc()
            log.warning("gateway.peer.rejected", side="ingress", id=self.config.id, target=target,
                        reason=str(exc)[:500])
            if not started:
                await _respond(writer, 502, "Bad Gateway", "TEE verification failed: " + str(exc))
                return
        except (ConnectionError, OSError):
            pass
        await close_writer(writer)


    async def _first_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                             listener: Listener) -> tuple[bytes, RequestInfo] | None:
        """Buffer the client's first request head (kept local) to learn its authority and path."""
        data = b""
        try:
            while True:
                more = await asyncio.wait_for(reader.read(65536), HEAD_TIMEOUT)
                if not more:
                    raise ConnectionResetError("client closed before its first request")
                data += more
                info = inspect_request(data)
                if info is not None:
                    return data, info
        except InspectError as exc:
            listener.cx_failed.inc()
            await _respond(writer, 400, "Bad Request", f"encap_in_http (TNG 2.2.4) needs a plain HTTP request "
                           f"inside the connection: {exc}")
        except (TimeoutError, ConnectionError, OSError):
            listener.cx_failed.inc()
            await close_writer(writer)
        return None


def _origin_info(request: ProxyRequest) -> RequestInfo:
    """Authority and path of an absolute-form proxy request (its Host header, else the target)."""
    try:
        info = inspect_request(request.origin_form)
    except InspectError:
        info = None
    if info is not None:
        return info
    path = request.origin_form.split(b" ", 2)[1].decode("ascii", "replace").split("?", 1)[0]
    return RequestInfo("http1", f"{request.host}:{request.port}", path)


def _phrase(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Status"


async def _respond(writer: asyncio.StreamWriter, status: int, phrase: str, message: str) -> None:
    body = (message.replace("\r", " ").replace("\n", " ")[:1000] + "\n").encode("utf-8", "replace")
    header = message.encode("ascii", "replace").replace(b"\r", b" ").replace(b"\n", b" ")[:300]
    writer.write(b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
                 b"x-cai-gateway-error: %s\r\nconnection: close\r\n\r\n" % (status, phrase.encode(), len(body), header)
                 + body)
    try:
        await writer.drain()
    except (ConnectionError, OSError):
        pass
    await close_writer(writer)


__all__ = ["MAX_HEAD", "Ingress", "client_context", "ratls_connect"]
