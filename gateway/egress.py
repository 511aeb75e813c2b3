"""Egress (in the guest): terminate rats-tls from TNG >= 2.7 clients and forward plaintext to the app.

One listener per ``mapping`` rule, or one capture listener for ``netfilter`` (iptables REDIRECT of
the service port, original destination from ``SO_ORIGINAL_DST``, see ``gateway.netfilter``). Each
accepted connection gets the current attested certificate (``AttestedCertManager``), must complete a
TLS 1.3 handshake with ALPN ``rats-tls`` within the handshake timeout, and is then spliced to the
backend (``mapping.out`` or the original destination). A client that does not speak rats-tls (plain
HTTP, wrong ALPN such as a multiplexing ``h2`` client) is refused and logged as a rejected peer;
nothing reaches the backend. With ``rats_tls.multiplex`` (ALPN ``h2``) each HTTP/2 ``CONNECT`` stream
is one backend connection (``gateway.h2_connect``). With ``"compat": "2.2.4"`` the certificate uses
key binding format A and ALPN ``h2``; adding ``decap_from_http`` makes the listener accept the TLS
sessions inside h2c ``POST`` streams (``gateway.h2c_egress``).
"""

from __future__ import annotations

import asyncio
import ssl

from agents.http import connection_failure
from agents.logsetup import get_logger
from gateway import netfilter
from gateway.cert_manager import AttestedCertManager
from gateway.config import EgressConfig, MappingRule, Netfilter
from gateway.errors import GatewayConfigError
from gateway.h2_connect import H2ConnectServer
from gateway.h2c_egress import DecapServer
from gateway.h2c_encap import DirectForward
from gateway.metrics import GatewayMetrics, Listener
from gateway.relay import close_writer, relay
from gateway.splice import Splice

log = get_logger("gateway.egress")

HANDSHAKE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
NETFILTER_BASE_PORT = 40000


