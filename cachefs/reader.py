"""Plaintext reads of one volume: block arithmetic, batched decryption, a bounded plaintext cache.

Why it is shaped like this (measurements in shared/reference/cachefs.md §3 and docs/cachefs.md):

* Local ciphertext (a descriptor from the source) is read straight into a preallocated scratch
  buffer with ``preadv`` and decrypted in one batch call (:mod:`cachefs.accel`) into a second
  scratch buffer, whose view is the reply: no per-request allocation, one copy in, one copy out.
  A fresh 1 MiB buffer per request was measured to halve throughput.
* The scratch buffers are shared by every file of a mount. That is safe because the handler does
  not suspend between decrypting and returning, and pyfuse3 copies the returned view into the reply
  before it runs any other request; so a returned view is only valid until the next read.
* Remote sources are served from 1 MiB plaintext *chunks* (256 blocks) kept in a byte-bounded LRU,
  with sequential prefetch so the network overlaps with the reader; small random remote reads
  decrypt only their own blocks.
* Decryption stays on the event-loop thread: per-4 KiB AES-GCM calls in threads were measured
  slower than one thread (GIL convoy); the native engine decrypts a whole request per call.
* Plaintext lives in memory only (scratch buffers, the chunk LRU, the kernel page cache).
* A failed GCM tag (or a hole in strict mode) makes only the requests touching that block fail;
  neighbouring blocks still read, and nothing unauthenticated is returned.
"""

from __future__ import annotations

import asyncio
import collections
import os
from dataclasses import dataclass

from agents.logsetup import get_logger
from cachefs.errors import BlockAuthError, CachefsError, VolumeFormatError
from cachefs.gocryptfs import content
from cachefs.gocryptfs.content import CIPHER_BLOCK, HEADER_LEN, PLAIN_BLOCK, ContentCipher
from cachefs.sources.base import CiphertextSource, SourceError
from cachefs.volume import Node

log = get_logger("cachefs.reader")

CHUNK_BLOCKS = 256
CHUNK_PLAIN = CHUNK_BLOCKS * PLAIN_BLOCK
SMALL_READ = 64 * 1024


@dataclass
class ReaderStats:
    """Counters exported as metrics and used by tests."""

    chunks_decrypted: int = 0
    cache_hits: int = 0
    direct_reads: int = 0
    bad_blocks: int = 0
    prefetched: int = 0


