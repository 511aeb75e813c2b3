"""Which HTTP request does a byte stream start with? Pure inspection of the first request.

TNG <= 2.2.4 needs the inner request's authority and path in two places: the ingress names the outer
h2c ``POST`` after them (``encap_in_http``), and the egress decides from the path whether a
connection is let through in plaintext (``direct_forward``) or gets ``418``. Like TNG's
``http_inspector`` this understands an HTTP/1.x request head (``Host`` or absolute-form target) and
an HTTP/2 prior-knowledge connection (preface, then the first ``HEADERS`` block, HPACK-decoded); the
path is the URI path without the query, as in TNG. ``inspect_request`` returns ``None`` while more
bytes are needed and raises ``InspectError`` for anything else; it never consumes input, so the
caller replays the bytes it buffered.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

import hpack

MAX_INSPECT = 64 * 1024
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_METHOD = re.compile(rb"[A-Z]{1,20} ")
_HEADERS, _CONTINUATION = 0x1, 0x9
_END_HEADERS, _PADDED, _PRIORITY = 0x4, 0x8, 0x20


class InspectError(ValueError):
    """The stream does not start with an HTTP/1.x or HTTP/2 request this inspector understands."""


@dataclass(frozen=True)
class RequestInfo:
    protocol: str  # "http1" or "http2"
    authority: str
    path: str


def looks_like_http2(data: bytes) -> bool:
    """True when ``data`` is (a prefix of) the HTTP/2 connection preface."""
    n = min(len(data), len(H2_PREFACE))
    return n > 0 and data[:n] == H2_PREFACE[:n]


def inspect_request(data: bytes) -> RequestInfo | None:
    """The first request's protocol, authority and path; ``None`` if ``data`` is a prefix of one."""
    if not data:
        return None
    if looks_like_http2(data):
        return _inspect_h2(data)
    if not _METHOD.match(data[:21]) and not (len(data) < 21 and data.isalpha() and data.isupper()):
        raise InspectError("the stream does not start with an HTTP/1.x request or the HTTP/2 preface")
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) > MAX_INSPECT:
            raise InspectError(f"HTTP/1 request head is larger than {MAX_INSPECT} bytes")
        return None
    return _inspect_h1(data[:end])


def _inspect_h1(head: bytes) -> RequestInfo:
    lines = head.split(b"\r\n")
    try:
        method, target, version = lines[0].decode("ascii").split(" ")
    except (UnicodeDecodeError, ValueError):
        raise InspectError("HTTP/1 request line is not 'METHOD target HTTP/1.x'") from None
    if not version.startswith("HTTP/1."):
        raise InspectError("HTTP/1 request line is not 'METHOD target HTTP/1.x'")
    host = None
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"host":
            host = value.strip().decode("latin-1")
            break
    if target.startswith("/"):
        path = target.split("?", 1)[0]
        if not host:
            raise InspectError("HTTP/1 request has no Host header")
        return RequestInfo("http1", _authority(host), path)
    if method == "CONNECT" or target == "*":
        raise InspectError(f"HTTP/1 {method} {target[:50]!r} names no origin path")
    parts = urlsplit(target)
    if not parts.scheme or not parts.netloc:
        raise InspectError("HTTP/1 request target is neither origin-form nor absolute-form")
    return RequestInfo("http1", _authority(parts.netloc), parts.path or "/")


def _authority(value: str) -> str:
    if not value or len(value) > 300 or any(c in value for c in " \t/\\@") or not value.isprintable():
        raise InspectError("request authority is empty, oversized or malformed")
    return value


def _inspect_h2(data: bytes) -> RequestInfo | None:
    if len(data) < len(H2_PREFACE):
        return None
    offset, block, stream = len(H2_PREFACE), b"", None
    while True:
        if offset > MAX_INSPECT:
            raise InspectError(f"no HTTP/2 request headers within the first {MAX_INSPECT} bytes")
        if len(data) < offset + 9:
            return None
        length = int.from_bytes(data[offset:offset + 3], "big")
        kind, flags = data[offset + 3], data[offset + 4]
        stream_id = int.from_bytes(data[offset + 5:offset + 9], "big") & 0x7FFFFFFF
        if length > MAX_INSPECT:
            raise InspectError("HTTP/2 frame is larger than the inspection limit")
        if len(data) < offset + 9 + length:
            return None
        payload = data[offset + 9:offset + 9 + length]
        offset += 9 + length
        if stream is None and kind != _HEADERS:
            if kind == _CONTINUATION:
                raise InspectError("HTTP/2 CONTINUATION frame without HEADERS")
            continue  # SETTINGS, WINDOW_UPDATE, PRIORITY, PING before the first request
        if stream is None:
            stream = stream_id
            if flags & _PADDED:
                if not payload or payload[0] >= len(payload):
                    raise InspectError("HTTP/2 HEADERS padding exceeds the frame")
                payload = payload[1:len(payload) - payload[0]]
            if flags & _PRIORITY:
                if len(payload) < 5:
                    raise InspectError("HTTP/2 HEADERS frame is too short for its priority fields")
                payload = payload[5:]
        elif kind != _CONTINUATION or stream_id != stream:
            raise InspectError("HTTP/2 header block interrupted by another frame")
        block += payload
        if flags & _END_HEADERS:
            return _from_header_block(block)


def _from_header_block(block: bytes) -> RequestInfo:
    try:
        headers = hpack.Decoder().decode(block, raw=True)
    except Exception:  # hpack raises several types (HPACKDecodingError, InvalidTableIndex, ...)
        raise InspectError("HTTP/2 request headers are not valid HPACK") from None
    fields = {name: value for name, value in headers}
    authority = fields.get(b":authority") or fields.get(b"host")
    path = fields.get(b":path")
    if not authority or path is None:
        raise InspectError("HTTP/2 request has no :authority or :path")
    try:
        text = path.decode("ascii")
        return RequestInfo("http2", _authority(authority.decode("ascii")), text.split("?", 1)[0] or "/")
    except UnicodeDecodeError:
        raise InspectError("HTTP/2 request :authority or :path is not ASCII") from None