class Egress:
    """The listeners of one ``add_egress`` entry."""

    def __init__(self, config: EgressConfig, certs: AttestedCertManager, metrics: GatewayMetrics) -> None:
        if config.security.ohttp is not None:
            raise GatewayConfigError(f"add_egress[{config.id}].ohttp: the OHTTP egress is not implemented by "
                                     "this gateway yet", hint="use rats-tls ('rats_tls': {'multiplex': false})")
        self.config = config
        self.certs = certs
        self.metrics = metrics
        self.servers: list[asyncio.Server] = []
        self.tasks: set[asyncio.Task[None]] = set()
        self.netfilter_port: int | None = None
        self.direct_forward = DirectForward(config.direct_forward)
        if certs.alpn != config.security.alpn:
            raise GatewayConfigError(f"add_egress[{config.id}]: certificate manager offers ALPN {certs.alpn!r} but "
                                     f"the entry needs {config.security.alpn!r}")
        if certs.provider is not None and certs.binding != config.security.binding:
            raise GatewayConfigError(f"add_egress[{config.id}]: certificate binding format {certs.binding} but the "
                                     f"entry needs format {config.security.binding}")

    @property
    def ports(self) -> list[int]:
        return [s.sockets[0].getsockname()[1] for s in self.servers]

    async def start(self) -> None:
        if self.config.netfilter is not None:
            await self._start_netfilter(self.config.netfilter)
        for rule in self.config.mapping:
            listener = self.metrics.listener("egress", "mapping", self.config.id,
                                             f"{rule.listen.host}:{rule.listen.port}")

            def factory(rule: MappingRule = rule, listener: Listener = listener) -> _Accept:
                return _Accept(self, rule, listener)

            server = await asyncio.get_running_loop().create_server(factory, rule.listen.host, rule.listen.port,
                                                                    backlog=1024)
            self.servers.append(server)
            log.info("gateway.egress.listening", id=self.config.id, listen=f"{rule.listen.host}:"
                     f"{server.sockets[0].getsockname()[1]}", backend=f"{rule.target.host}:{rule.target.port}",
                     alpn=self.certs.alpn)

    async def _start_netfilter(self, nf: Netfilter) -> None:
        port = nf.listen_port or NETFILTER_BASE_PORT + self.config.id
        listener = self.metrics.listener("egress", "netfilter", self.config.id, f"0.0.0.0:{port}")

        def factory() -> _Accept:
            return _Accept(self, None, listener)

        server = await asyncio.get_running_loop().create_server(factory, "0.0.0.0", port, backlog=1024)  # noqa: S104
        self.servers.append(server)
        try:
            await asyncio.to_thread(netfilter.apply, self.config.id, nf, port)
        except BaseException:
            server.close()
            raise
        self.netfilter_port = port
        log.info("gateway.egress.listening", id=self.config.id, mode="netfilter", listen=port,
                 capture=[f"{d.host or '*'}:{d.port}" for d in nf.capture_dst], alpn=self.certs.alpn)

    async def stop(self) -> None:
        if self.netfilter_port is not None:
            await asyncio.to_thread(netfilter.remove, self.config.id)
            self.netfilter_port = None
        for server in self.servers:
            server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for server in self.servers:
            await server.wait_closed()
        self.servers.clear()

    def _backend_unreachable(self, target: tuple[str, int], exc: BaseException) -> None:
        """One line per refused connection: which backend, and why (the client only sees its tunnel close)."""
        log.error("gateway.egress.backend_unreachable", id=self.config.id, backend=f"{target[0]}:{target[1]}",
                  error=connection_failure(exc)[:300],
                  hint="is the application listening there? clients get 502 from their proxy until it is")

    def _reject(self, listener: Listener, peer: object, reason: str) -> None:
        listener.cx_failed.inc()
        log.warning("gateway.peer.rejected", side="egress", id=self.config.id, peer=str(peer), reason=reason)

    async def _serve(self, raw: asyncio.BaseTransport, rule: MappingRule | None, listener: Listener) -> None:
        listener.cx_total.inc()
        listener.cx_active.inc()
        peer = raw.get_extra_info("peername")
        loop = asyncio.get_running_loop()
        try:
            if rule is not None:
                target = (rule.target.host, rule.target.port)
            else:
                try:
                    target = netfilter.original_destination(raw.get_extra_info("socket"))
                except OSError:
                    self._reject(listener, peer, "connection was not redirected by netfilter (no original "
                                 "destination)")
                    raw.close()
                    return
                if target[1] == self.netfilter_port:
                    self._reject(listener, peer, "connection addressed to the capture listener itself")
                    raw.close()
                    return
            if self.config.security.h2c is not None:
                await self._serve_h2c(raw, target, listener, peer)
                return
            if self.certs.alpn == "rats-tls":
                await self._serve_spliced(raw, target, listener, peer)
                return
            reader = asyncio.StreamReader(limit=2**20)
            protocol = asyncio.StreamReaderProtocol(reader)
            tls = await self._handshake(raw, protocol, listener, peer)
            if tls is None:
                return
            protocol.connection_made(tls)
            writer = asyncio.StreamWriter(tls, protocol, reader, loop)
            await self._after_tls(reader, writer, target, listener, peer)
        finally:
            listener.cx_active.dec()

    async def _handshake(self, raw: asyncio.BaseTransport, protocol: asyncio.BaseProtocol, listener: Listener,
                         peer: object) -> asyncio.BaseTransport | None:
        """Server-side rats-tls handshake on ``raw``; a failure is logged as a rejected peer and closes it."""
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(raw, protocol, self.certs.context, server_side=True,  # type: ignore[arg-type]
                                       ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except (ssl.SSLError, ConnectionError, OSError, TimeoutError) as exc:
            if self.certs.stale:  # we aborted it: our evidence is too old, not the peer's fault
                listener.cx_failed.inc()  # the reason is logged by gateway.cert.expired (rate-limited)
            else:
                self._reject(listener, peer, f"rats-tls handshake failed: {type(exc).__name__}: "
                             f"{getattr(exc, 'reason', None) or exc}"[:300])
            raw.close()
            return None
        if tls is None:
            raw.close()
        return tls

    async def _serve_spliced(self, raw: asyncio.BaseTransport, target: tuple[str, int], listener: Listener,
                             peer: object) -> None:
        """Raw rats-tls (ALPN ``rats-tls``): TLS and backend transports spliced (``gateway.splice``)."""
        loop = asyncio.get_running_loop()
        splice = Splice(on_rx=listener.rx_bytes.inc, on_tx=listener.tx_bytes.inc)
        tls = await self._handshake(raw, splice.client, listener, peer)
        if tls is None:
            return
        splice.client.connection_made(tls)
        ssl_object = tls.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn != self.certs.alpn:
            self._reject(listener, peer, f"client did not negotiate ALPN {self.certs.alpn!r} (got {alpn!r}); "
                         "is it a TNG client of another generation (multiplex/h2)?")
            tls.close()
            return
        tls.pause_reading()  # until the backend is connected
        try:
            sock = None
            if self.config.netfilter is not None:
                # SO_MARK makes our own connection RETURN in the capture chain instead of looping back to us.
                sock = netfilter.marked_socket(self.config.netfilter.so_mark)
                try:
                    await asyncio.wait_for(loop.sock_connect(sock, target), CONNECT_TIMEOUT)
                except BaseException:
                    sock.close()
                    raise
                backend, _ = await loop.create_connection(lambda: splice.backend, sock=sock)
            else:
                backend, _ = await asyncio.wait_for(
                    loop.create_connection(lambda: splice.backend, target[0], target[1]), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            listener.cx_failed.inc()
            self._backend_unreachable(target, exc)
            tls.close()
            return
        splice.attach_backend(backend)  # type: ignore[arg-type]
        await splice.wait()
        if splice.backend.error is not None:
            listener.cx_failed.inc()
            log.warning("gateway.egress.backend_reset", id=self.config.id, backend=f"{target[0]}:{target[1]}",
                        error=connection_failure(splice.backend.error)[:300],
                        hint="the application broke the connection off; the client's connection was reset too")

    async def _serve_h2c(self, raw: asyncio.BaseTransport, target: tuple[str, int], listener: Listener,
                         peer: object) -> None:
        """TNG <= 2.2.4 ``decap_from_http``: TLS sessions inside h2c POST streams."""
        assert isinstance(raw, asyncio.Transport)
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**20)
        protocol = asyncio.StreamReaderProtocol(reader)
        raw.set_protocol(protocol)
        protocol.connection_made(raw)
        raw.resume_reading()
        writer = asyncio.StreamWriter(raw, protocol, reader, loop)

        async def on_tls(tls_reader: asyncio.StreamReader, tls_writer: asyncio.StreamWriter) -> None:
            await self._after_tls(tls_reader, tls_writer, target, listener, peer)

        async def on_direct(data: bytes, client_reader: asyncio.StreamReader,
                            client_writer: asyncio.StreamWriter) -> None:
            try:
                upstream = await asyncio.wait_for(self._connect_backend(target), CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as exc:
                listener.cx_failed.inc()
                self._backend_unreachable(target, exc)
                await close_writer(client_writer)
                return
            log.info("gateway.egress.direct_forward", id=self.config.id, peer=str(peer))
            upstream[1].write(data)
            listener.rx_bytes.inc(len(data))
            await relay((client_reader, client_writer), upstream, on_rx=listener.rx_bytes.inc,
                        on_tx=listener.tx_bytes.inc)

        await DecapServer(context=lambda: self.certs.context, direct_forward=self.direct_forward, on_tls=on_tls,
                          on_direct=on_direct, reject=lambda reason: self._reject(listener, peer, reason),
                          handshake_timeout=HANDSHAKE_TIMEOUT).serve(reader, writer)

    async def _after_tls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: tuple[str, int],
                         listener: Listener, peer: object) -> None:
        """A finished rats-tls handshake: check ALPN, then relay or serve HTTP/2 CONNECT streams."""
        ssl_object = writer.get_extra_info("ssl_object")
        alpn = ssl_object.selected_alpn_protocol() if ssl_object is not None else None
        if alpn != self.certs.alpn:
            self._reject(listener, peer, f"client did not negotiate ALPN {self.certs.alpn!r} (got {alpn!r}); "
                         "is it a TNG client of another generation (multiplex/h2)?")
            await close_writer(writer)
            return
        if alpn == "h2":  # rats_tls.multiplex: one HTTP/2 CONNECT stream per client connection
            await H2ConnectServer(reader, writer,
                                  lambda: asyncio.wait_for(self._connect_backend(target), CONNECT_TIMEOUT),
                                  on_rx=listener.rx_bytes.inc, on_tx=listener.tx_bytes.inc).serve()
            return
        try:
            upstream = await asyncio.wait_for(self._connect_backend(target), CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            listener.cx_failed.inc()
            self._backend_unreachable(target, exc)
            await close_writer(writer)
            return
        await relay((reader, writer), upstream, on_rx=listener.rx_bytes.inc, on_tx=listener.tx_bytes.inc)

    async def _connect_backend(self, target: tuple[str, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.config.netfilter is None:
            return await asyncio.open_connection(target[0], target[1])
        # SO_MARK makes our own connection RETURN in the capture chain instead of looping back to us.
        sock = netfilter.marked_socket(self.config.netfilter.so_mark)
        try:
            await asyncio.get_running_loop().sock_connect(sock, target)
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock)


class _Accept(asyncio.Protocol):
    """Accepts a TCP connection with reading paused, so the ClientHello stays in the kernel until the
    TLS layer (with the certificate current at this moment) takes over the transport."""

    def __init__(self, egress: Egress, rule: MappingRule | None, listener: Listener) -> None:
        self.egress, self.rule, self.listener = egress, rule, listener
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.pause_reading()
        self.task = asyncio.get_running_loop().create_task(self.egress._serve(transport, self.rule, self.listener))
        self.egress.tasks.add(self.task)
        self.task.add_done_callback(self.egress.tasks.discard)

    def connection_lost(self, exc: Exception | None) -> None:
        pass
