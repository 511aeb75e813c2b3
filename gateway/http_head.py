"""The HTTP/1.x request head an ``http_proxy`` client sends: pure parsing and rewriting.

Two forms reach a forward proxy: ``CONNECT host:port`` (tunnel bytes as they are) and
absolute-form ``GET http://host[:port]/path`` (the proxy must send origin-form ``GET /path``
upstream and drop the hop-by-hop ``Proxy-*`` headers). Bounded, strict, raises ``ProxyRequestError``.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

MAX_HEAD = 64 * 1024
_HOP_BY_HOP = (b"proxy-connection", b"proxy-authorization", b"connection", b"keep-alive")


class ProxyRequestError(ValueError):
    """The client's proxy request is malformed; the message is safe to send back (400)."""


@dataclass(frozen=True)
class ProxyRequest:
    method: str
    host: str
    port: int
    connect: bool
    origin_form: bytes  # the head to send upstream (absolute-form only)


def _host_port(authority: str, default_port: int) -> tuple[str, int]:
    if not authority or len(authority) > 300:
        raise ProxyRequestError("missing or oversized target authority")
    if authority.startswith("["):
        host, _, rest = authority[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, sep, port_text = authority.rpartition(":")
        if not sep:
            host, port_text = authority, ""
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise ProxyRequestError(f"target port {port_text[:10]!r} is not a number") from None
    if not host or not 0 < port < 65536:
        raise ProxyRequestError("target host or port is invalid")
    return host, port


def _request_line(head: bytes) -> tuple[str, str, str, list[bytes]]:
    """Method, target and version of a complete head, and its lines (request line first)."""
    if len(head) > MAX_HEAD or not head.endswith(b"\r\n\r\n"):
        raise ProxyRequestError("request head is incomplete or larger than 64 KiB")
    lines = head[:-4].split(b"\r\n")
    try:
        method, target, version = lines[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise ProxyRequestError("request line is not 'METHOD target HTTP/1.x'") from None
    if version not in ("HTTP/1.1", "HTTP/1.0") or not method.isalpha():
        raise ProxyRequestError("request line is not 'METHOD target HTTP/1.x'")
    return method, target, version, lines


def _split_url(target: str) -> SplitResult:
    try:
        return urlsplit(target)
    except ValueError:  # e.g. "http://e[x/": an unbalanced IPv6 bracket
        raise ProxyRequestError("request target is not a valid URL") from None


def parse_proxy_request(head: bytes) -> ProxyRequest:
    """Parse a complete request head (up to and including the blank line)."""
    method, target, version, lines = _request_line(head)
    if method == "CONNECT":
        host, port = _host_port(target, 443)
        return ProxyRequest(method, host, port, True, b"")
    parts = _split_url(target)
    if parts.scheme != "http" or not parts.netloc:
        raise ProxyRequestError("a proxy request needs an absolute http:// target or CONNECT")
    host, port = _host_port(parts.netloc, 80)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    headers = [line for line in lines[1:] if line.split(b":", 1)[0].strip().lower() not in _HOP_BY_HOP]
    # One request per upstream connection: later keep-alive requests on this client connection would
    # still be in absolute form, so ask both ends to close after this exchange.
    out = [f"{method} {path} {version}".encode("ascii"), *headers, b"Connection: close"]
    return ProxyRequest(method, host, port, False, b"\r\n".join(out) + b"\r\n\r\n")


@dataclass(frozen=True)
class OriginRequest:
    method: str
    path: str
    headers: list[tuple[str, str]]


def parse_origin_request(head: bytes) -> OriginRequest:
    """An origin-form (``GET /path HTTP/1.1``) or absolute-form head, as method, path and header fields."""
    method, target, _version, lines = _request_line(head)
    if not target.startswith("/"):
        parts = _split_url(target)
        if parts.scheme != "http":
            raise ProxyRequestError("request target must be origin-form or http:// absolute-form")
        target = (parts.path or "/") + ("?" + parts.query if parts.query else "")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise ProxyRequestError("malformed header line")
        headers.append((name.decode("latin-1").lower(), value.strip().decode("latin-1")))
    return OriginRequest(method, target, headers)
