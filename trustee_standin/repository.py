"""The stand-in's resource store: Trustee's ``LocalFs`` backend, ``<dir>/<repo>/<type>/<tag>``.

Development and tests only. Paths come from :class:`ResourcePath`, whose segment grammar already
forbids ``/``, ``..`` and leading dots; the resolved path is still checked to stay inside the
repository so a symlink planted in it cannot redirect reads. Writes are atomic (temp + rename),
files 0600 and directories 0700, because stored values are secrets even in a demo.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from attestation_agent.kbs.resource import SEGMENT_RE, ResourcePath

MAX_RESOURCE = 16 * 1024 * 1024


class ResourceRepository:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, resource: ResourcePath) -> Path:
        path = self.root / resource.repository / resource.type / resource.tag
        root = self.root.resolve()
        if not path.resolve().is_relative_to(root):
            raise PermissionError(f"resource {resource} resolves outside the repository")
        return path

    def read(self, resource: ResourcePath) -> bytes:
        """The resource bytes; OSError when missing or unreadable (Trustee: PluginInternalError)."""
        path = self._path(resource)
        with path.open("rb") as fh:
            data = fh.read(MAX_RESOURCE + 1)
        if len(data) > MAX_RESOURCE:
            raise OSError(f"resource {resource} is larger than {MAX_RESOURCE} bytes")
        return data

    def write(self, resource: ResourcePath, data: bytes) -> None:
        path = self._path(resource)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{resource.tag}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def delete(self, resource: ResourcePath) -> None:
        self._path(resource).unlink()

    def list(self, repository: str | None = None, type_: str | None = None) -> list[dict[str, str]]:
        """Trustee 1.5.2 ``GET /kbs/v0/resources`` rows, optionally filtered."""
        rows: list[dict[str, str]] = []
        if not self.root.is_dir():
            return rows
        for repo_dir in sorted(self.root.iterdir()):
            if not repo_dir.is_dir() or not SEGMENT_RE.match(repo_dir.name) or (
                repository is not None and repo_dir.name != repository
            ):
                continue
            for type_dir in sorted(repo_dir.iterdir()):
                if not type_dir.is_dir() or not SEGMENT_RE.match(type_dir.name) or (
                    type_ is not None and type_dir.name != type_
                ):
                    continue
                for tag in sorted(type_dir.iterdir()):
                    if tag.is_file() and SEGMENT_RE.match(tag.name):
                        rows.append({"repository_name": repo_dir.name, "resource_type": type_dir.name,
                                     "resource_tag": tag.name})
        return rows
