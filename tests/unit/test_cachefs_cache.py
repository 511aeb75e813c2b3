"""Ciphertext cache: the pure chunk layout and sidecar codec, and the cache shell over a fake source."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.health import Metrics
from agents.retry import Backoff
from cachefs.cache import (
    GOCRYPTFS_BLOCK,
    GOCRYPTFS_HEADER,
    CachedSource,
    CacheRecordError,
    ChunkLayout,
    ChunkRecord,
    decode_record,
    encode_record,
)
from cachefs.sources.base import CiphertextSource, SourceEntry, SourceError

layouts = st.builds(
    ChunkLayout,
    header=st.sampled_from([0, 18, 100]),
    block=st.sampled_from([97, 4128]),
    blocks_per_chunk=st.integers(1, 64),
)


# -- layout ----------------------------------------------------------------------------------------


def test_default_layout_is_gocryptfs_aligned() -> None:
    layout = ChunkLayout()
    assert layout.chunk_bytes == 1024 * 4128 == 4_227_072
    # Chunk k >= 1 starts exactly on a gocryptfs block boundary (18-byte header + whole blocks).
    for k in range(1, 5):
        start, _ = layout.span(k, 10**9)
        assert (start - GOCRYPTFS_HEADER) % GOCRYPTFS_BLOCK == 0
    # A 4 MiB-aligned plaintext read maps onto exactly one chunk.
    block = 1024 * 3
    c_start = GOCRYPTFS_HEADER + block * GOCRYPTFS_BLOCK
    assert list(layout.chunks_for(c_start, 1024 * GOCRYPTFS_BLOCK, 10**9)) == [3]


@settings(deadline=None)
@given(layouts, st.integers(0, 300_000))
def test_spans_partition_the_object(layout: ChunkLayout, size: int) -> None:
    count = layout.count(size)
    position = 0
    for index in range(count):
        start, end = layout.span(index, size)
        assert start == position and end > start
        assert layout.index_of(start) == index and layout.index_of(end - 1) == index
        if index > 0:
            assert (start - layout.header) % layout.block == 0
        position = end
    assert position == size
    with pytest.raises(ValueError):
        layout.span(count, size)


@settings(deadline=None)
@given(layouts, st.integers(1, 300_000), st.integers(0, 300_000), st.integers(0, 300_000))
def test_chunks_for_covers_exactly_the_range(layout: ChunkLayout, size: int, offset: int, length: int) -> None:
    chunks = layout.chunks_for(offset, length, size)
    end = min(offset + length, size)
    if end <= offset:
        assert len(chunks) == 0
        return
    covered = [layout.span(i, size) for i in chunks]
    assert covered[0][0] <= offset < covered[0][1]
    assert covered[-1][0] < end <= covered[-1][1]


def test_layout_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        ChunkLayout(blocks_per_chunk=0)
    with pytest.raises(ValueError):
        ChunkLayout(block=4128, blocks_per_chunk=1 << 20)


# -- sidecar records ---------------------------------------------------------------------------------

records = st.builds(
    lambda size, etag, present: ChunkRecord(
        path="dir/" + "x" * (size % 7 + 1),
        size=size,
        etag=etag,
        layout=ChunkLayout(blocks_per_chunk=2),
        present=frozenset(i for i in present if i < ChunkLayout(blocks_per_chunk=2).count(size)),
    ),
    st.integers(0, 100_000),
    st.none() | st.text(max_size=40),
    st.sets(st.integers(0, 20)),
)


@given(records)
def test_record_round_trips(record: ChunkRecord) -> None:
    assert decode_record(encode_record(record)) == record


@given(st.binary(max_size=400))
def test_random_bytes_give_only_record_errors(data: bytes) -> None:
    try:
        decode_record(data)
    except CacheRecordError:
        pass


_VALID = json.loads(encode_record(ChunkRecord("a/b", 20_000, '"e"', ChunkLayout(blocks_per_chunk=2),
                                               frozenset({0, 2}))))
_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=300)
@given(st.sampled_from(sorted(_VALID)), _JSON_VALUES, st.sampled_from(["layout", "chunks", None]))
def test_mutated_records_give_only_record_errors(key: str, value: object, nested: str | None) -> None:
    doc = json.loads(json.dumps(_VALID))
    if nested == "layout" and isinstance(value, str | int) and not isinstance(value, bool):
        doc["layout"] = dict(doc["layout"])
        doc["layout"][str(value)] = value
    elif nested == "chunks":
        doc["chunks"] = [*doc["chunks"], value]
    else:
        doc[key] = value
    try:
        record = decode_record(json.dumps(doc).encode())
    except CacheRecordError:
        return
    # Whatever decodes must be self-consistent.
    assert all(0 <= i < record.layout.count(record.size) for i in record.present)


def test_record_chunks_are_compact_runs() -> None:
    layout = ChunkLayout(blocks_per_chunk=2)
    record = ChunkRecord("a/b", 200_000, '"e"', layout, frozenset({0, 1, 2, 5, 7, 8}))
    assert json.loads(encode_record(record))["chunks"] == [[0, 2], [5, 5], [7, 8]]


@pytest.mark.parametrize(("chunks", "match"), [
    ([[0, 99]], "chunk 99"),
    ([[2, 1]], "ascending"),
    ([[0, 1], [1, 2]], "ascending"),
    ([[0, 1], [2, 2]], "not adjacent"),
    ([[0]], "pairs"),
    ({"0": "x"}, "list"),
    ([[True, 1]], "integer"),
])
def test_record_rejects_bad_runs(chunks: object, match: str) -> None:
    doc = json.loads(json.dumps(_VALID))
    doc["chunks"] = chunks
    with pytest.raises(CacheRecordError, match=match):
        decode_record(json.dumps(doc).encode())


# -- the shell over an in-memory source ------------------------------------------------------------


class MemorySource(CiphertextSource):
    """A fake source that counts reads and can misbehave on request."""

    name = "memory://volume"

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.reads: list[tuple[str, int, int]] = []
        self.short_next = 0
        self.gate: asyncio.Event | None = None

    async def list_tree(self) -> list[SourceEntry]:
        return [SourceEntry(p, "file", len(d), etag=f"v-{hash(d)}") for p, d in sorted(self.files.items())]

    async def read(self, path: str, offset: int, length: int) -> bytes:
        self.reads.append((path, offset, length))
        if self.gate is not None:
            await self.gate.wait()
        data = self.files[path][offset : offset + length]
        if self.short_next:
            self.short_next -= 1
            return data[: len(data) // 2]
        return data


LAYOUT = ChunkLayout(blocks_per_chunk=4)  # 16 530-byte chunks keep the fake fast


def make_cache(source: CiphertextSource, tmp_path: Path, **kwargs: object) -> CachedSource:
    kwargs.setdefault("metrics", Metrics())
    return CachedSource(
        source,
        tmp_path / "cache",
        layout=LAYOUT,
        backoff=Backoff(initial=0, maximum=0, jitter=0, attempts=4),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_concurrent_reads_of_one_chunk_fetch_it_once(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    source = MemorySource({"f": data})
    source.gate = asyncio.Event()
    cache = make_cache(source, tmp_path)
    await cache.list_tree()
    readers = [asyncio.ensure_future(cache.read("f", 20_000 + i, 100)) for i in range(5)]
    await asyncio.sleep(0)
    source.gate.set()
    results = await asyncio.gather(*readers)
    assert results == [data[20_000 + i : 20_100 + i] for i in range(5)]
    assert len(source.reads) == 1
    await cache.close()


async def test_short_body_is_retried_and_never_cached(tmp_path: Path) -> None:
    data = os.urandom(50_000)
    source = MemorySource({"f": data})
    source.short_next = 2
    cache = make_cache(source, tmp_path)
    await cache.list_tree()
    assert await cache.read("f", 0, 50_000) == data
    assert len(source.reads) == LAYOUT.count(len(data)) + 2
    await cache.close()


async def test_reads_across_chunks_and_eof(tmp_path: Path) -> None:
    data = os.urandom(70_001)
    source = MemorySource({"f": data, "empty": b""})
    cache = make_cache(source, tmp_path)
    await cache.list_tree()
    for offset, length in [(0, 1), (16_540, 40_000), (70_000, 10), (70_001, 5), (0, 70_001), (123, 0)]:
        assert await cache.read("f", offset, length) == data[offset : offset + length]
    assert await cache.read_all("empty") == b""
    assert await cache.read_all("f") == data
    with pytest.raises(SourceError):
        await cache.read("f", -1, 5)
    await cache.close()


async def test_cache_dir_is_private_and_holds_only_source_bytes(tmp_path: Path) -> None:
    data = os.urandom(40_000)
    source = MemorySource({"a/f": data})
    cache = make_cache(source, tmp_path)
    await cache.list_tree()
    await cache.download_all()
    await cache.close()
    root = tmp_path / "cache"
    assert (root.stat().st_mode & 0o777) == 0o700
    (volume,) = root.iterdir()
    assert (volume.stat().st_mode & 0o777) == 0o700
    data_files = list(volume.glob("*.data"))
    assert len(data_files) == 1 and data_files[0].read_bytes() == data


async def test_restart_reuses_chunks_and_refetches_lost_ones(tmp_path: Path) -> None:
    data = os.urandom(200_000)
    source = MemorySource({"f": data})
    cache = make_cache(source, tmp_path)
    await cache.list_tree()
    await cache.download_all()
    await cache.close()
    fetched_first = len(source.reads)

    again = make_cache(source, tmp_path)
    await again.list_tree()
    assert again.complete and await again.read_all("f") == data
    assert len(source.reads) == fetched_first  # everything came from the cache
    await again.close()

    # A crash lost the tail of the data file's writes: they come back as a hole (the record
    # still names those chunks). Only the chunks touching the hole are fetched again.
    (data_file,) = (tmp_path / "cache").glob("*/*.data")
    hole_at = 150_000
    with open(data_file, "r+b") as f:
        f.truncate(hole_at - hole_at % 4096)
        f.truncate(len(data))
    metrics = Metrics()
    third = make_cache(source, tmp_path, metrics=metrics)
    await third.list_tree()
    assert not third.complete
    assert await third.read_all("f") == data
    refetched = {offset for _, offset, _ in source.reads[fetched_first:]}
    expected = {LAYOUT.span(i, len(data))[0] for i in range(LAYOUT.index_of(hole_at - hole_at % 4096),
                                                          LAYOUT.count(len(data)))}
    assert refetched == expected
    assert 'cachefs_cache_errors_total{kind="lost"}' in metrics.render()[0].decode()
    await third.close()


async def test_changed_object_discards_its_cache(tmp_path: Path) -> None:
    source = MemorySource({"f": os.urandom(30_000), "g": os.urandom(30_000)})
    cache = make_cache(source, tmp_path)
    await cache.list_tree()
    await cache.download_all()
    await cache.close()
    source.files["f"] = os.urandom(30_000)
    source.reads.clear()
    again = make_cache(source, tmp_path)
    await again.list_tree()
    assert await again.read_all("f") == source.files["f"]
    assert await again.read_all("g") == source.files["g"]
    assert {path for path, _, _ in source.reads} == {"f"}
    await again.close()


async def test_persistent_source_failure_surfaces_as_source_error(tmp_path: Path) -> None:
    class Broken(MemorySource):
        async def read(self, path: str, offset: int, length: int) -> bytes:
            self.reads.append((path, offset, length))
            err = SourceError(f"GET {path} failed")
            err.transient = True  # type: ignore[attr-defined]
            raise err

    source = Broken({"f": b"x" * 1000})
    cache = make_cache(source, tmp_path)
    await cache.list_tree()
    with pytest.raises(SourceError, match="GET f failed"):
        await cache.read("f", 0, 10)
    assert len(source.reads) == 4  # bounded: Backoff.attempts
    await cache.close()


# -- the streamed background fill ---------------------------------------------------------------------


class StreamingSource(MemorySource):
    """A fake with ``stream``: hands out each range in pieces of the sizes given (cycled)."""

    def __init__(self, files: dict[str, bytes], pieces: list[int], cut_after: int | None = None) -> None:
        super().__init__(files)
        self.pieces = pieces
        self.cut_after = cut_after  # cut the first stream of "f" after this many bytes
        self.cut_at: int | None = None
        self.streams: list[tuple[str, int, int]] = []

    async def stream(self, path: str, offset: int, length: int, *, piece_size: int = 0) -> AsyncIterator[bytes]:
        self.streams.append((path, offset, length))
        data = self.files[path][offset : offset + length]
        pos, n = 0, 0
        while pos < len(data):
            if path == "f" and self.cut_after is not None and pos >= self.cut_after:
                self.cut_after, self.cut_at = None, offset + pos
                err = SourceError(f"stream of {path} cut")
                err.transient = True  # type: ignore[attr-defined]
                raise err
            size = self.pieces[n % len(self.pieces)]
            yield data[pos : pos + size]
            pos, n = pos + size, n + 1
            await asyncio.sleep(0)


async def _fill_and_check(source: StreamingSource, root: Path) -> None:
    cache = CachedSource(source, root, metrics=Metrics(), layout=LAYOUT,
                         backoff=Backoff(initial=0, maximum=0, jitter=0, attempts=4))
    await cache.list_tree()
    await cache.download_all()
    assert cache.complete
    for path, body in source.files.items():
        assert await cache.read_all(path) == body
    assert source.reads == []  # everything came from the background streams
    await cache.close()
    again = CachedSource(source, root, metrics=Metrics(), layout=LAYOUT)
    await again.list_tree()
    assert again.complete
    await again.close()


@settings(deadline=None, max_examples=40)
@given(st.lists(st.integers(1, 40_000), min_size=1, max_size=5), st.integers(0, 120_000),
       st.none() | st.integers(0, 100_000))
def test_stream_pieces_of_any_size_fill_the_cache_exactly(pieces: list[int], size: int, cut: int | None) -> None:
    source = StreamingSource({"f": os.urandom(size), "small": os.urandom(100)}, pieces, cut_after=cut)
    with tempfile.TemporaryDirectory() as root:
        asyncio.run(_fill_and_check(source, Path(root)))
    if source.cut_at is not None:
        # The retry resumed at the first chunk still missing (the one the cut fell into), not at
        # the start of the object: every complete chunk before the cut was kept.
        resumed = [offset for path, offset, _ in source.streams if path == "f"][1:]
        assert resumed == [LAYOUT.span(LAYOUT.index_of(source.cut_at), size)[0]]


async def test_one_stream_per_object_by_default(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    source = StreamingSource({"f": data}, [70_000])
    await _fill_and_check(source, tmp_path / "cache")
    assert source.streams == [("f", 0, len(data))]


async def test_max_fetch_bytes_splits_objects(tmp_path: Path) -> None:
    data = os.urandom(300_000)
    source = StreamingSource({"f": data}, [7_000])
    cache = make_cache(source, tmp_path, max_fetch_bytes=4 * LAYOUT.chunk_bytes)
    await cache.list_tree()
    await cache.download_all()
    assert await cache.read_all("f") == data
    starts = sorted(offset for _, offset, _ in source.streams)
    assert starts == [LAYOUT.span(i, len(data))[0] for i in range(0, LAYOUT.count(len(data)), 4)]
    await cache.close()


async def test_stream_longer_than_promised_is_refused_and_retried(tmp_path: Path) -> None:
    class Liar(StreamingSource):
        async def stream(self, path: str, offset: int, length: int, *, piece_size: int = 0) -> AsyncIterator[bytes]:
            first = not self.streams
            async for piece in super().stream(path, offset, length, piece_size=piece_size):
                yield piece + b"extra bytes" if first else piece

    data = os.urandom(50_000)
    source = Liar({"f": data}, [50_000])
    cache = make_cache(source, tmp_path)
    await cache.list_tree()
    await cache.download_all()
    assert await cache.read_all("f") == data
    assert len(source.streams) == 2
    await cache.close()
