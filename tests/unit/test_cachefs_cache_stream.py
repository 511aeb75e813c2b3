"""Ciphertext cache: readers served from the in-flight background stream, and preallocated cache files.

The stream window (``cachefs.cache._StreamWindow``) hands a waiting reader the bytes the
background GET just received, before they are on disk; these tests pin that it returns exactly
the right bytes at any offset, never marks anything present early, falls back to the disk or
the network when it cannot serve, and that preallocating the cache file keeps the crash check
(``_lost_chunks``) able to see ranges that were never written.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from agents.health import Metrics
from agents.retry import Backoff
from cachefs.cache import _PREALLOCATE, CachedSource, ChunkLayout, _lost_chunks, _StreamSink, _StreamWindow
from cachefs.sources.base import CiphertextSource, SourceEntry

LAYOUT = ChunkLayout(blocks_per_chunk=4)  # 16 530-byte chunks keep the fake fast
SIZE = 200_000
PAUSE_AT = 50_000  # chunks 0-2 complete, chunk 3 (49 554..66 066) partly delivered


def metric(metrics: Metrics, line_start: str) -> float:
    for line in metrics.render()[0].decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- the window itself (pure) -------------------------------------------------------------------------


@settings(deadline=None, max_examples=200)
@given(
    st.integers(0, 5000),
    st.integers(1, 20_000),
    st.lists(st.integers(1, 3000), min_size=1, max_size=12),
    st.integers(1, 8000),
    st.lists(st.tuples(st.integers(0, 25_000), st.integers(1, 6000)), max_size=20),
)
def test_window_serves_exactly_what_arrived(
    start: int, run: int, pieces: list[int], limit: int, queries: list[tuple[int, int]]
) -> None:
    body = os.urandom(run + 3000)  # the source may send more than the run: never exposed
    window = _StreamWindow(start, start + run, limit)
    sent = 0
    for size in pieces:
        window.add(body[sent : sent + size])
        sent += size
        assert start <= window.base <= window.pos <= start + run
        assert window.pos == start + min(sent, run)
        assert window.held == window.pos - window.base
        assert window.held <= limit or len(window.pieces) == 1
        for q_off, q_len in queries:
            offset, end = start + q_off, start + q_off + q_len
            if window.holds(offset, end):
                assert end <= start + run
                assert window.copy(offset, end) == body[offset - start : end - start]


# -- readers and a paused background stream -------------------------------------------------------------


class PausingSource(CiphertextSource):
    """A fake with ``stream`` that delivers ``pause_at`` bytes of ``f`` in pieces, then waits for ``gate``."""

    name = "memory://paused"

    def __init__(self, data: bytes, piece: int = 7_777, pause_at: int = PAUSE_AT) -> None:
        self.data = data
        self.piece = piece
        self.pause_at = pause_at
        self.paused = asyncio.Event()
        self.gate = asyncio.Event()
        self.reads: list[tuple[int, int]] = []
        self.streams: list[tuple[int, int]] = []

    async def list_tree(self) -> list[SourceEntry]:
        return [SourceEntry("f", "file", len(self.data), etag="v1")]

    async def read(self, path: str, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return self.data[offset : offset + length]

    async def stream(self, path: str, offset: int, length: int, *, piece_size: int = 0) -> AsyncIterator[bytes]:
        self.streams.append((offset, length))
        pos, end = offset, min(offset + length, len(self.data))
        while pos < end:
            if pos >= self.pause_at and not self.gate.is_set():
                # Every piece before this point has been handed to the consumer already.
                self.paused.set()
                await self.gate.wait()
            step = min(self.piece, end - pos)
            if pos < self.pause_at < pos + step:
                step = self.pause_at - pos  # stop exactly at the pause point
            yield self.data[pos : pos + step]
            pos += step


def make_cache(source: CiphertextSource, tmp_path: Path, **kwargs: object) -> CachedSource:
    kwargs.setdefault("metrics", Metrics())
    return CachedSource(
        source,
        tmp_path / "cache",
        layout=LAYOUT,
        backoff=Backoff(initial=0, maximum=0, jitter=0, attempts=4),
        download_concurrency=1,
        readahead_chunks=8,
        **kwargs,  # type: ignore[arg-type]
    )


async def test_reader_is_served_from_the_inflight_stream_at_odd_offsets(tmp_path: Path) -> None:
    data = os.urandom(SIZE)
    source = PausingSource(data)
    metrics = Metrics()
    cache = make_cache(source, tmp_path, metrics=metrics, stream_patience=60.0)
    await cache.list_tree()
    download = cache.start_download()
    await source.paused.wait()

    c3_start = LAYOUT.span(3, SIZE)[0]
    served = 0
    # Inside the partly delivered chunk 3, across the chunk 2/3 boundary, across chunks 1..3,
    # a single byte, and the last byte that has arrived.
    for offset, length in ((c3_start + 3, 401), (40_001, 9_999), (20_011, 29_000), (c3_start, 1), (PAUSE_AT - 1, 1)):
        assert await cache.read("f", offset, length) == data[offset : offset + length]
        served += length
    assert cache.progress.present_bytes <= c3_start  # chunk 3 is not complete, so never marked present
    assert source.reads == []  # nothing was fetched on demand
    assert metric(metrics, 'cachefs_read_bytes_total{origin="stream"}') == served

    # A read reaching past what has arrived waits for the stream, then gets the exact bytes.
    pending = asyncio.ensure_future(cache.read("f", PAUSE_AT - 10, 5_000))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not pending.done()
    source.gate.set()
    assert await pending == data[PAUSE_AT - 10 : PAUSE_AT + 4_990]
    assert source.reads == []

    await download
    assert cache.complete and await cache.read_all("f") == data
    assert source.streams == [(0, SIZE)]
    await cache.close()


async def test_reader_behind_the_window_reads_the_disk(tmp_path: Path) -> None:
    data = os.urandom(SIZE)
    source = PausingSource(data)
    metrics = Metrics()
    cache = make_cache(source, tmp_path, metrics=metrics, stream_window_bytes=10_000, stream_patience=60.0)
    await cache.list_tree()
    download = cache.start_download()
    await source.paused.wait()
    # Byte 5 left the 10 000-byte window long ago; chunk 0 comes from the cache file instead.
    assert await cache.read("f", 5, 16_000) == data[5:16_005]
    assert metric(metrics, 'cachefs_read_bytes_total{origin="cache"}') == 16_000
    assert metric(metrics, 'cachefs_read_bytes_total{origin="stream"}') == 0
    # The newest bytes are still in the window.
    assert await cache.read("f", PAUSE_AT - 3_000, 2_999) == data[PAUSE_AT - 3_000 : PAUSE_AT - 1]
    assert metric(metrics, 'cachefs_read_bytes_total{origin="stream"}') == 2_999
    assert source.reads == []
    source.gate.set()
    await download
    assert await cache.read_all("f") == data
    await cache.close()


async def test_stalled_stream_falls_back_to_one_demand_fetch(tmp_path: Path) -> None:
    data = os.urandom(SIZE)
    source = PausingSource(data)
    metrics = Metrics()
    cache = make_cache(source, tmp_path, metrics=metrics, stream_patience=0.01)
    await cache.list_tree()
    download = cache.start_download()
    await source.paused.wait()
    # Past the pause: the window cannot serve it and the stream is not moving.
    assert await cache.read("f", PAUSE_AT + 101, 3_333) == data[PAUSE_AT + 101 : PAUSE_AT + 3_434]
    assert len(source.reads) == 1  # one chunk fetched on demand
    assert metric(metrics, "cachefs_stream_stalls_total") == 1  # waited once, not once per layer
    source.gate.set()
    await download
    assert cache.complete and await cache.read_all("f") == data
    await cache.close()


async def test_window_can_be_turned_off(tmp_path: Path) -> None:
    data = os.urandom(SIZE)
    source = PausingSource(data)
    metrics = Metrics()
    cache = make_cache(source, tmp_path, metrics=metrics, stream_window_bytes=0, stream_patience=0.01)
    await cache.list_tree()
    download = cache.start_download()
    await source.paused.wait()
    # Chunk 3 is only partly delivered and, without a window, not servable from the stream.
    c3_start = LAYOUT.span(3, SIZE)[0]
    assert await cache.read("f", c3_start + 3, 401) == data[c3_start + 3 : c3_start + 404]
    assert metric(metrics, 'cachefs_read_bytes_total{origin="stream"}') == 0
    source.gate.set()
    await download
    assert await cache.read_all("f") == data
    await cache.close()


# -- preallocation keeps the crash check honest ------------------------------------------------------------


def test_preallocated_unwritten_ranges_are_still_lost_chunks(tmp_path: Path) -> None:
    size = 100_000
    count = LAYOUT.count(size)
    path = tmp_path / "object.data"
    data = os.urandom(size)
    sink = _StreamSink(path, size, LAYOUT, 0, count - 1)
    try:
        written = 20_000  # chunk 0 complete, chunk 1 partial
        assert sink.feed(data[:written]) == [0]
        if sink._reserved is not None:  # preallocation is supported here: it really reserved space
            assert os.stat(path).st_blocks * 512 >= min(size, written + _PREALLOCATE) - 4096
        # Preallocated (unwritten) extents read as zeros but must still count as holes.
        assert _lost_chunks(path, LAYOUT, size, range(count)) == set(range(1, count))
        completed = sink.feed(data[written:])
        assert completed == list(range(1, count))
    finally:
        sink.close()
    assert _lost_chunks(path, LAYOUT, size, range(count)) == set()
    assert path.read_bytes() == data
