"""Ciphertext from a local directory: the Kubernetes ``cipher-text-volume`` PVC or a host path.

Reads use ``os.pread`` in a worker thread so a slow disk never stalls the FUSE event loop. The
walk never follows symlinks (gocryptfs symlinks point at *encrypted* names and must be reported,
not resolved), and every path handed to :meth:`LocalDirSource.read` is checked to stay inside
the root, so a hostile volume or caller cannot read files outside it.
"""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

from cachefs.sources.base import CiphertextSource, SourceEntry, SourceError


def _check_relative(path: str) -> str:
    """Reject absolute paths and ``..``/``.`` segments: source paths are volume-relative."""
    if not path or path.startswith("/") or "\0" in path:
        raise SourceError(f"invalid volume path {path!r}", hint="paths are relative to the cipher directory")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise SourceError(f"invalid volume path {path!r}", hint="paths must not contain empty, '.' or '..' segments")
    return path


class LocalDirSource(CiphertextSource):
    """A gocryptfs cipher directory on a local filesystem."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.name = f"local:{self.root}"
        if not self.root.is_dir():
            raise SourceError(f"cipher directory {self.root} does not exist or is not a directory",
                              hint="check cipher_dir / the mounted cipher-text volume")

    def _walk(self) -> list[SourceEntry]:
        entries: list[SourceEntry] = []
        stack = [""]
        while stack:
            rel_dir = stack.pop()
            full_dir = self.root / rel_dir if rel_dir else self.root
            try:
                with os.scandir(full_dir) as it:
                    children = sorted(it, key=lambda e: e.name)
            except OSError as exc:
                raise SourceError(f"cannot list {full_dir}: {exc.strerror or exc}",
                                  hint="check permissions of the cipher directory") from None
            for child in children:
                rel = f"{rel_dir}/{child.name}" if rel_dir else child.name
                try:
                    st = child.stat(follow_symlinks=False)
                except OSError as exc:
                    raise SourceError(f"cannot stat {rel} in {self.root}: {exc.strerror or exc}") from None
                if stat.S_ISLNK(st.st_mode):
                    target = os.readlink(child.path)
                    entries.append(SourceEntry(rel, "symlink", len(target), f"{st.st_mtime_ns}-{st.st_size}", target))
                elif stat.S_ISDIR(st.st_mode):
                    entries.append(SourceEntry(rel, "dir", 0))
                    stack.append(rel)
                elif stat.S_ISREG(st.st_mode):
                    entries.append(SourceEntry(rel, "file", st.st_size, f"{st.st_mtime_ns}-{st.st_size}"))
                # Device nodes, fifos and sockets cannot be part of a model volume: ignored.
        return entries

    async def list_tree(self) -> list[SourceEntry]:
        """Walk the whole tree (without following symlinks) in a worker thread."""
        return await asyncio.to_thread(self._walk)

    def _open(self, path: str) -> int:
        full = self.root / _check_relative(path)
        try:
            # O_NOFOLLOW: the final component must not be a symlink leading out of the root;
            # intermediate components are directories we listed ourselves.
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise SourceError(f"cannot open {path} in {self.root}: {exc.strerror or exc}",
                              hint="the cipher directory changed or is unreadable") from None
        try:
            real = os.path.realpath(f"/proc/self/fd/{fd}")
            root = os.path.realpath(self.root)
            if not (real == root or real.startswith(root.rstrip("/") + "/")):
                raise SourceError(f"{path} resolves outside the cipher directory {self.root}",
                                  hint="the volume contains a symlinked directory; remove it")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _pread(self, path: str, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0:
            raise SourceError(f"invalid range {offset}+{length} for {path}")
        fd = self._open(path)
        try:
            chunks: list[bytes] = []
            done = 0
            while done < length:
                chunk = os.pread(fd, length - done, offset + done)
                if not chunk:
                    break
                chunks.append(chunk)
                done += len(chunk)
            return b"".join(chunks) if len(chunks) != 1 else chunks[0]
        except OSError as exc:
            raise SourceError(f"cannot read {path} in {self.root}: {exc.strerror or exc}") from None
        finally:
            os.close(fd)

    async def read(self, path: str, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset`` (shorter only at end of file) in a worker thread."""
        return await asyncio.to_thread(self._pread, path, offset, length)

    def _read_all(self, path: str) -> bytes:
        fd = self._open(path)
        try:
            size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        return self._pread(path, 0, size)

    async def read_all(self, path: str) -> bytes:
        """Read a whole file without listing the tree."""
        return await asyncio.to_thread(self._read_all, path)

    def open_fd(self, path: str) -> int:
        """An O_RDONLY descriptor for ``path`` (checked to stay in the root); the caller closes it.

        The filesystem uses it for synchronous ``pread`` on the fast local path, which avoids a
        thread hop per request (measured: executor pread costs ~30 % of passthrough speed).
        """
        return self._open(path)