class PlainCache:
    """Byte-bounded LRU of decrypted chunks keyed by (inode, chunk index)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self._items: collections.OrderedDict[tuple[int, int], bytearray] = collections.OrderedDict()

    def get(self, key: tuple[int, int]) -> bytearray | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: tuple[int, int], value: bytearray) -> None:
        if len(value) > self.max_bytes:
            return
        old = self._items.pop(key, None)
        if old is not None:
            self.used -= len(old)
        self._items[key] = value
        self.used += len(value)
        while self.used > self.max_bytes:
            _, evicted = self._items.popitem(last=False)
            self.used -= len(evicted)

    def drop_inode(self, inode: int) -> None:
        for key in [k for k in self._items if k[0] == inode]:
            self.used -= len(self._items.pop(key))


class ReadBuffers:
    """Preallocated ciphertext and plaintext scratch buffers, shared by all readers of a mount.

    Sized for a 1 MiB request that is not block-aligned (257 blocks); grown once if the kernel
    ever sends bigger requests. See the module docstring for why sharing them is safe.
    """

    def __init__(self, blocks: int = CHUNK_BLOCKS + 1) -> None:
        self._grow(blocks)

    def _grow(self, blocks: int) -> None:
        self.blocks = blocks
        self.cipher = memoryview(bytearray(blocks * CIPHER_BLOCK))
        self.plain = memoryview(bytearray(blocks * PLAIN_BLOCK))

    def views(self, blocks: int) -> tuple[memoryview, memoryview]:
        """Ciphertext and plaintext scratch views for ``blocks`` blocks."""
        if blocks > self.blocks:
            self._grow(blocks)
        return self.cipher, self.plain


class ReadError(CachefsError):
    """A read cannot be served (maps to EIO)."""


class FileReader:
    """Reads plaintext ranges of one file; shared by every open handle of that inode."""

    def __init__(self, node: Node, source: CiphertextSource, cipher: ContentCipher, cache: PlainCache,
                 stats: ReaderStats, *, strict: bool = False, prefetch_chunks: int = 0,
                 buffers: ReadBuffers | None = None, read_timeout: float | None = None) -> None:
        self.node = node
        self.read_timeout = read_timeout
        self.source = source
        self.cipher = cipher
        self.cache = cache
        self.stats = stats
        self.strict = strict
        self.prefetch_chunks = prefetch_chunks
        self.buffers = buffers if buffers is not None else ReadBuffers()
        self.file_id: bytes | None = None
        self._fd: int | None = None
        self._inflight: dict[int, asyncio.Future[bytearray]] = {}
        self._logged_blocks: set[int] = set()
        self._next_seq = 0
        self._prefetch_task: asyncio.Task[None] | None = None
        opener = getattr(source, "open_fd", None)
        if opener is not None:
            self._fd = opener(node.cipher_path)

    def close(self) -> None:
        """Release the local descriptor and stop prefetching."""
        if self._prefetch_task is not None:
            self._prefetch_task.cancel()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def _cipher_read(self, offset: int, length: int) -> bytes:
        if self._fd is not None:
            try:
                return os.pread(self._fd, length, offset)
            except OSError as exc:
                raise ReadError(f"{self.node.cipher_path}: ciphertext read failed: {exc.strerror}") from None
        # The deadline bounds what the application waits for: a store that accepts connections but
        # never answers would otherwise hold the read for the sum of every retry window. A cached
        # source keeps fetching the chunk in the background (its fetch is shielded). A timeout
        # context, unlike wait_for on 3.11, adds no task per read.
        deadline = asyncio.timeout(self.read_timeout)
        try:
            async with deadline:
                return await self.source.read(self.node.cipher_path, offset, length)
        except SourceError as exc:
            raise ReadError(f"{self.node.cipher_path}: ciphertext read failed: {exc}") from None
        except TimeoutError:
            if not deadline.expired():  # a timeout of the source's own, not our deadline
                raise ReadError(f"{self.node.cipher_path}: ciphertext read failed: timed out") from None
            raise ReadError(f"{self.node.cipher_path}: no ciphertext from {self.source.name} within "
                            f"{self.read_timeout:g} s", hint="object storage is slow or unreachable; the read can be "
                            "retried (read_timeout in [cachefs])") from None

    async def load_header(self) -> bytes:
        """Read and validate the file header once (cached)."""
        if self.file_id is None:
            data = await self._cipher_read(0, HEADER_LEN)
            self.file_id = content.parse_header(data, self.node.cipher_path)
        return self.file_id

    def _note_bad_block(self, exc: BlockAuthError) -> None:
        self.stats.bad_blocks += 1
        if exc.block not in self._logged_blocks:
            self._logged_blocks.add(exc.block)
            log.error("cachefs.bad_block", file=self.node.cipher_path, block=exc.block, error=exc.message)

    async def _decrypt_range(self, first: int, end: int) -> bytearray:
        file_id = await self.load_header()
        off, length = content.cipher_span(first, end, self.node.cipher_size)
        data = await self._cipher_read(off, length)
        if len(data) != length:
            raise ReadError(f"{self.node.cipher_path}: short ciphertext read ({len(data)} of {length} bytes)",
                            hint="the ciphertext file shrank while mounted")
        return self.cipher.decrypt_blocks(data, first, file_id, strict=self.strict, where=self.node.cipher_path)

    async def _chunk(self, index: int) -> bytearray:
        key = (self.node.inode, index)
        hit = self.cache.get(key)
        if hit is not None:
            self.stats.cache_hits += 1
            return hit
        pending = self._inflight.get(index)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[bytearray] = asyncio.get_running_loop().create_future()
        self._inflight[index] = future
        try:
            nblocks = (self.node.size + PLAIN_BLOCK - 1) // PLAIN_BLOCK
            first = index * CHUNK_BLOCKS
            plain = await self._decrypt_range(first, min(first + CHUNK_BLOCKS, nblocks))
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters re-raise it themselves
            raise
        finally:
            self._inflight.pop(index, None)
        self.stats.chunks_decrypted += 1
        self.cache.put(key, plain)
        future.set_result(plain)
        return plain

    async def _direct(self, offset: int, stop: int) -> memoryview:
        """Decrypt exactly the blocks of ``[offset, stop)`` into the shared plaintext scratch."""
        first, end = content.block_span(offset, stop - offset, self.node.size)
        file_id = await self.load_header()
        coff, clen = content.cipher_span(first, end, self.node.cipher_size)
        data = await self._cipher_read(coff, clen)
        if len(data) != clen:
            raise ReadError(f"{self.node.cipher_path}: short ciphertext read ({len(data)} of {clen} bytes)",
                            hint="the ciphertext file shrank while mounted")
        # No await from here to the return: the scratch buffer is ours until pyfuse3 replies.
        _, plain = self.buffers.views(end - first)
        self.cipher.decrypt_blocks(data, first, file_id, strict=self.strict, out=plain, where=self.node.cipher_path)
        self.stats.direct_reads += 1
        base = first * PLAIN_BLOCK
        return plain[offset - base:stop - base]

    def _local(self, fd: int, file_id: bytes, offset: int, stop: int) -> memoryview:
        """Local ciphertext: ``preadv`` into scratch, one batch decrypt into scratch, no allocation."""
        first = offset // PLAIN_BLOCK
        end = (stop + PLAIN_BLOCK - 1) // PLAIN_BLOCK
        coff, clen = content.cipher_span(first, end, self.node.cipher_size)
        cipher, plain = self.buffers.views(end - first)
        try:
            got = os.preadv(fd, [cipher[:clen]], coff)
        except OSError as exc:
            raise ReadError(f"{self.node.cipher_path}: ciphertext read failed: {exc.strerror}") from None
        if got != clen:
            raise ReadError(f"{self.node.cipher_path}: short ciphertext read ({got} of {clen} bytes)",
                            hint="the ciphertext file shrank while mounted")
        self.cipher.decrypt_blocks(cipher[:clen], first, file_id, strict=self.strict, out=plain,
                                   where=self.node.cipher_path)
        self.stats.direct_reads += 1
        base = first * PLAIN_BLOCK
        return plain[offset - base:stop - base]

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        """Plaintext bytes ``[offset, offset+size)`` clipped to EOF; :class:`CachefsError` → EIO.

        A returned ``memoryview`` may point into the mount's shared scratch buffer: use it (or copy
        it) before the next read.
        """
        if self.node.problem is not None:
            raise ReadError(self.node.problem)
        stop = min(offset + size, self.node.size)
        if offset >= stop:
            return b""
        sequential = offset == self._next_seq
        self._next_seq = stop
        try:
            fd = self._fd
            if fd is not None:
                file_id = self.file_id if self.file_id is not None else await self.load_header()
                return self._local(fd, file_id, offset, stop)
            if size < SMALL_READ and not sequential:
                c = offset // CHUNK_PLAIN
                hit = self.cache.get((self.node.inode, c))
                if hit is not None and stop <= (c + 1) * CHUNK_PLAIN:
                    self.stats.cache_hits += 1
                    return memoryview(hit)[offset - c * CHUNK_PLAIN:stop - c * CHUNK_PLAIN]
                return await self._direct(offset, stop)
            c0, c1 = offset // CHUNK_PLAIN, (stop - 1) // CHUNK_PLAIN
            if self.prefetch_chunks and sequential:
                self._start_prefetch(c1 + 1)
            try:
                if c0 == c1:
                    chunk = await self._chunk(c0)
                    base = c0 * CHUNK_PLAIN
                    if offset == base and stop - base == len(chunk):
                        return chunk
                    return memoryview(chunk)[offset - base:stop - base]
                parts = []
                for c in range(c0, c1 + 1):
                    chunk = await self._chunk(c)
                    base = c * CHUNK_PLAIN
                    parts.append(memoryview(chunk)[max(offset, base) - base:min(stop, base + len(chunk)) - base])
                return b"".join(parts)
            except BlockAuthError as exc:
                # A bad block somewhere in the chunk: serve exactly the requested blocks instead,
                # so only reads that touch the bad block fail.
                self._note_bad_block(exc)
                return await self._direct(offset, stop)
        except BlockAuthError as exc:
            self._note_bad_block(exc)
            raise
        except VolumeFormatError as exc:
            raise ReadError(exc.message, hint=exc.hint) from None

    def _start_prefetch(self, start: int) -> None:
        if self._prefetch_task is not None and not self._prefetch_task.done():
            return
        nchunks = (self.node.size + CHUNK_PLAIN - 1) // CHUNK_PLAIN
        wanted = [c for c in range(start, min(start + self.prefetch_chunks, nchunks))
                  if self.cache.get((self.node.inode, c)) is None and c not in self._inflight]
        if wanted:
            self._prefetch_task = asyncio.get_running_loop().create_task(self._prefetch(wanted))

    async def _prefetch(self, chunks: list[int]) -> None:
        for c in chunks:
            try:
                await self._chunk(c)
                self.stats.prefetched += 1
            except CachefsError:
                return  # the foreground read of that chunk will report it


def cipher_block_count(cipher_size: int) -> int:
    """Number of blocks in a ciphertext file (used by tests and the manifest check)."""
    if cipher_size <= HEADER_LEN:
        return 0
    return (cipher_size - HEADER_LEN + CIPHER_BLOCK - 1) // CIPHER_BLOCK
