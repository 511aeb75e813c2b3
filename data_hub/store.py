"""The resources directory: atomic 0400 files in a 0700 directory on a memory filesystem.

A reader (cachefs, the RAG app) may open a resource at any moment, including during a refresh, so a
file is only ever replaced by ``rename`` of a complete, fsynced temp file in the same directory:
readers see the old value or the new one, never a partial or empty file.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import tempfile
from dataclasses import dataclass
from pathlib import Path

from agents.logsetup import get_logger
from data_hub import memfs
from data_hub.errors import StorageError
from data_hub.uri import check_file_name

log = get_logger("cdh.store")

DIR_MODE = 0o700
READY_MARKER = ".ready"
MAX_VALUE = 16 * 1024 * 1024
_TMP_PREFIX = ".tmp-"


def resolve_owner(owner: str | None, group: str | None) -> tuple[int, int]:
    """uid/gid for chown (``-1`` = unchanged), from names or numbers."""
    uid = gid = -1
    if owner is not None:
        uid = int(owner) if owner.isdigit() else pwd.getpwnam(owner).pw_uid
    if group is not None:
        gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    return uid, gid


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes, *, mode: int = 0o400, uid: int = -1, gid: int = -1) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, chmod, rename.

    The temp file is created 0600 by ``mkstemp`` and only reaches its final mode after all bytes are
    on it, so nobody can open a half-written secret under its final name.
    """
    path = Path(path)
    directory = str(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=_TMP_PREFIX)
    except OSError as exc:
        raise StorageError(f"cannot create a temporary file in {directory}: {exc.strerror}",
                           hint="check the directory exists and is writable by the data hub") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
            if uid != -1 or gid != -1:
                os.fchown(fh.fileno(), uid, gid)
            os.fchmod(fh.fileno(), mode)
        os.replace(tmp, path)
        _fsync_dir(directory)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StorageError(f"cannot write {path}: {exc.strerror or type(exc).__name__}",
                           hint="check free space and permissions of the resources directory") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@dataclass
class ResourceStore:
    """The directory every resource file lands in."""

    directory: Path
    file_mode: int = 0o400
    uid: int = -1
    gid: int = -1
    allow_persistent: bool = False

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)

    def prepare(self) -> None:
        """Create the directory (0700, owner/group), check it is in memory, clear stale temp files."""
        try:
            self.directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            if self.directory.is_symlink() or not self.directory.is_dir():
                raise StorageError(f"{self.directory} is not a directory",
                                   hint="point resources_dir at a directory on tmpfs")
            if self.uid != -1 or self.gid != -1:
                os.chown(self.directory, self.uid, self.gid)
            os.chmod(self.directory, DIR_MODE)
        except OSError as exc:
            raise StorageError(f"cannot prepare the resources directory {self.directory}: {exc.strerror}",
                               hint="check the parent exists and the data hub may write it") from None
        fs_type = memfs.filesystem_type(str(self.directory))
        if fs_type not in memfs.MEMORY_FILESYSTEMS:
            if not self.allow_persistent:
                raise StorageError(
                    f"refusing to write secrets to {self.directory}: it is on {fs_type or 'an unknown filesystem'}, "
                    "not a memory filesystem (tmpfs/ramfs)",
                    hint="mount tmpfs there (e.g. /run is tmpfs on systemd hosts; in containers use a tmpfs "
                    "volume), or set allow_persistent_storage = true to accept the risk")
            log.warning("cdh.persistent_storage", directory=str(self.directory), filesystem=fs_type,
                        message="SECRETS WILL BE WRITTEN TO PERSISTENT STORAGE: allow_persistent_storage is set; "
                        "plaintext keys may survive a reboot and reach disk images or backups")
        for stale in self.directory.glob(_TMP_PREFIX + "*"):
            with contextlib.suppress(OSError):
                stale.unlink()

    def path(self, name: str) -> Path:
        return self.directory / check_file_name(name)

    def read(self, name: str) -> bytes | None:
        """The current file content, or None if absent."""
        try:
            with open(self.path(name), "rb") as fh:
                return fh.read(MAX_VALUE + 1)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(f"cannot read {self.path(name)}: {exc.strerror}") from None

    def write(self, name: str, value: bytes) -> bool:
        """Atomically (re)write resource ``name``; returns False when the file already held ``value``."""
        if self.read(name) == value:
            # Keep the inode and mtime: readers watching the file see no spurious change.
            return False
        atomic_write(self.path(name), value, mode=self.file_mode, uid=self.uid, gid=self.gid)
        return True

    def set_ready(self, ready: bool) -> None:
        """Create or remove the ``.ready`` marker (no content; it is not a secret)."""
        marker = self.directory / READY_MARKER
        if ready:
            atomic_write(marker, b"", mode=0o444, uid=self.uid, gid=self.gid)
        else:
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()
