"""KBS resource paths: ``<repository>/<type>/<tag>`` with Trustee's segment grammar."""

from __future__ import annotations

import re
from dataclasses import dataclass

# Trustee v1.5.2 ResourceDesc: each segment ^[A-Za-z0-9_-]+[A-Za-z0-9_.-]*$, exactly three.
SEGMENT_RE = re.compile(r"^[A-Za-z0-9_-]+[A-Za-z0-9_.-]*$")
MAX_SEGMENT = 255


@dataclass(frozen=True)
class ResourcePath:
    repository: str
    type: str
    tag: str

    def __post_init__(self) -> None:
        for name, value in (("repository", self.repository), ("type", self.type), ("tag", self.tag)):
            if not isinstance(value, str) or not SEGMENT_RE.match(value) or len(value) > MAX_SEGMENT:
                raise ValueError(
                    f"resource {name} {value!r} is invalid: use letters, digits, '_', '-', '.' "
                    "(not starting with '.')"
                )

    @classmethod
    def parse(cls, path: str) -> ResourcePath:
        """Parse ``repo/type/tag`` (a leading ``/`` is tolerated)."""
        parts = path.strip("/").split("/") if isinstance(path, str) else []
        if len(parts) != 3:
            raise ValueError(f"resource path {path!r} must have exactly three segments: <repository>/<type>/<tag>")
        return cls(*parts)

    def __str__(self) -> str:
        return f"{self.repository}/{self.type}/{self.tag}"

    @property
    def uri(self) -> str:
        return f"kbs:///{self}"
