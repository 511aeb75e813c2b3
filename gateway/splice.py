"""Protocol-level splice between the rats-tls session and the backend: the egress's bulk data path.

Profiling the stream-based relay (``gateway.relay``) showed a fifth of the time in ``StreamReader``
copying every chunk into its buffer and out again, plus a task wake-up per chunk. Here each side is a
plain ``asyncio.Protocol``: a chunk the transport read (``recv`` of up to 256 KiB straight into a
new ``bytes``; for TLS one ``SSLObject.read``) is handed to the other transport's ``write`` as it
is, with no copy and no await. Backpressure is the transports' own: when one side's write buffer
passes its high-water mark, the other side stops reading until it drains, so memory per connection
stays bounded (``HIGH_WATER``) and a slow client slows the backend. Each chunk is forwarded as soon
as it arrives, so token streams (SSE) are never held back. TLS cannot half-close, so an EOF on
either side closes both, after the other side's pending bytes are flushed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gateway.relay import abort_with_reset

HIGH_WATER = 2 * 1024 * 1024


class _Side(asyncio.Protocol):
    def __init__(self, splice: Splice, count: Callable[[int], None]) -> None:
        self.splice = splice
        self.count = count
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.pending: list[bytes] = []
        self.lost = False
        self.error: Exception | None = None  # why the connection was lost, if it broke (a reset)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        self.count(len(data))
        peer = self.peer
        if peer is None or peer.transport is None:  # backend not connected yet: hold one chunk, stop reading
            self.pending.append(data)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        peer.transport.write(data)

    def eof_received(self) -> bool:
        self.splice.close()
        return False

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.peer.lost:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.peer.lost:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.error = exc
        self.splice.side_lost()


class Splice:
    """Two protocols, ``client`` (on the TLS transport) and ``backend``, joined back to back."""

    def __init__(self, *, on_rx: Callable[[int], None], on_tx: Callable[[int], None]) -> None:
        self.client = _Side(self, on_rx)
        self.backend = _Side(self, on_tx)
        self.client.peer, self.backend.peer = self.backend, self.client
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def attach_backend(self, transport: asyncio.Transport) -> None:
        """Called once the backend is connected (its protocol is ``self.backend``): flush held bytes."""
        if self.client.lost:  # the client left while the backend was connecting: nothing to relay
            transport.close()
            return
        for data in self.client.pending:
            transport.write(data)
        self.client.pending.clear()
        if self.client.transport is not None and not self.client.lost:
            self.client.transport.resume_reading()

    def close(self) -> None:
        for side in (self.client, self.backend):
            if side.transport is not None and not side.transport.is_closing():
                side.transport.close()  # flushes what is buffered first
        self.side_lost()

    def side_lost(self) -> None:
        if self.client.lost or self.backend.lost:
            broken = self.client.error is not None or self.backend.error is not None
            for side in (self.client, self.backend):
                if side.transport is not None and not side.transport.is_closing():
                    if broken:  # a reset is passed on as a reset: a clean end could pass for a complete reply
                        abort_with_reset(side.transport)
                    else:
                        side.transport.close()
        client_gone = self.client.lost or self.client.transport is None
        backend_gone = self.backend.lost or self.backend.transport is None
        if client_gone and backend_gone and not self.done.done():
            self.done.set_result(None)
            # Break the cycle splice <-> sides <-> transports now: left to the cyclic GC, a finished
            # connection that happened to be promoted to the oldest generation kept its TLS session
            # (SSLObject, 128 KiB SSLProtocol buffer) until a rare full collection; the soak measured
            # it as ~3.5 KiB of RSS growth per connection (benchmarks/SOAK.md).
            for side in (self.client, self.backend):
                side.peer, side.transport = None, None
                side.pending.clear()

    async def wait(self, timeout: float = 10.0) -> None:
        """Until both sides are closed (a side that never connected counts as closed)."""
        try:
            await asyncio.shield(self.done)
        except asyncio.CancelledError:
            for side in (self.client, self.backend):
                if side.transport is not None:
                    side.transport.abort()
            raise
