"""HTTP/2 streams as asyncio transports: one ``H2Session`` per HTTP/2 connection (either side).

TNG <= 2.2.4 nests two HTTP/2 layers around TLS (h2c ``POST`` → TLS → ``CONNECT`` streams) and a
multiplexing ingress opens ``CONNECT`` streams on one TLS session. Exposing every stream as an
``asyncio.Transport`` lets the standard machinery run on top unchanged: ``loop.start_tls`` turns an
h2c ``POST`` stream into a TLS session, a ``StreamReaderProtocol`` turns a ``CONNECT`` stream into
the (reader, writer) pair the relay uses. The sans-IO ``h2`` library does the framing.

Flow control both ways, so memory per stream stays bounded (TNG PR #102 was an unbounded buffer):
received DATA is acknowledged only once handed to the protocol, and not while the protocol has
paused reading; written bytes wait for the peer's window and the protocol is paused above the
write-buffer high-water mark.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Sequence
from typing import Any

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from agents.logsetup import get_logger

log = get_logger("gateway.h2")

READ_SIZE = 256 * 1024
STREAM_WINDOW = 4 * 1024 * 1024
CONNECTION_WINDOW = 16 * 1024 * 1024
MAX_FRAME = 256 * 1024
HIGH_WATER = 1024 * 1024
#: How many closed streams a session remembers (h2 keeps 65 536 by default: ~11 MiB per long-lived pooled
#: session and side, measured by the multiplex soak, benchmarks/SOAK.md). The record only tells a late frame
#: for a stream we reset (a stream error) from a protocol violation (a connection error); frames in flight
#: arrive within a round trip, and at most 1 000 streams are open at once, so a few thousand is plenty.
CLOSED_STREAMS_KEPT = 4096


class _H2Connection(h2.connection.H2Connection):
    """h2's connection with a bounded closed-stream record (see :data:`CLOSED_STREAMS_KEPT`)."""

    MAX_CLOSED_STREAMS = CLOSED_STREAMS_KEPT


Headers = list[tuple[str, str]]


class H2StreamTransport(asyncio.Transport):
    """One HTTP/2 stream as a byte transport (DATA frames both ways, END_STREAM as EOF)."""

    _start_tls_compatible = True

    def __init__(self, session: H2Session, stream_id: int) -> None:
        super().__init__()
        self._session, self.stream_id = session, stream_id
        self._protocol: asyncio.BaseProtocol | None = None
        self._incoming: collections.deque[tuple[bytes, int]] = collections.deque()
        self._remote_ended = False
        self._eof_delivered = False
        self._paused = False
        self._out = bytearray()
        self._eof_wanted = False
        self._local_ended = False
        self._closing = False
        self._lost = False
        self._writing_paused = False
        self._high, self._low = HIGH_WATER, HIGH_WATER // 4
        self.response: asyncio.Future[Headers] = asyncio.get_running_loop().create_future()

    # ---------------------------------------------------------------- BaseTransport
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name in ("peername", "sockname"):
            return self._session.writer.get_extra_info(name, default)
        if name == "h2_stream_id":
            return self.stream_id
        return default

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def attach(self, protocol: asyncio.BaseProtocol) -> None:
        """Set the protocol, call its ``connection_made`` and deliver what arrived meanwhile."""
        self._protocol = protocol
        protocol.connection_made(self)
        self._deliver()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._eof_wanted = True
        self._session.pump(self)  # sends what is buffered, then END_STREAM; connection_lost follows

    def abort(self) -> None:
        if not self._lost:
            self._closing = True
            self._session.reset(self.stream_id)
            self._connection_lost(None)

    # ---------------------------------------------------------------- ReadTransport
    def is_reading(self) -> bool:
        return not self._paused

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self._deliver()

    # ---------------------------------------------------------------- WriteTransport
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._eof_wanted or not data:
            return
        self._out += data
        self._session.pump(self)
        self._check_pause()

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def write_eof(self) -> None:
        self._eof_wanted = True
        self._session.pump(self)

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return len(self._out)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = HIGH_WATER if high is None else high
        self._low = self._high // 4 if low is None else low
        self._check_pause()

    # ---------------------------------------------------------------- session side
    def _check_pause(self) -> None:
        size = len(self._out)
        protocol = self._protocol
        if protocol is None or self._lost:
            return
        if not self._writing_paused and size > self._high:
            self._writing_paused = True
            protocol.pause_writing()
        elif self._writing_paused and size <= self._low:
            self._writing_paused = False
            protocol.resume_writing()

    def _take(self, limit: int) -> bytes:
        piece = bytes(self._out[:limit])
        del self._out[:limit]
        return piece

    def _received(self, data: bytes, flow: int) -> None:
        self._incoming.append((data, flow))
        self._deliver()

    def _ended(self) -> None:
        self._remote_ended = True
        self._deliver()

    def _deliver(self) -> None:
        protocol = self._protocol
        if protocol is None or self._lost:
            return
        acked = 0
        while self._incoming and not self._paused:
            data, flow = self._incoming.popleft()
            acked += flow
            if self._closing:
                continue
            if isinstance(protocol, asyncio.BufferedProtocol):
                view = memoryview(data)
                while view:
                    buf = protocol.get_buffer(len(view))
                    n = min(len(buf), len(view))
                    buf[:n] = view[:n]
                    protocol.buffer_updated(n)
                    view = view[n:]
            else:
                protocol.data_received(data)  # type: ignore[attr-defined]
        if acked:
            self._session.acknowledge(self.stream_id, acked)
        if self._remote_ended and not self._incoming and not self._eof_delivered and not self._closing:
            self._eof_delivered = True
            keep_open = protocol.eof_received()  # type: ignore[attr-defined]
            if not keep_open:
                self.close()
        self._maybe_finished()

    def _maybe_finished(self) -> None:
        """Both directions done (or our side closed and flushed): the transport is gone."""
        if self._lost or not self._local_ended:
            return
        if self._closing or (self._remote_ended and self._eof_delivered):
            self._closing = True
            asyncio.get_running_loop().call_soon(self._connection_lost, None)

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._incoming.clear()
        if self._protocol is not None:
            with contextlib.suppress(Exception):
                self._protocol.connection_lost(exc)
        if not self.response.done():
            self.response.set_exception(exc or ConnectionResetError("HTTP/2 stream closed"))
            if not self._session.client_side:
                # Only a client awaits response headers; on a server-side stream nobody ever retrieves this,
                # and asyncio would log every ended stream as "Future exception was never retrieved" (an error).
                self.response.exception()
        self._session.forget(self)


