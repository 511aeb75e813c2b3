"""The interface between cachefs and wherever the ciphertext lives.

cachefs only ever needs two things from a volume's storage: the tree (paths, kinds, sizes,
versions) and byte ranges of files. Keeping that behind one small abstract class lets the
filesystem run unchanged over a local directory, an S3 bucket or a test double, and lets the
lazy mode fetch exactly the ranges the kernel asks for.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Literal

from agents.errors import CaiError


@dataclass(frozen=True)
class SourceEntry:
    """One node of a ciphertext tree, as reported by a source."""

    path: str  # relative POSIX path inside the volume, e.g. "gocryptfs.conf", "<encdir>/<encname>"
    kind: Literal["file", "dir", "symlink"]
    size: int  # bytes of ciphertext (0 for dirs)
    etag: str | None = None  # content version (local dir: f"{st_mtime_ns}-{st_size}"; S3: the ETag)
    target: str | None = None  # symlinks: the link target as stored (gocryptfs: encrypted, base64)


class SourceError(CaiError):
    """A source could not list or read ciphertext (missing path, I/O or network failure)."""

    http_status = 502


class CiphertextSource(abc.ABC):
    """Read-only access to an encrypted volume's files.

    Implementations must be safe to call concurrently from one event loop.
    """

    name: str = "source"

    @abc.abstractmethod
    async def list_tree(self) -> list[SourceEntry]:
        """Return the whole tree including directories (but not the root itself)."""

    @abc.abstractmethod
    async def read(self, path: str, offset: int, length: int) -> bytes:
        """Return exactly ``length`` bytes at ``offset``; shorter only at end of file."""

    async def read_all(self, path: str) -> bytes:
        """Return a whole file; the default finds its size through :meth:`list_tree`.

        Subclasses that can stat one path cheaply should override this.
        """
        for entry in await self.list_tree():
            if entry.path == path:
                if entry.kind != "file":
                    raise SourceError(f"cannot read {path!r} from {self.name}: it is a {entry.kind}, not a file")
                data = await self.read(path, 0, entry.size)
                if len(data) != entry.size:
                    raise SourceError(
                        f"short read of {path!r} from {self.name}: got {len(data)} of {entry.size} bytes",
                        hint="the file changed while it was read; retry",
                    )
                return data
        raise SourceError(f"{path!r} not found in {self.name}", hint="check the volume path and its contents")

    async def close(self) -> None:
        """Release connections or file handles; the default has nothing to release."""
        return None
