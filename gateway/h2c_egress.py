"""Egress side of TNG <= 2.2.4 ``decap_from_http``: rats-tls sessions arriving inside h2c ``POST`` streams.

Per accepted TCP connection (``mapping`` or ``netfilter`` capture): the first byte must come within
5 s (TNG's fail-fast for non-TNG clients); the first request is inspected, and a path matching
``direct_forward`` is passed to the backend in plaintext (health probes); any other HTTP/1 request
gets TNG's ``418`` explanation (TNG answers 418 only when ``direct_forward`` rules exist and
otherwise lets the h2c handshake fail; we always answer it, which only helps a lost client); an
HTTP/2 prior-knowledge connection is served as h2c. Every h2c stream must carry the ``tng`` header
(else ``400``), is answered ``200`` with ``server: tng``, and its body is a TLS 1.3 session (ALPN
``h2``, format-A certificate) that the egress hands to the same code as a direct rats-tls session
(HTTP/2 CONNECT streams to the backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Awaitable, Callable

from agents.logsetup import get_logger
from gateway.h2_transport import H2Session, H2StreamTransport, start_tls
from gateway.h2c_encap import (
    FIRST_BYTE_TIMEOUT,
    OUTER_RESPONSE_HEADERS,
    DirectForward,
    is_tng_request,
    teapot_response,
)
from gateway.http_inspect import H2_PREFACE, InspectError, RequestInfo, inspect_request, looks_like_http2
from gateway.relay import close_writer

log = get_logger("gateway.egress.h2c")

HEAD_TIMEOUT = 10.0
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
TlsHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
DirectHandler = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class DecapServer:
    """Serves one accepted TCP connection of a ``decap_from_http`` (compat 2.2.4) egress."""

    def __init__(self, *, context: Callable[[], ssl.SSLContext], direct_forward: DirectForward,
                 on_tls: TlsHandler, on_direct: DirectHandler, reject: Callable[[str], None],
                 handshake_timeout: float = 10.0) -> None:
        self.context = context
        self.direct = direct_forward
        self.on_tls, self.on_direct, self.reject = on_tls, on_direct, reject
        self.handshake_timeout = handshake_timeout
        self.streams = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            data = await asyncio.wait_for(reader.read(65536), FIRST_BYTE_TIMEOUT)
        except (TimeoutError, ConnectionError, OSError):
            self.reject(f"no first byte within {FIRST_BYTE_TIMEOUT:.0f} s (not a TNG client?)")
            await close_writer(writer)
            return
        try:
            info = await self._inspect(data, reader)
        except (InspectError, TimeoutError, ConnectionError, OSError) as exc:
            self.reject(f"not a TNG <= 2.2.4 h2c client: {exc or type(exc).__name__}"[:300])
            await close_writer(writer)
            return
        data, request = info
        if request is not None and self.direct and self.direct.matches(request):
            await self.on_direct(data, reader, writer)
            return
        if request is not None and request.protocol == "http1":
            self.reject(f"plain HTTP/1 request for {request.path[:100]!r} answered 418")
            writer.write(teapot_response())
            with contextlib.suppress(ConnectionError, OSError):
                await writer.drain()
            await close_writer(writer)
            return
        await self._serve_h2c(data, reader, writer)

    async def _inspect(self, data: bytes, reader: asyncio.StreamReader) -> tuple[bytes, RequestInfo | None]:
        """Read until the first request is known (or, without direct_forward rules, the h2c preface)."""
        while True:
            if not data:
                raise ConnectionResetError("client closed before sending a request")
            if not self.direct and looks_like_http2(data) and len(data) >= len(H2_PREFACE):
                return data, None
            request = inspect_request(data)
            if request is not None:
                return data, request
            more = await asyncio.wait_for(reader.read(65536), HEAD_TIMEOUT)
            if not more:
                raise ConnectionResetError("client closed inside its first request")
            data += more

    async def _serve_h2c(self, initial: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = H2Session(reader, writer, client_side=False, initial=initial)
        await session.start()
        tasks: set[asyncio.Task[None]] = set()
        try:
            while (request := await session.accept()) is not None:
                stream_id, headers = request
                if not is_tng_request(headers):
                    self.reject("h2c request without the 'tng' header")
                    session.reject(stream_id, 400, b"TNG protocol error: invalid request (no tng header)")
                    continue
                self.streams += 1
                task = asyncio.create_task(self._tls(session.respond(stream_id, OUTER_RESPONSE_HEADERS)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await session.close()

    async def _tls(self, transport: H2StreamTransport) -> None:
        try:
            reader, writer = await start_tls(transport, self.context(), server_side=True,
                                             timeout=self.handshake_timeout)
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as exc:
            self.reject(f"rats-tls handshake inside the h2c stream failed: {type(exc).__name__}: "
                        f"{getattr(exc, 'reason', None) or exc}"[:300])
            transport.abort()
            return
        await self.on_tls(reader, writer)