class H2Session:
    """One HTTP/2 connection over (reader, writer): client or server side."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, client_side: bool,
                 initial: bytes = b"", close_when_idle: bool = False) -> None:
        self.reader, self.writer = reader, writer
        self.client_side = client_side
        self.conn = _H2Connection(h2.config.H2Configuration(
            client_side=client_side, header_encoding="utf-8"))
        self.streams: dict[int, H2StreamTransport] = {}
        self.requests: asyncio.Queue[tuple[int, Headers] | None] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.goaway = False
        self.close_when_idle = close_when_idle
        self._initial = initial
        self._task: asyncio.Task[None] | None = None
        self.opened = 0

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        self.conn.initiate_connection()
        self.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                                   h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME})
        self.conn.increment_flow_control_window(CONNECTION_WINDOW)
        self.flush()
        self._task = asyncio.create_task(self._read_loop(), name="h2-session")

    @property
    def is_open(self) -> bool:
        return not self.closed.is_set() and not self.goaway

    @property
    def capacity(self) -> int:
        """How many more streams this side may open now."""
        limit = self.conn.remote_settings.max_concurrent_streams
        return max(0, min(limit, 1000) - self.conn.open_outbound_streams)

    async def close(self) -> None:
        if self._task is not None and not self.closed.is_set():
            with contextlib.suppress(Exception):
                self.conn.close_connection()
                self.flush()
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._shutdown(None)

    def _shutdown(self, exc: Exception | None) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        for transport in list(self.streams.values()):
            transport._connection_lost(exc or ConnectionResetError("HTTP/2 connection closed"))
        self.requests.put_nowait(None)
        self.writer.close()

    async def _read_loop(self) -> None:
        error: Exception | None = None
        try:
            data = self._initial
            self._initial = b""
            while True:
                if data:
                    for event in self.conn.receive_data(data):
                        self._handle(event)
                    self.flush()
                if self.closed.is_set():
                    break
                data = await self.reader.read(READ_SIZE)
                if not data:
                    break
        except h2.exceptions.ProtocolError as exc:
            error = ConnectionResetError(f"HTTP/2 protocol error: {exc}")
            log.warning("gateway.h2.protocol_error", side="client" if self.client_side else "server",
                        error=str(exc)[:300])
            with contextlib.suppress(Exception):
                self.flush()
        except (ConnectionError, OSError) as exc:
            error = exc
        finally:
            self._shutdown(error)

    # ---------------------------------------------------------------- events
    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            assert event.stream_id is not None
            self.streams[event.stream_id] = H2StreamTransport(self, event.stream_id)
            self.requests.put_nowait((event.stream_id, list(event.headers or [])))  # type: ignore[arg-type]
        elif isinstance(event, h2.events.ResponseReceived):
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None and not stream.response.done():
                stream.response.set_result(list(event.headers or []))  # type: ignore[arg-type]
        elif isinstance(event, h2.events.DataReceived):
            stream = self.streams.get(event.stream_id or 0)
            if stream is None:
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                return
            stream._received(event.data or b"", event.flow_controlled_length or 0)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None:
                stream._ended()
        elif isinstance(event, h2.events.StreamReset):
            stream = self.streams.get(event.stream_id or 0)
            if stream is not None:
                stream._connection_lost(ConnectionResetError(f"HTTP/2 stream reset by peer ({event.error_code})"))
        elif isinstance(event, h2.events.WindowUpdated):
            targets = list(self.streams.values()) if not event.stream_id else \
                [s for s in (self.streams.get(event.stream_id),) if s is not None]
            for stream in targets:
                self.pump(stream, flush=False)
        elif isinstance(event, h2.events.ConnectionTerminated):
            for stream in list(self.streams.values()):
                if stream.stream_id > (event.last_stream_id or 0):
                    stream._connection_lost(ConnectionResetError("HTTP/2 GOAWAY"))
            self.goaway = True

    # ---------------------------------------------------------------- sending
    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def pump(self, stream: H2StreamTransport, *, flush: bool = True) -> None:
        """Send as much of ``stream``'s buffer as the flow-control windows allow (then END_STREAM)."""
        if stream._local_ended or self.closed.is_set():
            return
        sid = stream.stream_id
        try:
            while stream._out:
                window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
                if window <= 0:
                    break
                self.conn.send_data(sid, stream._take(window))
            if stream._eof_wanted and not stream._out:
                self.conn.end_stream(sid)
                stream._local_ended = True
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            stream._out.clear()
            stream._local_ended = True
        if flush:
            self.flush()
        stream._check_pause()
        if stream._local_ended:
            stream._maybe_finished()

    def acknowledge(self, stream_id: int, flow: int) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            self.conn.acknowledge_received_data(flow, stream_id)
        self.flush()

    def reset(self, stream_id: int) -> None:
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            self.conn.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
        self.flush()

    def forget(self, stream: H2StreamTransport) -> None:
        self.streams.pop(stream.stream_id, None)
        if not stream._local_ended and not self.closed.is_set():
            self.reset(stream.stream_id)
        if self.close_when_idle and not self.streams and self.opened:
            asyncio.get_running_loop().create_task(self.close())

    # ---------------------------------------------------------------- client side
    async def open(self, headers: Sequence[tuple[str, str]]) -> tuple[int, H2StreamTransport]:
        """Send a request (no END_STREAM); return its status and the stream transport."""
        if not self.is_open:
            raise ConnectionResetError("HTTP/2 connection is closed")
        sid = self.conn.get_next_available_stream_id()
        stream = H2StreamTransport(self, sid)
        self.streams[sid] = stream
        self.opened += 1
        self.conn.send_headers(sid, list(headers))
        self.flush()
        response = await stream.response
        status = dict(response).get(":status", "0")
        return int(status) if status.isdigit() else 0, stream

    # ---------------------------------------------------------------- server side
    async def accept(self) -> tuple[int, Headers] | None:
        """The next request (stream id, headers), or ``None`` once the connection is closed."""
        if self.closed.is_set() and self.requests.empty():
            return None
        return await self.requests.get()

    def respond(self, stream_id: int, headers: Sequence[tuple[str, str]]) -> H2StreamTransport:
        self.opened += 1
        self.conn.send_headers(stream_id, list(headers))
        self.flush()
        return self.streams[stream_id]

    def reject(self, stream_id: int, status: int, body: bytes) -> None:
        stream = self.streams.pop(stream_id, None)
        with contextlib.suppress(h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError, KeyError):
            self.conn.send_headers(stream_id, [(":status", str(status)), ("server", "tng"),
                                               ("content-length", str(len(body)))])
            self.conn.send_data(stream_id, body, end_stream=True)
        if stream is not None:
            stream._lost = True
        self.flush()


async def stream_pair(transport: H2StreamTransport, *, limit: int = 2**20
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """(reader, writer) over a stream transport, as ``asyncio.open_connection`` gives for a socket."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=limit, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport.attach(protocol)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)


async def start_tls(transport: H2StreamTransport, context: Any, *, server_side: bool, timeout: float,
                    server_hostname: str | None = None) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """TLS over a stream transport; (reader, writer) of the decrypted byte stream."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport.set_protocol(protocol)
    tls = await loop.start_tls(transport, protocol, context, server_side=server_side,
                               server_hostname=server_hostname, ssl_handshake_timeout=timeout)
    if tls is None:
        raise ConnectionResetError("TLS over HTTP/2 stream closed during the handshake")
    protocol.connection_made(tls)
    return reader, asyncio.StreamWriter(tls, protocol, reader, loop)
