"""HTTP/2 ``CONNECT`` multiplexing inside rats-tls (TNG ``rats_tls.multiplex: true``, ALPN ``h2``).

The ingress opens one TLS session and sends one ``CONNECT`` (``:authority tng.internal:443``) per
client connection; the egress answers ``200`` with ``server: tng`` and the stream's DATA frames are
the byte pipe to the backend (the target is not in the CONNECT: it is ``mapping.out`` or the
netfilter original destination). Any other method gets ``400``. Uses the sans-IO ``h2`` library;
flow control is honoured in both directions (window updates only for bytes the backend accepted, and
sends wait for the peer's window), which is what kept TNG's own implementation from growing without
bound (TNG PR #102).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from agents.logsetup import get_logger

log = get_logger("gateway.h2")

Backend = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
READ = 64 * 1024


class _Stream:
    def __init__(self) -> None:
        self.writer: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None
        self.window_open = asyncio.Event()


class H2ConnectServer:
    """Serves one TLS connection whose ALPN is ``h2``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, backend: Backend,
                 on_rx: Callable[[int], None], on_tx: Callable[[int], None]) -> None:
        self.reader, self.writer, self.backend = reader, writer, backend
        self.on_rx, self.on_tx = on_rx, on_tx
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.streams: dict[int, _Stream] = {}

    async def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def serve(self) -> None:
        self.conn.initiate_connection()
        await self._flush()
        try:
            while data := await self.reader.read(READ):
                try:
                    events = self.conn.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    log.warning("gateway.peer.rejected", side="egress", reason=f"HTTP/2 protocol error: {exc}"[:300])
                    break
                for event in events:
                    await self._handle(event)
                await self._flush()
        except (ConnectionError, OSError):
            pass
        finally:
            for stream in self.streams.values():
                if stream.task is not None:
                    stream.task.cancel()
                if stream.writer is not None:
                    stream.writer.close()
            with contextlib.suppress(Exception):
                self.writer.close()

    async def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            headers = dict(event.headers or [])
            if headers.get(":method") != "CONNECT":
                self.conn.send_headers(event.stream_id, [(":status", "400"), ("server", "tng")])
                self.conn.send_data(event.stream_id, b"Protocol Error: the method should be CONNECT", end_stream=True)
                return
            try:
                reader, writer = await self.backend()
            except (OSError, TimeoutError) as exc:
                log.error("gateway.egress.backend_unreachable", error=type(exc).__name__)
                self.conn.send_headers(event.stream_id, [(":status", "502"), ("server", "tng")], end_stream=True)
                return
            stream = _Stream()
            stream.writer = writer
            stream.window_open.set()
            self.streams[event.stream_id] = stream
            self.conn.send_headers(event.stream_id, [(":status", "200"), ("server", "tng")])
            stream.task = asyncio.create_task(self._downstream(event.stream_id, reader, stream))
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id)
            if stream is None or stream.writer is None:
                self.conn.reset_stream(event.stream_id)
                return
            stream.writer.write(event.data)
            self.on_rx(len(event.data))
            try:
                await stream.writer.drain()
            except (ConnectionError, OSError):
                self.conn.reset_stream(event.stream_id)
                return
            self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id)
            if stream is not None and stream.writer is not None and stream.writer.can_write_eof():
                with contextlib.suppress(OSError):
                    stream.writer.write_eof()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.pop(event.stream_id, None)
            if stream is not None:
                if stream.task is not None:
                    stream.task.cancel()
                if stream.writer is not None:
                    stream.writer.close()
        elif isinstance(event, h2.events.WindowUpdated):
            for sid, stream in self.streams.items():
                if event.stream_id in (0, sid):
                    stream.window_open.set()

    async def _downstream(self, stream_id: int, reader: asyncio.StreamReader, stream: _Stream) -> None:
        """Backend → client DATA frames, within the peer's flow-control windows."""
        try:
            while data := await reader.read(READ):
                while data:
                    window = min(self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size)
                    if window <= 0:
                        stream.window_open.clear()
                        await self._flush()
                        await stream.window_open.wait()
                        continue
                    piece, data = data[:window], data[window:]
                    self.conn.send_data(stream_id, piece)
                    self.on_tx(len(piece))
                    await self._flush()
            self.conn.end_stream(stream_id)
            await self._flush()
        except (ConnectionError, OSError, h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            pass
        finally:
            if stream.writer is not None:
                stream.writer.close()
