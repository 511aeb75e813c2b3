"""HTTP/2 ``CONNECT`` multiplexing inside rats-tls, egress side (TNG ``rats_tls.multiplex: true`` and
TNG <= 2.2.4, ALPN ``h2``).

The ingress opens one TLS session and sends one ``CONNECT`` (``:authority tng.internal:443``) per
client connection; the egress answers ``200`` with ``server: tng`` and the stream's DATA frames are
the byte pipe to the backend (the target is not in the CONNECT: it is ``mapping.out`` or the
netfilter original destination). Any other method gets ``400``; an unreachable backend ``502``.
Each stream is an asyncio transport (``gateway.h2_transport``) relayed like a plain connection, with
HTTP/2 flow control per stream (a slow backend stalls only its own stream, and memory stays bounded,
which is what TNG's own implementation lacked before its PR #102).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from agents.logsetup import get_logger
from gateway.h2_transport import H2Session, stream_pair
from gateway.relay import relay

log = get_logger("gateway.h2")

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
Backend = Callable[[], Awaitable[Streams]]
RESPONSE_OK = [(":status", "200"), ("server", "tng")]


class H2ConnectServer:
    """Serves one TLS connection whose ALPN is ``h2``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: Backend,
                 on_rx: Callable[[int], None], on_tx: Callable[[int], None]) -> None:
        self.session = H2Session(reader, writer, client_side=False)
        self.backend = backend
        self.on_rx, self.on_tx = on_rx, on_tx
        self.tasks: set[asyncio.Task[None]] = set()

    async def serve(self) -> None:
        await self.session.start()
        try:
            while (request := await self.session.accept()) is not None:
                stream_id, headers = request
                if dict(headers).get(":method") != "CONNECT":
                    self.session.reject(stream_id, 400, b"Protocol Error: the method should be CONNECT")
                    continue
                task = asyncio.create_task(self._stream(stream_id))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)
        finally:
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            await self.session.close()

    async def _stream(self, stream_id: int) -> None:
        try:
            upstream = await self.backend()
        except (OSError, TimeoutError) as exc:
            log.error("gateway.egress.backend_unreachable", error=type(exc).__name__)
            self.session.reject(stream_id, 502, b"backend unreachable")
            return
        client = await stream_pair(self.session.respond(stream_id, RESPONSE_OK))
        await relay(client, upstream, on_rx=self.on_rx, on_tx=self.on_tx)
