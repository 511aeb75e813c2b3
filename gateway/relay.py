"""Byte relay between two asyncio stream pairs, with backpressure and byte counters.

Large reads (256 KiB) keep per-call overhead low for bulk transfers; ``drain()`` after every write
bounds memory per connection (a slow client slows the backend instead of growing a buffer); each
chunk is written as soon as it arrives, so server-sent-event token streams are never held back.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

CHUNK = 256 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: Callable[[int], None]) -> None:
    try:
        while True:
            data = await reader.read(CHUNK)
            if not data:
                break
            writer.write(data)
            count(len(data))
            await writer.drain()
        if writer.can_write_eof():
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), 5)


async def relay(client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                *, on_rx: Callable[[int], None], on_tx: Callable[[int], None]) -> None:
    """Copy both directions until both are done (or one side fails), then close both writers.

    TLS transports cannot half-close, so when one direction ends on such a transport the whole
    connection ends with it: waiting for the other direction could hang forever.
    """
    up = asyncio.create_task(_pipe(client[0], upstream[1], on_rx))
    down = asyncio.create_task(_pipe(upstream[0], client[1], on_tx))
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
