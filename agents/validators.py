"""Reusable value validators for configuration settings.

Each validator takes an already type-coerced value, returns the (possibly normalised) value and
raises ``ValueError`` with a message saying what is wrong. :func:`agents.config.parse_settings`
wraps that into a :class:`~agents.errors.ConfigError` naming the key and the source, and hides
the value for secret settings, so validators may quote the value they reject.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Sequence
from pathlib import PurePosixPath
from urllib.parse import SplitResult, urlsplit

# One resource-path segment of a kbs:// URI (repository, type or tag), as Trustee accepts it.
KBS_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_-]+[A-Za-z0-9_.-]*$")
_HOST_LABEL_RE = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
# S3/OSS bucket names: lowercase letters, digits, dots and hyphens, 3..63, alnum at both ends.
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def _has_space_or_control(value: str) -> bool:
    return any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value)


def _split(value: str) -> SplitResult:
    """urlsplit that reports its own errors (e.g. a bad IPv6 literal) as ValueError."""
    if _has_space_or_control(value):
        raise ValueError(f"{value!r} contains whitespace or control characters")
    try:
        parts = urlsplit(value)
        _ = parts.port  # parses and range-checks the port
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a valid URL: {exc}") from None
    return parts


def hostname(value: str) -> str:
    """Validate a DNS name or an IP address (no port)."""
    candidate = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        ipaddress.ip_address(candidate)
        return value
    except ValueError:
        pass
    name = value[:-1] if value.endswith(".") else value
    if not name or len(name) > 253 or not all(_HOST_LABEL_RE.match(label) for label in name.split(".")):
        raise ValueError(f"{value!r} is not a valid host name or IP address")
    return value


def http_url(value: str) -> str:
    """Validate an absolute http(s) URL with a host, e.g. ``http://1.2.3.4:8081/api``."""
    parts = _split(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{value!r} is not an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"{value!r} has no host")
    hostname(parts.hostname)
    if parts.username is not None or parts.password is not None:
        # Credentials in URLs end up in logs and process listings.
        raise ValueError("URLs must not embed credentials (user:password@)")
    return value


def url_or_host(value: str) -> str:
    """Validate an endpoint given either as an http(s) URL or as ``host[:port]``."""
    if "://" in value:
        return http_url(value)
    if _has_space_or_control(value) or "/" in value:
        raise ValueError(f"{value!r} is neither an http(s) URL nor a host[:port]")
    host_port(value)
    return value


def host_port(value: str) -> str:
    """Validate ``host``, ``host:port`` or ``[v6addr]:port``."""
    parts = _split(f"//{value}")
    if not parts.hostname:
        raise ValueError(f"{value!r} has no host")
    if parts.username is not None:
        raise ValueError(f"{value!r} must not contain '@'")
    hostname(parts.hostname)
    return value


def kbs_uri(value: str) -> str:
    """Validate a KBS resource URI ``kbs://[host[:port]]/<repo>/<type>/<tag>``.

    The three segments are checked strictly because they become a path on the Trustee side and
    a file name under ``/run/cai/resources``: no ``..``, no empty segments, no extras.
    """
    parts = _split(value)
    if parts.scheme != "kbs":
        raise ValueError(f"{value!r} is not a kbs:// URI")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise ValueError(f"{value!r} must not have a query or fragment")
    if parts.netloc:
        host_port(parts.netloc)
    if not parts.path.startswith("/"):
        raise ValueError(f"{value!r} has no resource path; expected kbs:///<repo>/<type>/<tag>")
    segments = parts.path[1:].split("/")
    if len(segments) != 3:
        raise ValueError(
            f"{value!r} must have exactly three path segments <repo>/<type>/<tag>, got {len(segments)}"
        )
    for segment in segments:
        if ".." in segment or not KBS_SEGMENT_RE.match(segment):
            raise ValueError(
                f"{value!r} has an invalid segment {segment!r}; segments use letters, digits, '_', '-', '.'"
                " and must not be empty or contain '..'"
            )
    return value


def absolute_path(value: str) -> str:
    """Validate an absolute POSIX path (mount points, socket paths)."""
    if "\x00" in value:
        raise ValueError("path contains a NUL byte")
    if not PurePosixPath(value).is_absolute():
        raise ValueError(f"{value!r} is not an absolute path")
    return value


def positive(value: float) -> float:
    """A number greater than zero (durations, sizes)."""
    if value <= 0:
        raise ValueError(f"{value!r} must be greater than zero")
    return value


def seconds_up_to(maximum: float) -> Callable[[float], float]:
    """A validator for a duration in seconds within ``(0, maximum]``."""

    def check(value: float) -> float:
        if not 0 < value <= maximum:
            raise ValueError(f"{value!r} must be within (0, {maximum:g}] seconds")
        return value

    return check


def port(value: int) -> int:
    """Validate a TCP/UDP port number 1..65535."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"{value!r} is not a port number (1..65535)")
    return value


def ip_address(value: str) -> str:
    """Validate one IPv4/IPv6 address and return its canonical text form."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address") from None


def ip_list(value: Sequence[str]) -> list[str]:
    """Validate a list of IP addresses (e.g. ``MODEL_SHARING_PEER``), canonicalising each."""
    return [ip_address(item) for item in value]


def oss_bucket_path(value: str) -> str:
    """Validate ``<bucket>:<path>``, e.g. ``conf-ai:/qwen2.5-3b-gocryptfs/``."""
    bucket, sep, path = value.partition(":")
    if not sep:
        raise ValueError(f"{value!r} is not of the form <bucket>:<path>")
    if not _BUCKET_RE.match(bucket) or ".." in bucket:
        raise ValueError(
            f"bucket {bucket!r} is not a valid bucket name (3-63 lowercase letters, digits, '-', '.')"
        )
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        raise ValueError(f"object path {path!r} contains control characters")
    if ".." in path.split("/"):
        raise ValueError(f"object path {path!r} must not contain '..'")
    return value
