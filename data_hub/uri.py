"""Resource URIs ``kbs:///repo/type/tag`` and ``kbs://host:port/repo/type/tag``, and safe file names.

Sans-IO. The grammar is defined once, by :func:`agents.validators.kbs_uri` (which also checks the
``MODEL_KEY_ID``/``ALT_KEY_ID`` settings of cai.env) and Trustee's segment rule in
:class:`attestation_agent.kbs.resource.ResourcePath`; this module only turns a URI those accept into
a structured value, so a URI valid in cai.env is exactly a URI the data hub can fetch.

As in CoCo's CDH, the host part is informational when a Trustee URL is configured for the resource;
without one it names the Trustee (see :func:`data_hub.resource_map.build_resource_map`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from agents import validators
from attestation_agent.kbs.resource import ResourcePath
from data_hub.errors import ResourceUriError

MAX_URI = 1024
# Output file names under the resources directory: one path component, no hidden files.
FILE_NAME_RE = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9._-]{0,254}$")
_RESERVED_NAMES = frozenset({".ready"})


@dataclass(frozen=True)
class ResourceUri:
    """A parsed resource URI; ``host``/``port`` are None for ``kbs:///``."""

    path: ResourcePath
    host: str | None = None
    port: int | None = None

    @property
    def authority(self) -> str:
        """``host[:port]`` as written in the URI ('' for ``kbs:///``)."""
        if self.host is None:
            return ""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    def __str__(self) -> str:
        return f"kbs://{self.authority}/{self.path}"


def _shown(text: object) -> str:
    """The URI as quoted in error messages: bounded, so a hostile 1 MB URI does not flood logs."""
    value = repr(text)
    return value if len(value) <= 200 else value[:200] + "...'"


def parse_kbs_uri(text: str) -> ResourceUri:
    """Parse and strictly validate a resource URI; :class:`ResourceUriError` names the URI."""
    if not isinstance(text, str):
        raise ResourceUriError(f"resource URI {_shown(text)} is not a string")
    if len(text) > MAX_URI:
        raise ResourceUriError(f"resource URI {_shown(text)} is longer than {MAX_URI} characters")
    try:
        validators.kbs_uri(text)
        parts = urlsplit(text)
        path = ResourcePath.parse(parts.path)
        port = parts.port
    except ValueError as exc:
        raise ResourceUriError(f"invalid resource URI {_shown(text)}: {exc}",
                               hint="use kbs:///<repository>/<type>/<tag> or kbs://<host>:<port>/<repository>/"
                               "<type>/<tag>; segments use letters, digits, '_', '-', '.'") from None
    return ResourceUri(path=path, host=parts.hostname or None, port=port)


def resource_from_api_path(repository: str, type_: str, tag: str) -> ResourceUri:
    """The URI for the api-server-rest path ``/cdh/resource/<repo>/<type>/<tag>``."""
    return parse_kbs_uri(f"kbs:///{repository}/{type_}/{tag}")


def check_file_name(name: str) -> str:
    """Validate an output file name under the resources directory (one safe path component)."""
    if not isinstance(name, str) or not FILE_NAME_RE.match(name) or name in _RESERVED_NAMES:
        raise ResourceUriError(
            f"unsafe resource file name {_shown(name)}",
            hint="use 1-255 characters from [A-Za-z0-9._-], not starting with '.', without '/'")
    return name


def default_file_name(uri: ResourceUri) -> str:
    """The file name used when an entry names none: the resource tag (already a safe component)."""
    return check_file_name(uri.path.tag)
