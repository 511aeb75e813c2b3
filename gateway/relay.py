"""Byte relay between two asyncio stream pairs, with backpressure and byte counters.

Large reads (256 KiB) keep per-call overhead low for bulk transfers; ``drain()`` after every write
bounds memory per connection (a slow client slows the backend instead of growing a buffer); each
chunk is written as soon as it arrives, so server-sent-event token streams are never held back.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable

CHUNK = 256 * 1024


def abort_with_reset(transport: asyncio.BaseTransport) -> None:
    """Close ``transport`` with a TCP RST instead of a FIN (or a TLS close_notify).

    Why: when the side we copy from broke off (a backend reset mid-response), a clean end on the
    other side would let a client take a truncated close-delimited body for a complete one. The
    RST is the only end-of-stream that says "aborted" through every proxy hop.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: Callable[[int], None],
                on_empty: Callable[[], Awaitable[None]] | None = None) -> None:
    moved = 0
    while True:
        try:
            data = await reader.read(CHUNK)
        except (ConnectionError, OSError):
            if moved or on_empty is None:
                abort_with_reset(writer.transport)  # the source broke off: pass the abort on
                return
            data = b""
        if not data:
            break
        try:
            writer.write(data)
            count(len(data))
            moved += len(data)
            await writer.drain()
        except (ConnectionError, OSError):
            return
    if not moved and on_empty is not None:
        await on_empty()  # nothing came back at all: the caller answers in its own words
        return
    if writer.can_write_eof():
        with contextlib.suppress(OSError, RuntimeError):
            writer.write_eof()


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 5)


async def relay(client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                *, on_rx: Callable[[int], None], on_tx: Callable[[int], None],
                on_no_reply: Callable[[], Awaitable[None]] | None = None) -> None:
    """Copy both directions until both are done (or one side fails), then close both writers.

    TLS transports cannot half-close, so when one direction ends on such a transport the whole
    connection ends with it: waiting for the other direction could hang forever. If the upstream
    breaks off (a reset), the client's connection is reset too, never ended cleanly. If the
    upstream ends without sending a single byte and ``on_no_reply`` is given, it is awaited
    (with the client writer still open) instead, so a proxy can answer with an error.
    """
    up = asyncio.create_task(_pipe(client[0], upstream[1], on_rx))
    down = asyncio.create_task(_pipe(upstream[0], client[1], on_tx, on_no_reply))
    try:
        _, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
        half_close = client[1].can_write_eof() and upstream[1].can_write_eof()
        if pending and half_close:
            await asyncio.wait(pending)
    finally:
        for task in (up, down):
            task.cancel()
        await asyncio.gather(up, down, return_exceptions=True)
        await asyncio.gather(close_writer(client[1]), close_writer(upstream[1]))
