"""Which filesystem holds a path, from ``/proc/self/mountinfo`` (sans-IO parser + a thin reader).

Secrets must never reach persistent disk, so the data hub refuses to write unless the resources
directory lives on a memory filesystem. ``os.statvfs`` has no filesystem type, and ``statfs(2)``
is not in the standard library; mountinfo is authoritative and available in every container.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})
MOUNTINFO = "/proc/self/mountinfo"
_ESCAPE_RE = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fs_type: str


def _unescape(field: str) -> str:
    # The kernel escapes space, tab, newline and backslash in paths as \ooo octal.
    return _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """Mounts in mountinfo order (later entries shadow earlier ones at the same point).

    Malformed lines are skipped rather than fatal: a line we cannot read cannot make an
    unknown filesystem look like tmpfs, because only parsed entries can match.
    """
    mounts: list[Mount] = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)
        except ValueError:
            continue
        if len(fields) < sep + 2 or len(fields) < 5:
            continue
        mounts.append(Mount(mount_point=_unescape(fields[4]), fs_type=fields[sep + 1]))
    return mounts


def _contains(mount_point: str, path: str) -> bool:
    if mount_point == "/":
        return path.startswith("/")
    return path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


def filesystem_of(path: str, mounts: Sequence[Mount]) -> str | None:
    """The type of the filesystem mounted deepest above the absolute, resolved ``path``."""
    best: Mount | None = None
    for mount in mounts:
        if _contains(mount.mount_point, path) and (
            best is None or len(mount.mount_point) >= len(best.mount_point)
        ):
            best = mount
    return best.fs_type if best is not None else None


def filesystem_type(path: str, *, mountinfo: str = MOUNTINFO) -> str | None:
    """The filesystem type holding ``path`` (which must exist), or None if unknown."""
    resolved = os.path.realpath(path)
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as fh:
            text = fh.read(4 * 1024 * 1024)
    except OSError:
        return None
    return filesystem_of(resolved, parse_mountinfo(text))


def is_memory_filesystem(path: str, *, mountinfo: str = MOUNTINFO) -> bool:
    """True if ``path`` is on tmpfs or ramfs."""
    return filesystem_type(path, mountinfo=mountinfo) in MEMORY_FILESYSTEMS
