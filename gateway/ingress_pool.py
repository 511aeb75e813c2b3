"""Ingress side of the multiplexed framings: verified rats-tls sessions carrying HTTP/2 CONNECT streams.

Used for ``rats_tls.multiplex: true`` (TNG >= 2.7 with multiplex, ALPN ``h2``) and for
``"compat": "2.2.4"`` (TNG 2.0 … 2.2.4, always multiplexed, format-A certificates), optionally with
``encap_in_http`` (the TLS session itself runs inside an h2c ``POST`` stream, ``gateway.h2c_encap``).
As in TNG, one TLS session is pooled per key — the target endpoint, plus the outer authority and
path in ``encap_in_http`` mode — and each client connection becomes one ``CONNECT`` stream on it; a
new session is opened when the pooled one is closed or has no stream capacity left.

The peer is verified when its session is made, and the (cached) verdict is checked again before
every new stream, so a session whose attestation token has expired is re-verified before it
carries another byte. Nothing is sent inside the TLS session before the verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass

from agents.logsetup import get_logger
from gateway.errors import GatewayError, VerificationFailed
from gateway.h2_transport import H2Session, H2StreamTransport, start_tls, stream_pair
from gateway.h2c_encap import CONNECT_REQUEST_HEADERS, outer_request_headers
from gateway.verifier import PeerVerifier

log = get_logger("gateway.ingress.pool")

CONNECT_TIMEOUT = 15.0
SNI = "tng.internal"
Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def client_context(alpn: str) -> ssl.SSLContext:
    """TLS 1.3 client context; the peer's certificate is checked by the attestation path, not PKI."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([alpn])
    return ctx


@dataclass(frozen=True)
class PoolKey:
    host: str
    port: int
    outer_authority: str | None = None  # encap_in_http only
    outer_path: str | None = None


class _Session:
    """One verified TLS session and the HTTP/2 connection inside it."""

    def __init__(self, h2: H2Session, der: bytes) -> None:
        self.h2, self.der = h2, der


class TunnelPool:
    """Opens verified CONNECT streams, pooling the TLS sessions under them."""

    def __init__(self, verifier: PeerVerifier | None, *, encap_in_http: bool) -> None:
        self.verifier = verifier
        self.encap_in_http = encap_in_http
        self.context = client_context("h2")
        self.sessions: dict[PoolKey, list[_Session]] = {}
        self._locks: dict[PoolKey, asyncio.Lock] = {}
        self.sessions_made = 0

    async def open_stream(self, key: PoolKey) -> Streams:
        """A CONNECT stream to ``key``'s egress, on a verified session. Raises GatewayError subclasses."""
        session = await self._session(key)
        if self.verifier is not None:
            await self.verifier.verify_certificate(session.der)  # cached; re-asks the AS once expired
        try:
            status, transport = await asyncio.wait_for(session.h2.open(CONNECT_REQUEST_HEADERS), CONNECT_TIMEOUT)
        except (ConnectionError, OSError, TimeoutError) as exc:
            raise GatewayError(f"HTTP/2 CONNECT to {key.host}:{key.port} failed: {type(exc).__name__}: {exc}"
                               ) from None
        if status != 200:
            transport.abort()
            raise GatewayError(f"egress {key.host}:{key.port} answered {status} to HTTP/2 CONNECT",
                               hint="is the egress a TNG of the same generation (multiplex / compat)?")
        return await stream_pair(transport)

    async def _session(self, key: PoolKey) -> _Session:
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            live = [s for s in self.sessions.get(key, []) if s.h2.is_open]
            self.sessions[key] = live
            for session in live:
                if session.h2.capacity > 0:
                    return session
            session = await self._new_session(key)
            live.append(session)
            self.sessions_made += 1
            return session

    async def _new_session(self, key: PoolKey) -> _Session:
        where = f"{key.host}:{key.port}"
        try:
            reader, writer = await asyncio.wait_for(self._tls(key), CONNECT_TIMEOUT)
        except ssl.SSLError as exc:
            raise VerificationFailed(f"rats-tls handshake with {where} failed: {exc.reason or exc}") from None
        except (OSError, TimeoutError) as exc:
            raise GatewayError(f"cannot reach {where}: {type(exc).__name__}: {exc}"[:300]) from None
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
                raise VerificationFailed(f"{where} did not negotiate ALPN 'h2' (a TNG egress without multiplex "
                                         "or of another generation?)")
            der = ssl_object.getpeercert(binary_form=True)
            if self.verifier is not None:
                await self.verifier.verify_certificate(der)
            h2 = H2Session(reader, writer, client_side=True)
            await h2.start()
        except BaseException:
            writer.close()
            raise
        log.info("gateway.ingress.session", target=where, encap_in_http=self.encap_in_http)
        return _Session(h2, der or b"")

    async def _tls(self, key: PoolKey) -> Streams:
        if not self.encap_in_http:
            return await asyncio.open_connection(key.host, key.port, ssl=self.context, server_hostname=SNI)
        assert key.outer_authority is not None and key.outer_path is not None
        reader, writer = await asyncio.open_connection(key.host, key.port)
        outer = H2Session(reader, writer, client_side=True, close_when_idle=True)
        await outer.start()
        transport: H2StreamTransport | None = None
        try:
            status, transport = await outer.open(outer_request_headers(key.outer_authority, key.outer_path))
            if status != 200:
                raise GatewayError(f"egress {key.host}:{key.port} answered {status} to the h2c POST of "
                                   "encap_in_http", hint="is it a TNG <= 2.2.4 egress with decap_from_http?")
            return await start_tls(transport, self.context, server_side=False, timeout=CONNECT_TIMEOUT,
                                   server_hostname=SNI)
        except BaseException:
            if transport is not None:
                transport.abort()
            await outer.close()
            raise

    async def close(self) -> None:
        for sessions in self.sessions.values():
            for session in sessions:
                with contextlib.suppress(Exception):
                    await session.h2.close()
        self.sessions.clear()
