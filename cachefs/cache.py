"""An on-disk **ciphertext** cache in front of any :class:`CiphertextSource`, with lazy reads.

Why: a model is tens of GB in object storage. The mount must be usable before it has all arrived
(lazy mode), a restart must not download it again, and only ciphertext may ever touch the disk
(plaintext lives in guest RAM only). So each object is mirrored into a sparse file at identical
offsets, and a small JSON sidecar records which chunks are present together with the object's
size and ETag.

Layout (pure, :class:`ChunkLayout`): gocryptfs files are an 18-byte header followed by 4128-byte
blocks (16 IV + 4096 data + 16 tag). Chunk 0 is ``[0, 18 + N·4128)`` and chunk ``k ≥ 1`` is
``[18 + k·N·4128, 18 + (k+1)·N·4128)``, so **a block never straddles two fetches** and a
plaintext-aligned read of ``N·4096`` bytes touches exactly one chunk. The default N = 1024
(4 MiB of plaintext, 4 227 072 ciphertext bytes per ranged GET) follows the reference note: large
enough that request overhead is amortised, small enough that a lazy read waits for little. Other
objects (``gocryptfs.conf``, ``*.diriv``, ``*.name``) are just small single-chunk files.

Fetching: a read of a missing range starts its chunk fetches at once (**demand**, bounded by its
own semaphore), ahead of the **background** workers that walk the whole volume. Both share one
in-flight table, so a chunk is fetched once whoever asks first. A fetch is retried (bounded
backoff) when the source says the failure is transient or the body came back short; a chunk is
marked present only after its full bytes were written.

Background fill: by default ONE streamed GET per object (``max_fetch_bytes`` splits large
objects into several parallel ranged GETs for links where one connection is slower than the
link; S3 servers that re-read the object per range, like moto, get slower with it). The stream
is pumped by its own task into a small bounded queue so the socket is always being read, and
each piece is written by a worker thread at its offset, with no copy and no work on the loop.
The newest pieces also stay in a bounded in-memory window (:class:`_StreamWindow`): a reader of a
range the stream has received copies it from there at once instead of waiting for the write and
reading it back (the cold-read path), and the file is preallocated ahead of the writes
(:func:`_preallocate`), which makes the writes cheaper without hiding holes from the crash check.

Integrity: on restart a sidecar is reused only if the listing's size and ETag equal the recorded
ones (else that object's cache is discarded). A recorded chunk is reused only if its range of
the data file has no hole (:func:`_lost_chunks`: writes lost in a crash come back as holes);
gocryptfs' GCM tags authenticate every block on decryption.
Objects gone from the listing are deleted. Entries with no ETag are never reused across restarts.

Disk full (or any cache write error): logged once, counted, and the cache switches to
**pass-through**: present chunks are still served from disk, everything else is read from the
source directly; the background download stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
import tempfile
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents import jsonutil
from agents.health import Metrics
from agents.logsetup import get_logger
from agents.retry import Backoff, retry_call
from cachefs.progress import DownloadProgress
from cachefs.sources.base import CiphertextSource, SourceEntry, SourceError

__all__ = [
    "GOCRYPTFS_BLOCK",
    "GOCRYPTFS_HEADER",
    "CacheError",
    "CacheRecordError",
    "CachedSource",
    "ChunkLayout",
    "ChunkRecord",
    "ShortFetchError",
    "decode_record",
    "encode_record",
]

log = get_logger("cachefs.cache")

GOCRYPTFS_HEADER = 18
GOCRYPTFS_BLOCK = 4128
RECORD_FORMAT = "cai-cachefs-chunks"
RECORD_VERSION = 1
MAX_RECORD_BYTES = 64 << 20
MAX_OBJECT_SIZE = 1 << 50
MAX_ETAG = 1024
MAX_PATH = 4096
_INLINE_PREAD = 256 << 10
_PREALLOCATE = 32 << 20


class CacheError(SourceError):
    """The cache could not serve a read (the underlying source failed, or the cache is misused)."""


class ShortFetchError(CacheError):
    """The source returned fewer bytes than the listing promised; retrying may help."""

    transient = True


class CacheRecordError(CacheError):
    """A sidecar record is malformed; the cache for that object is discarded, never trusted."""


# -- pure: chunk layout and sidecar records ----------------------------------------------------


@dataclass(frozen=True)
class ChunkLayout:
    """Chunk boundaries aligned to gocryptfs blocks (see the module docstring)."""

    header: int = GOCRYPTFS_HEADER
    block: int = GOCRYPTFS_BLOCK
    blocks_per_chunk: int = 1024

    def __post_init__(self) -> None:
        if not 0 <= self.header <= 1 << 20 or not 1 <= self.block <= 1 << 24:
            raise ValueError("ChunkLayout header must be within 0..1 MiB and block within 1..16 MiB")
        if not 1 <= self.blocks_per_chunk or self.chunk_bytes > 1 << 30:
            raise ValueError("ChunkLayout blocks_per_chunk must be positive and a chunk at most 1 GiB")

    @property
    def chunk_bytes(self) -> int:
        return self.block * self.blocks_per_chunk

    def count(self, size: int) -> int:
        """Number of chunks of an object of ``size`` bytes."""
        if size <= 0:
            return 0
        first = self.header + self.chunk_bytes
        if size <= first:
            return 1
        return 1 + -(-(size - first) // self.chunk_bytes)

    def span(self, index: int, size: int) -> tuple[int, int]:
        """``[start, end)`` of chunk ``index`` in an object of ``size`` bytes."""
        if not 0 <= index < self.count(size):
            raise ValueError(f"chunk {index} out of range for an object of {size} bytes")
        start = 0 if index == 0 else self.header + index * self.chunk_bytes
        end = min(size, self.header + (index + 1) * self.chunk_bytes)
        return start, end

    def index_of(self, offset: int) -> int:
        """The chunk holding byte ``offset``."""
        if offset < self.header + self.chunk_bytes:
            return 0
        return (offset - self.header) // self.chunk_bytes

    def chunks_for(self, offset: int, length: int, size: int) -> range:
        """Chunks overlapping ``[offset, offset+length)`` clipped to the object."""
        end = min(offset + length, size)
        if offset < 0 or end <= offset:
            return range(0)
        return range(self.index_of(offset), self.index_of(end - 1) + 1)


@dataclass
class ChunkRecord:
    """What the sidecar of one cached object says: its identity and which chunks are durably on disk."""

    path: str
    size: int
    etag: str | None
    layout: ChunkLayout
    present: frozenset[int] = field(default_factory=frozenset)


def _runs(indices: Iterable[int]) -> list[list[int]]:
    """Sorted indices as inclusive ``[first, last]`` runs (a complete object is one run)."""
    runs: list[list[int]] = []
    for index in sorted(indices):
        if runs and runs[-1][1] == index - 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return runs


def encode_record(record: ChunkRecord) -> bytes:
    """Serialise a record as compact JSON (present chunks as inclusive ``[first, last]`` runs)."""
    doc = {
        "format": RECORD_FORMAT,
        "version": RECORD_VERSION,
        "path": record.path,
        "size": record.size,
        "etag": record.etag,
        "layout": {
            "header": record.layout.header,
            "block": record.layout.block,
            "blocks_per_chunk": record.layout.blocks_per_chunk,
        },
        "chunks": _runs(record.present),
    }
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _int(value: Any, what: str, low: int, high: int) -> int:
    if type(value) is not int or not low <= value <= high:
        raise CacheRecordError(f"cache record field {what} must be an integer within {low}..{high}")
    return value


def decode_record(data: bytes) -> ChunkRecord:
    """Parse and validate a sidecar; anything unexpected raises :class:`CacheRecordError`."""
    if len(data) > MAX_RECORD_BYTES:
        raise CacheRecordError(f"cache record is {len(data)} bytes, more than {MAX_RECORD_BYTES}")
    try:
        doc = jsonutil.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CacheRecordError(f"cache record is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise CacheRecordError("cache record must be a JSON object")
    if doc.get("format") != RECORD_FORMAT or doc.get("version") != RECORD_VERSION:
        raise CacheRecordError(f"cache record is not a {RECORD_FORMAT} v{RECORD_VERSION} record")
    path = doc.get("path")
    if not isinstance(path, str) or not 0 < len(path) <= MAX_PATH:
        raise CacheRecordError("cache record field path must be a non-empty string")
    size = _int(doc.get("size"), "size", 0, MAX_OBJECT_SIZE)
    etag = doc.get("etag")
    if etag is not None and (not isinstance(etag, str) or len(etag) > MAX_ETAG):
        raise CacheRecordError("cache record field etag must be a short string or null")
    lay = doc.get("layout")
    if not isinstance(lay, dict):
        raise CacheRecordError("cache record field layout must be an object")
    try:
        layout = ChunkLayout(
            header=_int(lay.get("header"), "layout.header", 0, 1 << 20),
            block=_int(lay.get("block"), "layout.block", 1, 1 << 24),
            blocks_per_chunk=_int(lay.get("blocks_per_chunk"), "layout.blocks_per_chunk", 1, 1 << 30),
        )
    except ValueError as exc:
        raise CacheRecordError(f"cache record layout is invalid: {exc}") from None
    chunks = doc.get("chunks")
    if not isinstance(chunks, list):
        raise CacheRecordError("cache record field chunks must be a list of [first, last] runs")
    count = layout.count(size)
    present: set[int] = set()
    previous = -2
    for run in chunks:
        if not (isinstance(run, list) and len(run) == 2):
            raise CacheRecordError("cache record chunk runs must be [first, last] pairs")
        first = _int(run[0], "chunks[].first", 0, MAX_OBJECT_SIZE)
        last = _int(run[1], "chunks[].last", 0, MAX_OBJECT_SIZE)
        if last >= count:
            raise CacheRecordError(f"cache record names chunk {last} but the object has {count} chunks")
        if not previous + 1 < first <= last:
            raise CacheRecordError("cache record chunk runs must be ascending, disjoint and not adjacent")
        present.update(range(first, last + 1))
        previous = last
    return ChunkRecord(path=path, size=size, etag=etag, layout=layout, present=frozenset(present))


# -- the I/O shell ------------------------------------------------------------------------------

_ABSENT, _PRESENT = 0, 1


class _Object:
    """Mutable cache state of one file; touched only from the event loop thread."""

    __slots__ = (
        "changed",
        "complete_announced",
        "data_path",
        "dirty",
        "entry",
        "inflight",
        "persist_again",
        "persist_task",
        "persist_timer",
        "record_path",
        "state",
        "streams",
        "windows",
    )

    def __init__(self, entry: SourceEntry, count: int, data_path: Path, record_path: Path) -> None:
        self.entry = entry
        self.state = bytearray(count)
        self.inflight: dict[int, asyncio.Task[bytes]] = {}
        self.data_path = data_path
        self.record_path = record_path
        self.dirty = 0
        self.persist_task: asyncio.Task[None] | None = None
        self.persist_again = False
        self.persist_timer: asyncio.TimerHandle | None = None
        self.complete_announced = False
        # Background streams in progress: [next chunk index, last chunk index] each.
        self.streams: list[list[int]] = []
        # In-memory tails of those streams, for readers waiting on bytes not yet on disk.
        self.windows: list[_StreamWindow] = []
        self.changed: asyncio.Event | None = None

    def notify(self) -> None:
        """Wake everyone waiting for a chunk of this object to arrive (or a stream to end)."""
        event, self.changed = self.changed, None
        if event is not None:
            event.set()

    def wait_changed(self) -> asyncio.Event:
        if self.changed is None:
            self.changed = asyncio.Event()
        return self.changed

    @property
    def complete(self) -> bool:
        return all(s == _PRESENT for s in self.state)


def _transient(exc: BaseException) -> bool:
    return bool(getattr(exc, "transient", False))


def _write_chunk(data_path: Path, size: int, start: int, data: bytes | memoryview) -> None:
    """Thread: write ``data`` at ``start`` of the sparse data file."""
    fd = os.open(data_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if os.fstat(fd).st_size != size:
            os.ftruncate(fd, size)
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += os.pwrite(fd, view[written:], start + written)
    finally:
        os.close(fd)


def _read_range(data_path: Path, offset: int, length: int) -> bytes:
    fd = os.open(data_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        parts: list[bytes] = []
        done = 0
        while done < length:
            piece = os.pread(fd, length - done, offset + done)
            if not piece:
                raise OSError(errno.EIO, f"cache file {data_path} is shorter than expected")
            parts.append(piece)
            done += len(piece)
        return parts[0] if len(parts) == 1 else b"".join(parts)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _lost_chunks(data_path: Path, layout: ChunkLayout, size: int, recorded: Iterable[int]) -> set[int]:
    """Thread: recorded chunks whose byte range contains a hole in the data file.

    Why this is the crash check: records are written without ``fsync`` (an ``fdatasync`` during
    the download stalled the writer on the journal and cost more than the download itself), so
    after a power cut a record may name chunks whose data never reached the disk. Data that was
    never written back is *unallocated*, i.e. a hole, and reads back as zeros, which gocryptfs
    would accept as a hole block without authentication. ``SEEK_HOLE`` finds such ranges from
    file-system metadata alone, without reading the data. (Data that was written back but is
    corrupt still fails gocryptfs' GCM tag on decryption.)
    """
    fd = os.open(data_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        lost: set[int] = set()
        for index in recorded:
            start, end = layout.span(index, size)
            try:
                hole = os.lseek(fd, start, os.SEEK_HOLE)
            except OSError:
                hole = start
            if hole < end:
                lost.add(index)
        return lost
    finally:
        os.close(fd)


def _fallocate_function() -> Any:
    """Linux ``fallocate(2)`` through libc, or None where unavailable.

    Not ``os.posix_fallocate``: glibc emulates that by *writing zeros* on file systems without
    fallocate support, which would turn not-yet-downloaded ranges into data and defeat the
    ``SEEK_HOLE`` crash check of :func:`_lost_chunks`. The raw call fails instead (and is then
    simply skipped).
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.fallocate
    except (OSError, AttributeError, ImportError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    function.restype = ctypes.c_int
    return function


_fallocate = _fallocate_function()


def _preallocate(fd: int, offset: int, length: int) -> bool:
    """Best effort: reserve ``[offset, offset+length)`` as *unwritten* extents; False if not done.

    Why: writing into preallocated extents costs ext4 about a third less CPU than delayed
    allocation (measured: 128 MiB in 28 ms instead of 41 ms), and on a 2-core guest that CPU is
    taken from the download itself. Safe for the crash check: unwritten extents read as zeros
    but are reported as holes by ``SEEK_HOLE`` (ext4, XFS) until data is written into them, so a
    chunk whose data was lost in a power cut is still found. Failure (no support, disk full) is
    ignored: the write that follows reports a real disk-full condition itself.
    """
    if _fallocate is None or length <= 0:
        return False
    return bool(_fallocate(fd, 0, offset, length) == 0)


class _StreamSink:
    """Thread-side writer of one streamed run: pieces go to the data file as they arrive.

    Pieces need not line up with chunks (obstore hands over whatever the socket delivered), so
    each piece is written at its own offset in one ``pwrite``; a chunk is complete when its last
    byte has been written. No piece is copied or re-assembled, and the event loop never touches
    the bytes. (No per-chunk hashing: crash consistency comes from :func:`_persist_record`'s
    ordering, and a hash pass cost more CPU than the whole download on a 2-core guest.)
    Used from one worker thread call at a time (the caller awaits each :meth:`feed`).
    """

    def __init__(self, data_path: Path, size: int, layout: ChunkLayout, first: int, last: int) -> None:
        self._layout = layout
        self._size = size
        self._index = first
        self._last = last
        self._pos, self._chunk_end = layout.span(first, size)
        self._run_end = layout.span(last, size)[1]
        self._reserved: int | None = self._pos  # preallocated up to here (None: not supported)
        self._lock = threading.Lock()
        self._busy = False
        self._close_pending = False
        self._fd = os.open(data_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.fstat(self._fd).st_size != size:
                os.ftruncate(self._fd, size)
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def position(self) -> int:
        """Byte offset the next piece must start at."""
        return self._pos

    def feed(self, piece: bytes | memoryview) -> list[int]:
        """Write ``piece`` at the current position; return the chunks it completed."""
        with self._lock:
            if self._fd < 0 or self._close_pending:
                raise OSError(errno.EBADF, "the stream sink is closed")
            self._busy = True
        try:
            return self._feed(memoryview(piece).cast("B"))
        finally:
            with self._lock:
                self._busy = False
                if self._close_pending:
                    self._close_now()

    def _feed(self, view: memoryview) -> list[int]:
        end_of_run = self._run_end
        if self._pos + len(view) > end_of_run:
            raise ShortFetchError(f"the stream sent more than the {end_of_run - self._pos} bytes left in the run")
        if self._reserved is not None and self._pos + len(view) > self._reserved:
            upto = min(end_of_run, self._pos + len(view) + _PREALLOCATE)
            self._reserved = upto if _preallocate(self._fd, self._reserved, upto - self._reserved) else None
        written = 0
        while written < len(view):
            written += os.pwrite(self._fd, view[written:], self._pos + written)
        done: list[int] = []
        offset = 0
        while offset < len(view):
            take = min(len(view) - offset, self._chunk_end - self._pos)
            offset += take
            self._pos += take
            if self._pos == self._chunk_end:
                done.append(self._index)
                self._index += 1
                if self._index <= self._last:
                    self._chunk_end = self._layout.span(self._index, self._size)[1]
        return done

    def close(self) -> None:
        """Close the file now, or (never blocking the caller) when the running :meth:`feed` returns.

        A cancelled ``await to_thread(feed)`` leaves the thread running; closing its descriptor
        under it could let a later ``open`` reuse the number and receive the piece's bytes.
        """
        with self._lock:
            if self._busy:
                self._close_pending = True
            else:
                self._close_now()

    def _close_now(self) -> None:
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


class _StreamWindow:
    """The newest pieces of one background stream, kept in memory so waiting readers are served at once.

    Why: without it a reader of a range the stream is delivering waits until the piece has been
    written to the cache file, its chunk completed, and then reads it back from the file — two
    extra copies and a disk round trip on the critical path of a cold model load. With it, the
    reader copies the ciphertext straight out of the received buffer (one copy) while the worker
    thread writes the same buffer to disk in parallel. Nothing here is marked present: the disk
    state still changes only after ``pwrite`` returned, exactly as without the window.

    Bounded: pieces are dropped oldest first once more than ``limit`` bytes are held (the newest
    piece is always kept). A reader that fell further behind than that reads from disk instead.
    Bytes past the end of the run (a server that sends too much) are never exposed.
    Touched only from the event loop thread; the writer thread only reads the same buffers.
    """

    __slots__ = ("base", "end", "held", "limit", "pieces", "pos")

    def __init__(self, start: int, end: int, limit: int) -> None:
        self.base = start  # first byte still held
        self.pos = start  # one past the last byte received
        self.end = end  # end of the run this stream delivers
        self.limit = limit
        self.held = 0
        self.pieces: deque[memoryview] = deque()

    def add(self, piece: bytes | memoryview) -> None:
        view = memoryview(piece).cast("B")
        take = min(len(view), self.end - self.pos)
        if take <= 0:
            return
        if take < len(view):
            view = view[:take]
        self.pieces.append(view)
        self.pos += take
        self.held += take
        while self.held > self.limit and len(self.pieces) > 1:
            dropped = self.pieces.popleft()
            self.base += len(dropped)
            self.held -= len(dropped)

    def holds(self, offset: int, end: int) -> bool:
        """True if ``[offset, end)`` is received and still held."""
        return self.base <= offset and end <= self.pos

    def copy(self, offset: int, end: int) -> bytes:
        """The bytes ``[offset, end)``; the caller checked :meth:`holds`."""
        parts: list[memoryview] = []
        start = self.base
        for piece in self.pieces:
            stop = start + len(piece)
            if stop > offset and start < end:
                parts.append(piece[max(offset, start) - start : min(end, stop) - start])
            if stop >= end:
                break
            start = stop
        return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)


_END = object()


async def _pump(
    pieces: AsyncIterator[memoryview], queue: asyncio.Queue[Any], on_piece: Callable[[memoryview], None]
) -> None:
    """Move a stream's pieces into a bounded queue, always keeping one read outstanding.

    obstore (like most HTTP clients) reads the socket only while a ``__anext__`` is pending; a
    consumer that writes between reads would stall the transfer once the kernel's socket buffers
    fill. ``on_piece`` sees each piece the moment it arrives (before it waits for the disk), which
    is how waiting readers are served from memory. Errors are handed over in the queue; the
    stream is always closed.
    """
    try:
        async with contextlib.AsyncExitStack() as stack:
            closer = getattr(pieces, "aclose", None)
            if closer is not None:
                stack.push_async_callback(closer)
            async for piece in pieces:
                on_piece(piece)
                await queue.put(piece)
        await queue.put(_END)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        await queue.put(exc)


class CachedSource(CiphertextSource):
    """Wraps ``source``; serves reads from a ciphertext cache under ``cache_dir``, filling it lazily.

    Call :meth:`list_tree` first (it loads/validates the cache), then :meth:`start_download` for
    the background fill (lazy mode) or :meth:`download_all` to wait for everything (eager mode).
    """

    def __init__(
        self,
        source: CiphertextSource,
        cache_dir: str | os.PathLike[str],
        *,
        metrics: Metrics | None = None,
        layout: ChunkLayout | None = None,
        download_concurrency: int = 4,
        demand_concurrency: int = 8,
        backoff: Backoff | None = None,
        persist_every: int = 16,
        persist_delay: float = 1.0,
        max_fetch_bytes: int | None = None,
        readahead_chunks: int = 4,
        stream_piece_bytes: int = 1 << 20,
        stream_buffer_pieces: int = 8,
        stream_patience: float = 1.0,
        stream_window_bytes: int = 16 << 20,
        recheck_interval: float = 30.0,
    ) -> None:
        if max_fetch_bytes is None:
            max_fetch_bytes = MAX_OBJECT_SIZE
        if not persist_delay > 0 or not recheck_interval > 0:
            raise ValueError("CachedSource persist_delay and recheck_interval must be positive")
        numbers = (download_concurrency, demand_concurrency, persist_every, max_fetch_bytes, readahead_chunks,
                   stream_piece_bytes, stream_buffer_pieces)
        if min(numbers) < 1:
            raise ValueError("CachedSource concurrency, persist_every, max_fetch_bytes, readahead_chunks and "
                             "stream sizes must be positive")
        if stream_window_bytes < 0:
            raise ValueError("CachedSource stream_window_bytes must be 0 (off) or positive")
        self._source = source
        self.name = f"cache of {source.name}"
        self._root = Path(cache_dir)
        volume_key = hashlib.sha256(source.name.encode("utf-8", "surrogatepass")).hexdigest()[:24]
        self._dir = self._root / volume_key
        self.metrics = metrics if metrics is not None else Metrics()
        self.layout = layout if layout is not None else ChunkLayout()
        self._download_concurrency = download_concurrency
        self._demand = asyncio.Semaphore(demand_concurrency)
        self._backoff = backoff if backoff is not None else Backoff(initial=0.2, maximum=5.0, attempts=5)
        self._persist_every = persist_every
        self._persist_delay = persist_delay
        self._run_chunks = max(1, max_fetch_bytes // self.layout.chunk_bytes)
        self._readahead = readahead_chunks
        self._piece_bytes = stream_piece_bytes
        self._patience = stream_patience
        self._stream_buffer = stream_buffer_pieces
        self._window_bytes = stream_window_bytes
        self._objects: dict[str, _Object] = {}
        self._entries: list[SourceEntry] | None = None
        self._list_lock = asyncio.Lock()
        self._download: asyncio.Task[None] | None = None
        self._persisting: set[asyncio.Task[None]] = set()
        self.download_errors: list[str] = []
        self.passthrough_reason: str | None = None
        self._recheck_interval = recheck_interval
        self._revive_task: asyncio.Task[None] | None = None
        self.progress = DownloadProgress(self.metrics, location=source.name)
        self._retries = self.metrics.counter(
            "cachefs_download_retries_total", "Chunk fetches retried after a transient failure or short body."
        )
        self._stalls = self.metrics.counter(
            "cachefs_stream_stalls_total", "Reads that stopped waiting for a background stream that delivered "
            "nothing for stream_patience seconds, and fetched on their own."
        )
        self._errors = self.metrics.counter(
            "cachefs_cache_errors_total", "Ciphertext cache problems, by kind.", labels=("kind",)
        )
        self._served = self.metrics.counter(
            "cachefs_read_bytes_total", "Ciphertext bytes returned to readers, by where they came from.",
            labels=("origin",),
        )
        self._enabled = self.metrics.gauge(
            "cachefs_cache_enabled", "1 while the on-disk ciphertext cache accepts writes."
        )
        self._enabled.set(1)

    # -- listing and cache validation -------------------------------------------------------------
    async def list_tree(self) -> list[SourceEntry]:
        async with self._list_lock:
            if self._entries is None:
                entries = await self._source.list_tree()
                await asyncio.to_thread(self._load, entries)
                self._entries = entries
            return list(self._entries)

    def _paths_for(self, path: str) -> tuple[Path, Path]:
        key = hashlib.sha256(path.encode("utf-8", "surrogatepass")).hexdigest()
        return self._dir / f"{key}.data", self._dir / f"{key}.json"

    def _load(self, entries: list[SourceEntry]) -> None:
        """Thread: create the cache dir (0700), validate sidecars against the listing, prune the rest."""
        try:
            self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._dir.mkdir(mode=0o700, exist_ok=True)
            os.chmod(self._root, 0o700)
            os.chmod(self._dir, 0o700)
        except OSError as exc:
            raise CacheError(
                f"cannot create the ciphertext cache directory {self._dir}: {exc.strerror or exc}",
                hint="check the cache_dir setting, its permissions and free space",
            ) from None
        keep: set[str] = set()
        present_bytes = 0
        complete = 0
        files = [e for e in entries if e.kind == "file"]
        for entry in files:
            data_path, record_path = self._paths_for(entry.path)
            keep.update({data_path.name, record_path.name})
            obj = _Object(entry, self.layout.count(entry.size), data_path, record_path)
            reused = self._reuse(obj)
            present_bytes += reused
            self._objects[entry.path] = obj
            if obj.complete:
                obj.complete_announced = True
                complete += 1
        for stale in self._dir.iterdir():
            if stale.name not in keep:
                with contextlib.suppress(OSError):
                    stale.unlink()
        self.progress.reset(
            total_bytes=sum(e.size for e in files),
            present_bytes=present_bytes,
            total_objects=len(files),
            complete_objects=complete,
        )

    def _reuse(self, obj: _Object) -> int:
        """Adopt a previous run's chunks for ``obj`` if its identity matches; returns bytes reused."""
        entry = obj.entry
        try:
            raw = obj.record_path.read_bytes()
        except FileNotFoundError:
            with contextlib.suppress(OSError):
                obj.data_path.unlink()
            return 0
        except OSError as exc:
            raw = f"unreadable: {exc.strerror or exc}".encode()
        reason = ""
        try:
            record = decode_record(raw)
            if record.path != entry.path:
                reason = "record belongs to another path"
            elif entry.etag is None:
                reason = "the source gives no ETag, so the cached bytes cannot be matched to the object"
            elif record.size != entry.size or record.etag != entry.etag:
                reason = "the object changed (size or ETag differs)"
            elif record.layout != self.layout:
                reason = "the chunk layout changed"
            elif obj.data_path.stat().st_size != entry.size:
                reason = "the data file has the wrong size"
        except CacheRecordError as exc:
            reason = str(exc)
        except OSError:
            reason = "the data file is missing"
        if reason:
            log.warning("discarding cached object", location=self._source.name, path=entry.path, reason=reason)
            self.metrics.counter(
                "cachefs_cache_discarded_objects_total", "Cached objects discarded at start-up (changed or invalid)."
            ).inc()
            for stale in (obj.data_path, obj.record_path):
                with contextlib.suppress(OSError):
                    stale.unlink()
            return 0
        try:
            lost = _lost_chunks(obj.data_path, self.layout, entry.size, record.present)
        except OSError:
            lost = set(record.present)
        if lost:
            log.warning("cached chunks were lost (a crash before they reached the disk); fetching them again",
                        location=self._source.name, path=entry.path, chunks=len(lost))
            self._errors.labels(kind="lost").inc(len(lost))
        reused = 0
        for index in record.present - lost:
            obj.state[index] = _PRESENT
            start, end = self.layout.span(index, entry.size)
            reused += end - start
        return reused

    async def _object(self, path: str) -> _Object | None:
        if self._entries is None:
            await self.list_tree()
        return self._objects.get(path)

    # -- reads --------------------------------------------------------------------------------------
    async def read(self, path: str, offset: int, length: int) -> bytes:
        """Exact range from the cache, fetching missing chunks first (with priority)."""
        obj = await self._object(path)
        if obj is None:
            return await self._source.read(path, offset, length)
        if offset < 0 or length < 0:
            raise CacheError(f"invalid range offset={offset} length={length} for {path!r} in {self.name}")
        size = obj.entry.size
        end = min(offset + length, size)
        if end <= offset:
            return b""
        indices = self.layout.chunks_for(offset, end - offset, size)
        if self.passthrough_reason is not None and any(obj.state[i] != _PRESENT for i in indices):
            data = await self._fetch_range(obj, offset, end - offset, "passthrough")
            self._served.labels(origin="network").inc(len(data))
            return data
        wait_streams = True
        if obj.windows:  # even for chunks on disk: a copy from memory beats a pread in a thread
            data, wait_streams = await self._from_window(obj, offset, end)
            if data is not None:
                self._served.labels(origin="stream").inc(len(data))
                return data
        fresh = await asyncio.gather(*(self._ensure(obj, i, demand=True, wait_streams=wait_streams)
                                       for i in indices))
        if all(chunk is None for chunk in fresh):
            data = await self._read_disk(obj, offset, end - offset)
            self._served.labels(origin="cache").inc(len(data))
            return data
        parts: list[bytes] = []
        for index, chunk in zip(indices, fresh, strict=True):
            c_start, c_end = self.layout.span(index, size)
            lo, hi = max(offset, c_start), min(end, c_end)
            if chunk is None:
                parts.append(await self._read_disk(obj, lo, hi - lo))
            else:
                parts.append(chunk[lo - c_start : hi - c_start])
        self._served.labels(origin="network").inc(end - offset)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def read_all(self, path: str) -> bytes:
        obj = await self._object(path)
        if obj is None:
            return await self._source.read_all(path)
        return await self.read(path, 0, obj.entry.size)

    async def _read_disk(self, obj: _Object, offset: int, length: int) -> bytes:
        try:
            if length <= _INLINE_PREAD:
                return _read_range(obj.data_path, offset, length)
            return await asyncio.to_thread(_read_range, obj.data_path, offset, length)
        except OSError as exc:
            # The cache lost a file under us: forget what it claimed and read through.
            self._errors.labels(kind="io").inc()
            log.error("ciphertext cache read failed", path=obj.entry.path, error=exc.strerror or str(exc))
            for i in self.layout.chunks_for(offset, length, obj.entry.size):
                if obj.state[i] == _PRESENT:
                    obj.state[i] = _ABSENT
                    start, end = self.layout.span(i, obj.entry.size)
                    self.progress.chunk_dropped(end - start)
            return await self._fetch_range(obj, offset, length, "passthrough")

    async def _from_window(self, obj: _Object, offset: int, end: int) -> tuple[bytes | None, bool]:
        """Serve ``[offset, end)`` from a stream's in-memory window, waiting while it approaches.

        Returns ``(bytes, _)`` when served, else ``(None, wait_streams)``: ``wait_streams`` is
        False after the stream stalled for ``stream_patience`` (so the caller fetches at once
        instead of waiting a second time), True when the range is simply not a window's to serve
        (on disk, dropped from the window, or too far ahead of the stream).
        """
        while True:
            window = next((w for w in obj.windows if w.base <= offset and end <= w.end), None)
            if window is None:
                return None, True
            if window.holds(offset, end):
                return window.copy(offset, end), True
            if offset < window.base:
                return None, True
            reach = self.layout.index_of(window.pos) + self._readahead - 1
            if self.layout.index_of(end - 1) > reach:
                return None, True
            if all(obj.state[i] == _PRESENT for i in self.layout.chunks_for(offset, end - offset, obj.entry.size)):
                return None, True
            try:
                await asyncio.wait_for(obj.wait_changed().wait(), self._patience)
            except TimeoutError:
                self._stalls.inc()
                return None, False

    async def _ensure(self, obj: _Object, index: int, *, demand: bool, wait_streams: bool = True) -> bytes | None:
        """Make chunk ``index`` present; return its bytes if fetched now, None if it is on disk."""
        if obj.state[index] == _PRESENT:
            return None
        # A background stream about to deliver this chunk is cheaper to wait for than a new GET,
        # as long as it is moving: a stream that delivers nothing for ``stream_patience`` seconds
        # (a slow start, a stalled server) no longer holds up the read.
        while demand and wait_streams and self._stream_will_deliver(obj, index):
            try:
                await asyncio.wait_for(obj.wait_changed().wait(), self._patience)
            except TimeoutError:
                self._stalls.inc()
                break
            if obj.state[index] == _PRESENT:
                return None
        task = obj.inflight.get(index)
        if task is None:
            task = asyncio.ensure_future(self._materialise(obj, index, demand))
            obj.inflight[index] = task
            task.add_done_callback(lambda _t: obj.inflight.pop(index, None))
        result = await asyncio.shield(task)
        return result or None

    async def _materialise(self, obj: _Object, index: int, demand: bool) -> bytes:
        """Fetch and store a missing chunk; returns its bytes (the caller may serve them directly)."""
        start, end = self.layout.span(index, obj.entry.size)
        if demand:
            async with self._demand:
                data = await self._fetch_range(obj, start, end - start, "demand")
        else:
            data = await self._fetch_range(obj, start, end - start, "background")
        await self._store_chunk(obj, index, data)
        return data

    def _stream_will_deliver(self, obj: _Object, index: int) -> bool:
        return any(pos <= index <= min(last, pos + self._readahead - 1) for pos, last in obj.streams)

    async def _store_chunk(self, obj: _Object, index: int, data: bytes | memoryview) -> None:
        """Write a complete chunk and mark it present (unless another fetch got there first)."""
        if self.passthrough_reason is not None or obj.state[index] == _PRESENT:
            return
        start, end = self.layout.span(index, obj.entry.size)
        if len(data) != end - start:  # callers check; this guards the invariant itself
            raise ShortFetchError(f"refusing to cache {len(data)} bytes as chunk {index} of {obj.entry.path!r}")
        try:
            await asyncio.to_thread(_write_chunk, obj.data_path, obj.entry.size, start, data)
        except OSError as exc:
            self._disable(exc)
            return
        self._mark_present(obj, index)

    def _mark_present(self, obj: _Object, index: int) -> None:
        """Record a chunk whose bytes are completely written (first writer wins)."""
        if obj.state[index] == _PRESENT:
            return
        start, end = self.layout.span(index, obj.entry.size)
        obj.state[index] = _PRESENT
        obj.dirty += 1
        self.progress.chunk_cached(end - start)
        self._after_present(obj)
        obj.notify()

    async def _fill_run(self, obj: _Object, cursor: list[int]) -> None:
        """Background: fetch chunks ``first..last`` with one streamed GET, caching each as it completes.

        After a failure the retry resumes at the first chunk still missing, so a cut connection
        costs at most one chunk of re-download, and a partial chunk is never marked present.
        """
        first, last = cursor
        stream = getattr(self._source, "stream", None)
        if stream is None:
            obj.streams.remove(cursor)
            for index in range(first, last + 1):
                await self._ensure(obj, index, demand=False)
            return
        path, size = obj.entry.path, obj.entry.size

        async def attempt() -> None:
            index = first
            while index <= last and obj.state[index] == _PRESENT:
                index += 1
            if index > last:
                return
            cursor[0] = index
            start, end = self.layout.span(index, size)[0], self.layout.span(last, size)[1]
            pieces: asyncio.Queue[Any] = asyncio.Queue(self._stream_buffer)
            window: _StreamWindow | None = None
            if self._window_bytes:
                window = _StreamWindow(start, end, self._window_bytes)
                obj.windows.append(window)

            def arrived(piece: memoryview) -> None:
                if window is not None:
                    window.add(piece)
                    obj.notify()

            # The request goes out first; the cache file is opened while the server answers.
            pump = asyncio.ensure_future(
                _pump(stream(path, start, end - start, piece_size=self._piece_bytes), pieces, arrived)
            )
            sink: _StreamSink | None = None
            try:
                try:
                    sink = await asyncio.to_thread(_StreamSink, obj.data_path, size, self.layout, index, last)
                except OSError as exc:
                    self._disable(exc)
                    return
                while (piece := await pieces.get()) is not _END:
                    if isinstance(piece, BaseException):
                        raise piece
                    self.progress.fetched(len(piece), "background")
                    # Disk write in a worker thread; meanwhile the pump keeps reading the socket
                    # (and readers copy from the window), so the transfer never waits for the disk.
                    try:
                        completed = await asyncio.to_thread(sink.feed, piece)
                    except OSError as exc:
                        self._disable(exc)
                        return
                    for chunk in completed:
                        self._mark_present(obj, chunk)
                        cursor[0] = chunk + 1
                    obj.notify()  # progress: readers waiting for this stream keep waiting
                    if self.passthrough_reason is not None:
                        return
            finally:
                if window is not None:
                    obj.windows.remove(window)
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
                if sink is not None:
                    sink.close()
            if sink is None or sink.position != end:
                raise ShortFetchError(
                    f"{self._source.name} ended the stream of {path!r} at byte {sink.position if sink else start} of "
                    f"{start}..{end} (chunks {first}..{last})",
                    hint="the transfer was cut short; it resumes at the first missing chunk",
                )

        def on_retry(attempt_no: int, exc: BaseException, delay: float) -> None:
            self._retries.inc()
            log.warning("ciphertext stream failed; resuming", path=path, chunk=cursor[0], attempt=attempt_no,
                        delay_s=round(delay, 2), error=str(exc))

        try:
            await retry_call(attempt, self._backoff, retry_on=_transient, on_retry=on_retry)
        finally:
            obj.streams.remove(cursor)
            obj.notify()

    def _after_present(self, obj: _Object) -> None:
        complete = obj.complete
        if complete and not obj.complete_announced:
            obj.complete_announced = True
            self.progress.object_complete()
        if obj.dirty and (complete or obj.dirty >= self._persist_every):
            self._schedule_persist(obj)
        elif obj.dirty and obj.persist_timer is None:
            # Fewer than persist_every new chunks: record them within persist_delay anyway, so a
            # crash (SIGKILL, OOM) in a slow download loses at most that much progress.
            obj.persist_timer = asyncio.get_running_loop().call_later(self._persist_delay, self._persist_later, obj)

    def _persist_later(self, obj: _Object) -> None:
        obj.persist_timer = None
        if obj.dirty:
            self._schedule_persist(obj)

    async def _fetch_range(self, obj: _Object, offset: int, length: int, reason: str) -> bytes:
        """Fetch from the source with bounded retries; a short body counts as a transient failure."""
        path = obj.entry.path
        expected = min(length, obj.entry.size - offset)

        async def attempt() -> bytes:
            data = await self._source.read(path, offset, length)
            if len(data) != expected:
                raise ShortFetchError(
                    f"{self._source.name} returned {len(data)} of {expected} bytes of {path!r} at offset {offset}",
                    hint="the transfer was cut short; it is retried",
                )
            return data

        def on_retry(attempt_no: int, exc: BaseException, delay: float) -> None:
            self._retries.inc()
            log.warning("ciphertext fetch failed; retrying", path=path, offset=offset, attempt=attempt_no,
                        delay_s=round(delay, 2), error=str(exc))

        data = await retry_call(attempt, self._backoff, retry_on=_transient, on_retry=on_retry)
        self.progress.fetched(len(data), reason)
        return data

    # -- cache persistence and failure -------------------------------------------------------------
    def _disable(self, exc: OSError) -> None:
        if self.passthrough_reason is not None:
            return
        kind = "disk_full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "io"
        what = "disk full" if kind == "disk_full" else (exc.strerror or str(exc))
        self.passthrough_reason = f"{what} in {self._dir}"
        self._errors.labels(kind=kind).inc()
        self._enabled.set(0)
        log.error(
            "ciphertext cache disabled; serving reads from the source directly",
            cache_dir=str(self._dir),
            reason=what,
            hint=(f"free space in cache_dir (caching resumes by itself once the rest of the volume fits; checked "
                  f"every {self._recheck_interval:g} s) or point cache_dir at a larger disk and restart cachefs")
            if kind == "disk_full" else "fix the cache disk, then restart cachefs to resume caching",
        )
        if kind == "disk_full" and self._revive_task is None:
            self._revive_task = asyncio.ensure_future(self._revive_when_room())

    def _room_for_the_rest(self) -> tuple[bool, int, int]:
        """(fits, free bytes, bytes still missing): does everything not yet cached fit, with a margin?"""
        stats = os.statvfs(self._dir)
        free = stats.f_bavail * stats.f_frsize
        missing = max(0, int(self.progress.total_bytes) - int(self.progress.present_bytes))
        # Margin: the small record files, and a little slack so the disk does not fill up to the byte.
        return free >= missing + (1 << 20), free, missing

    async def _revive_when_room(self) -> None:
        """After "disk full": turn the cache back on once the rest of the volume fits, without a restart.

        Only then: a cache that would fill up again would flap between on and off. Chunks whose
        write failed were never marked present, so nothing half-written is ever served.
        """
        try:
            while True:
                await asyncio.sleep(self._recheck_interval)
                try:
                    fits, free, missing = await asyncio.to_thread(self._room_for_the_rest)
                except OSError:
                    continue
                if fits:
                    break
            self.passthrough_reason = None
            self._enabled.set(1)
            log.info("ciphertext cache re-enabled", cache_dir=str(self._dir), free_bytes=free, missing_bytes=missing)
            if self._download is not None and self._download.done():
                self._download = None
                self.start_download()
        finally:
            self._revive_task = None

    def _schedule_persist(self, obj: _Object) -> None:
        """Write ``obj``'s record soon; one writer per object, so an older record never wins."""
        obj.dirty = 0
        if obj.persist_task is not None and not obj.persist_task.done():
            obj.persist_again = True
            return
        task = asyncio.ensure_future(self._persist(obj))
        obj.persist_task = task
        self._persisting.add(task)
        task.add_done_callback(self._persisting.discard)

    async def _persist(self, obj: _Object) -> None:
        while True:
            obj.persist_again = False
            present = frozenset(i for i, state in enumerate(obj.state) if state == _PRESENT)
            record = ChunkRecord(obj.entry.path, obj.entry.size, obj.entry.etag, self.layout, present)
            try:
                await asyncio.to_thread(_write_atomic, obj.record_path, encode_record(record))
            except OSError as exc:
                self._disable(exc)
                return
            if not obj.persist_again:
                return

    # -- background download -----------------------------------------------------------------------
    def start_download(self) -> asyncio.Task[None]:
        """Start (once) the background fill of every file; returns its task."""
        if self._entries is None:
            raise CacheError("start_download() called before list_tree()", hint="list the volume first")
        if self._download is None:
            jobs = iter(self._jobs())
            # Claim the first runs now, not when the task first runs: a read issued right after
            # this call then waits for those streams instead of fetching the same bytes again.
            claimed = [job for job in (self._claim(jobs) for _ in range(self._download_concurrency)) if job]
            self._download = asyncio.ensure_future(self._download_all(jobs, claimed))
        return self._download

    async def download_all(self) -> None:
        """Fetch the whole volume into the cache (eager mode); raise if some chunks failed."""
        if self._entries is None:
            await self.list_tree()
        await self.start_download()
        if self.download_errors:
            raise CacheError(
                f"{len(self.download_errors)} chunk(s) of {self._source.name} could not be downloaded; "
                f"first: {self.download_errors[0]}",
                hint="check the object store; reads of those ranges will be retried on demand",
            )

    def _jobs(self) -> Iterable[tuple[_Object, int, int]]:
        """Runs of missing chunks (at most ``max_fetch_bytes`` each), small objects first.

        Small objects are the metadata (conf, diriv, long names) the mount needs first. State is
        read lazily, so chunks that demand reads fetched meanwhile are skipped.
        """
        for obj in sorted(self._objects.values(), key=lambda o: (o.entry.size, o.entry.path)):
            index, count = 0, len(obj.state)
            while index < count:
                if obj.state[index] == _PRESENT:
                    index += 1
                    continue
                last = index
                while last + 1 < count and last + 1 - index < self._run_chunks and obj.state[last + 1] == _ABSENT:
                    last += 1
                yield obj, index, last
                index = last + 1

    def _claim(self, jobs: Iterable[tuple[_Object, int, int]]) -> tuple[_Object, list[int]] | None:
        """Take the next job; a run is registered as a stream at once so demand reads can wait for it."""
        for obj, first, last in jobs:
            cursor = [first, last]
            obj.streams.append(cursor)
            return obj, cursor
        return None

    async def _download_all(
        self, jobs: Iterable[tuple[_Object, int, int]], claimed: list[tuple[_Object, list[int]]]
    ) -> None:
        async def worker(job: tuple[_Object, list[int]] | None) -> None:
            while job is not None:
                obj, cursor = job
                first = cursor[0]
                try:
                    if self.passthrough_reason is not None:
                        obj.streams.remove(cursor)
                        obj.notify()
                        return
                    await self._fill_run(obj, cursor)
                except SourceError as exc:
                    self.download_errors.append(str(exc))
                    self._errors.labels(kind="download").inc()
                    log.error("background download failed", path=obj.entry.path, chunk=first, error=str(exc))
                job = self._claim(jobs)

        try:
            await asyncio.gather(*(worker(job) for job in claimed))
        finally:
            for obj, cursor in claimed:
                if cursor in obj.streams:
                    obj.streams.remove(cursor)
                    obj.notify()
        await self.flush()

    async def flush(self) -> None:
        """Write every dirty sidecar now and wait for pending writes."""
        for obj in self._objects.values():
            if obj.dirty:
                self._schedule_persist(obj)
        while self._persisting:
            await asyncio.gather(*list(self._persisting), return_exceptions=True)

    @property
    def complete(self) -> bool:
        """True once every file is entirely in the cache."""
        return self._entries is not None and all(o.complete for o in self._objects.values())

    def data_file(self, path: str) -> Path | None:
        """The sparse ciphertext file of ``path`` if it is completely cached (for mmap-based readers)."""
        obj = self._objects.get(path)
        return obj.data_path if obj is not None and obj.complete else None

    async def close(self) -> None:
        if self._revive_task is not None:
            self._revive_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._revive_task
        if self._download is not None and not self._download.done():
            self._download.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._download
        for obj in self._objects.values():
            if obj.persist_timer is not None:
                obj.persist_timer.cancel()  # flush() below writes what it would have
                obj.persist_timer = None
            for task in list(obj.inflight.values()):
                task.cancel()
            if obj.inflight:
                await asyncio.gather(*obj.inflight.values(), return_exceptions=True)
        await self.flush()
        await self._source.close()
