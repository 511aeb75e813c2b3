"""The read-only pyfuse3 filesystem that serves an unlocked gocryptfs volume.

The tree is immutable while mounted, so inode numbers are fixed (derived from ciphertext paths),
entry/attribute timeouts are long, and files are opened with ``keep_cache`` so re-reads by other
processes (several vLLM workers opening the same shards) come from the kernel page cache instead
of being decrypted again. All request handlers run on one asyncio loop; see ``reader.py`` for why
decryption is inline.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyfuse3

from agents.logsetup import get_logger
from cachefs.errors import CachefsError, ManifestError
from cachefs.gocryptfs.content import ContentCipher
from cachefs.manifest import ManifestEntry
from cachefs.reader import FileReader, PlainCache, ReadBuffers, ReaderStats
from cachefs.volume import GocryptfsVolume, Node

log = get_logger("cachefs.fs")

ATTR_TIMEOUT = 3600.0
BLKSIZE = 1 << 20
HASH_CHUNK = 4 << 20


#: Seconds after its latest failure that a file stays in ``/status`` ``failing`` without a new one.
FAILING_FOR = 300.0


@dataclass
class ReadFailure:
    """The latest failure of one file (for ``/status``), and when its log line was last written."""

    file: str  # ciphertext object key
    error: str = ""
    count: int = 0
    last: float = 0.0  # time.monotonic() of the latest failure
    logged_at: float | None = None


@dataclass(frozen=True)
class FsOptions:
    """Behaviour knobs of the filesystem (from the daemon's settings)."""

    plaintext_cache_bytes: int = 256 << 20
    strict: bool = False
    prefetch_chunks: int = 0
    read_timeout: float | None = None  # seconds a read may wait for remote ciphertext before EIO
    uid: int = 0
    gid: int = 0
    decrypt_engine: str | None = None  # auto | native | python; None: CAI_CACHEFS_DECRYPT_ENGINE or auto


class CachefsOperations(pyfuse3.Operations):
    """pyfuse3 handlers: lookup/getattr/readdir/readlink/open/read/release/statfs."""

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, volume: GocryptfsVolume, options: FsOptions | None = None,
                 manifest: dict[str, ManifestEntry] | None = None) -> None:
        super().__init__()
        self.volume = volume
        self.nodes = volume.tree.nodes
        self.options = options or FsOptions()
        self.manifest = manifest
        self.cipher = ContentCipher(volume.keys.content, engine=self.options.decrypt_engine)
        self.buffers = ReadBuffers()
        log.info("cachefs.decrypt_engine", engine=self.cipher.engine)
        self.cache = PlainCache(self.options.plaintext_cache_bytes)
        self.stats = ReaderStats()
        self._readers: dict[int, FileReader] = {}
        self._open_count: dict[int, int] = {}
        self._handles: dict[int, int] = {}
        self._next_fh = 1
        self._verified: set[int] = set()
        self._refused: dict[int, str] = {}
        self._verify_locks: dict[int, asyncio.Lock] = {}
        self._time_ns = time.time_ns()
        self._sorted_children: dict[int, list[tuple[bytes, int]]] = {}
        #: Reads answered with EIO, and the latest failure per file still failing (for ``/status``).
        self.read_errors = 0
        self.failing: dict[int, ReadFailure] = {}
        self.on_read_error: Callable[[], None] | None = None

    # -- attributes -------------------------------------------------------------------------------

    def _node(self, inode: int) -> Node:
        node = self.nodes.get(inode)
        if node is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return node

    def _attr(self, node: Node) -> pyfuse3.EntryAttributes:
        attr = pyfuse3.EntryAttributes()
        attr.st_ino = node.inode
        if node.kind == "dir":
            attr.st_mode = stat.S_IFDIR | 0o555
            attr.st_nlink = 2 + sum(1 for c in node.children.values() if self.nodes[c].kind == "dir")
        elif node.kind == "symlink":
            attr.st_mode = stat.S_IFLNK | 0o777
            attr.st_nlink = 1
        else:
            attr.st_mode = stat.S_IFREG | 0o444
            attr.st_nlink = 1
        attr.st_size = node.size
        attr.st_blksize = BLKSIZE
        attr.st_blocks = (node.size + 511) // 512
        attr.st_uid = self.options.uid
        attr.st_gid = self.options.gid
        attr.st_atime_ns = attr.st_mtime_ns = attr.st_ctime_ns = self._time_ns
        attr.generation = 0
        attr.entry_timeout = ATTR_TIMEOUT
        attr.attr_timeout = ATTR_TIMEOUT
        return attr

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        return self._attr(self._node(inode))

    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        parent = self._node(parent_inode)
        if name == b".":
            return self._attr(parent)
        if name == b"..":
            return self._attr(self._node(parent.parent))
        child = parent.children.get(name)
        if child is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self._attr(self.nodes[child])

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        return None  # the tree is permanent for the life of the mount

    # -- directories ------------------------------------------------------------------------------

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._node(inode)
        if node.kind != "dir":
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = self._sorted_children.get(fh)
        if entries is None:
            entries = sorted(self._node(fh).children.items())
            self._sorted_children[fh] = entries
        for index in range(start_id, len(entries)):
            name, inode = entries[index]
            if not pyfuse3.readdir_reply(token, name, self._attr(self.nodes[inode]), index + 1):
                break

    async def releasedir(self, fh: int) -> None:
        return None

    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._node(inode)
        if node.kind != "symlink" or node.target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.target

    # -- files ------------------------------------------------------------------------------------

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.kind != "file":
            raise pyfuse3.FUSEError(errno.EISDIR if node.kind == "dir" else errno.EINVAL)
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_APPEND):
            raise pyfuse3.FUSEError(errno.EROFS)
        if node.problem is not None:
            log.error("cachefs.file_refused", file=node.cipher_path, reason=node.problem)
            raise pyfuse3.FUSEError(errno.EIO)
        reader = self._readers.get(inode)
        if reader is None:
            try:
                reader = FileReader(node, self.volume.source, self.cipher, self.cache, self.stats,
                                    strict=self.options.strict, prefetch_chunks=self.options.prefetch_chunks,
                                    buffers=self.buffers, read_timeout=self.options.read_timeout)
            except CachefsError as exc:
                log.error("cachefs.open_failed", file=node.cipher_path, error=str(exc))
                raise pyfuse3.FUSEError(errno.EIO) from None
            self._readers[inode] = reader
        self._open_count[inode] = self._open_count.get(inode, 0) + 1
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = inode
        try:
            if self.manifest is not None:
                await self._check_manifest(node, reader)
            elif node.size:
                await reader.load_header()
        except CachefsError as exc:
            await self.release(fh)
            if isinstance(exc, ManifestError):
                log.error("cachefs.file_refused", file=node.cipher_path, reason=str(exc))
            else:  # the header could not be fetched or is malformed: counted and reported like a failed read
                self._read_failed(inode, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        return pyfuse3.FileInfo(fh=fh, keep_cache=True, direct_io=False)

    async def read(self, fh: int, off: int, size: int) -> bytes | memoryview:
        inode = self._handles.get(fh)
        if inode is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        try:
            data = await self._readers[inode].read(off, size)
        except CachefsError as exc:
            self._read_failed(inode, exc)
            raise pyfuse3.FUSEError(errno.EIO) from None
        if self.failing and inode in self.failing:
            failed = self.failing.pop(inode)
            log.info("cachefs.read_recovered", file=failed.file, failed_reads=failed.count)
        return data

    def failing_now(self) -> list[ReadFailure]:
        """Files whose latest read or open failed within :data:`FAILING_FOR` seconds (oldest dropped).

        A file leaves the list on its next good read, or when nobody has failed on it for that
        long (the application gave up, or never came back): "failing" means now, not ever.
        """
        now = time.monotonic()
        for inode in [i for i, f in self.failing.items() if now - f.last > FAILING_FOR]:
            del self.failing[inode]
        return list(self.failing.values())

    def _read_failed(self, inode: int, exc: CachefsError) -> None:
        """Count an EIO; log the first failure of a file and then at most one line per file every 30 s.

        Why not every read: a reader retrying in a loop (or the kernel's read-ahead) would turn an
        object-storage outage into thousands of identical lines.
        """
        self.read_errors += 1
        if self.on_read_error is not None:
            self.on_read_error()
        node = self.nodes[inode]
        now = time.monotonic()
        entry = self.failing.setdefault(inode, ReadFailure(node.cipher_path))
        entry.count += 1
        entry.error = exc.message
        entry.last = now
        if entry.logged_at is None or now - entry.logged_at >= 30.0:
            entry.logged_at = now
            log.error("cachefs.read_failed", file=node.cipher_path, error=exc.message, failed_reads=entry.count,
                      hint="the application got EIO (never unauthenticated bytes); it can retry the read")

    async def release(self, fh: int) -> None:
        inode = self._handles.pop(fh, None)
        if inode is None:
            return
        left = self._open_count.get(inode, 1) - 1
        if left <= 0:
            self._open_count.pop(inode, None)
            reader = self._readers.pop(inode, None)
            if reader is not None:
                reader.close()
        else:
            self._open_count[inode] = left

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        data = pyfuse3.StatvfsData()
        total = sum(n.size for n in self.nodes.values() if n.kind == "file")
        data.f_bsize = BLKSIZE
        data.f_frsize = 4096
        data.f_blocks = (total + 4095) // 4096
        data.f_bfree = data.f_bavail = 0
        data.f_files = len(self.nodes)
        data.f_ffree = data.f_favail = 0
        data.f_namemax = 255
        return data

    # -- manifest ---------------------------------------------------------------------------------

    async def _check_manifest(self, node: Node, reader: FileReader) -> None:
        """Refuse a file unless size, file ID and ciphertext SHA-256 match the trusted manifest.

        The hash needs one pass over the file's ciphertext, done once per mount on first open.
        """
        if node.inode in self._verified:
            return
        if node.inode in self._refused:
            raise ManifestError(self._refused[node.inode])
        lock = self._verify_locks.setdefault(node.inode, asyncio.Lock())
        async with lock:
            if node.inode in self._verified:
                return
            try:
                await self._verify(node, reader)
            except CachefsError as exc:
                self._refused[node.inode] = exc.message
                raise
            self._verified.add(node.inode)

    async def _verify(self, node: Node, reader: FileReader) -> None:
        assert self.manifest is not None
        entry = self.manifest.get(node.cipher_path)
        where = node.cipher_path
        if entry is None:
            raise ManifestError(f"{where} is not listed in the volume manifest")
        if entry.size != node.cipher_size:
            raise ManifestError(f"{where}: ciphertext size {node.cipher_size} differs from the manifest ({entry.size})")
        if node.cipher_size == 0:
            return
        file_id = await reader.load_header()
        if file_id.hex() != entry.file_id:
            raise ManifestError(f"{where}: file ID differs from the manifest (file swapped or replaced)")
        digest = await self._hash(node, reader)
        if digest != entry.sha256:
            raise ManifestError(f"{where}: ciphertext SHA-256 differs from the manifest (modified or rolled back)")

    async def _hash(self, node: Node, reader: FileReader) -> str:
        h = hashlib.sha256()
        fd = getattr(reader, "_fd", None)
        if fd is not None:
            def run() -> str:
                pos = 0
                while pos < node.cipher_size:
                    chunk = os.pread(fd, min(HASH_CHUNK, node.cipher_size - pos), pos)
                    if not chunk:
                        break
                    h.update(chunk)
                    pos += len(chunk)
                return h.hexdigest()
            return await asyncio.to_thread(run)
        pos = 0
        while pos < node.cipher_size:
            chunk = await self.volume.source.read(node.cipher_path, pos, min(HASH_CHUNK, node.cipher_size - pos))
            if not chunk:
                break
            h.update(chunk)
            pos += len(chunk)
        return h.hexdigest()


def mount_options(*, allow_other: bool, fsname: str = "cachefs") -> set[str]:
    """FUSE mount options: read-only, kernel permission checks, optionally visible to other users."""
    opts = {f"fsname={fsname}", "subtype=cachefs", "ro", "default_permissions"}
    if allow_other:
        opts.add("allow_other")
    return opts


def bdi_name(st_dev: int) -> str:
    """Name under /sys/class/bdi of a FUSE mount's backing device (``major:minor``)."""
    return f"{os.major(st_dev)}:{os.minor(st_dev)}"


def set_read_ahead(mountpoint: str, kb: int) -> bool:
    """Raise the mount's read-ahead (128 KiB → 1 MiB doubled FUSE throughput here). Blocking: use a thread."""
    path = f"/sys/class/bdi/{bdi_name(os.stat(mountpoint).st_dev)}/read_ahead_kb"
    try:
        with open(path, "w") as f:
            f.write(str(kb))
    except OSError as exc:
        log.warning("cachefs.read_ahead_not_set", path=path, error=exc.strerror)
        return False
    return True
