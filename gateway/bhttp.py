"""Binary HTTP (RFC 9292) messages: pure codec for what the OHTTP tunnel carries.

Requests are decoded in both the known-length (framing indicator 0) and indeterminate-length (2)
forms, because which one TNG's ``bhttp`` encoder emits is not documented. Responses are encoded in
the indeterminate-length form (3) so a streamed backend answer (SSE tokens) can be sent piece by
piece: ``response_head`` once, ``response_chunk`` per backend chunk, ``response_end`` last. The
known-length response form (1) is also decodable, for clients.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.ohttp import decode_varint, encode_varint

MAX_FIELDS = 256
MAX_FIELD_BYTES = 64 * 1024


class BhttpError(ValueError):
    """Malformed Binary HTTP message."""


@dataclass
class Request:
    method: str
    scheme: str
    authority: str
    path: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    trailers: list[tuple[str, str]] = field(default_factory=list)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def at_end(self) -> bool:
        return self.pos >= len(self.data)

    def varint(self) -> int:
        parsed = decode_varint(self.data, self.pos)
        if parsed is None:
            raise BhttpError("Binary HTTP message is truncated inside a length")
        value, self.pos = parsed
        return value

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise BhttpError("Binary HTTP message is truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def vbytes(self, limit: int = MAX_FIELD_BYTES) -> bytes:
        n = self.varint()
        if n > limit:
            raise BhttpError(f"Binary HTTP field of {n} bytes exceeds {limit}")
        return self.take(n)


def _text(raw: bytes, what: str) -> str:
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise BhttpError(f"Binary HTTP {what} is not ASCII") from None
    if any(c in text for c in "\r\n\0"):
        raise BhttpError(f"Binary HTTP {what} contains CR, LF or NUL")
    return text


def _field_line(r: _Reader) -> tuple[str, str]:
    name = _text(r.vbytes(), "field name").lower()
    value = r.vbytes().decode("latin-1")
    if any(c in value for c in "\r\n\0"):
        raise BhttpError("Binary HTTP field value contains CR, LF or NUL")
    return name, value


def _fields(r: _Reader, known: bool) -> list[tuple[str, str]]:
    out = []
    if known:
        section = _Reader(r.take(r.varint()))
        while not section.at_end():
            out.append(_field_line(section))
            if len(out) > MAX_FIELDS:
                raise BhttpError("too many Binary HTTP fields")
        return out
    while True:
        parsed = decode_varint(r.data, r.pos)
        if parsed is None:
            return out  # truncated trailer-less message: allowed
        if parsed[0] == 0:
            r.pos = parsed[1]
            return out
        out.append(_field_line(r))
        if len(out) > MAX_FIELDS:
            raise BhttpError("too many Binary HTTP fields")


def _content(r: _Reader, known: bool, limit: int) -> bytes:
    if r.at_end():
        return b""
    if known:
        return r.vbytes(limit)
    parts, total = [], 0
    while not r.at_end():
        n = r.varint()
        if n == 0:
            break
        total += n
        if total > limit:
            raise BhttpError(f"Binary HTTP content exceeds {limit} bytes")
        parts.append(r.take(n))
    return b"".join(parts)


def decode_request(data: bytes, *, max_body: int = 64 * 1024 * 1024) -> Request:
    r = _Reader(data)
    indicator = r.varint()
    if indicator not in (0, 2):
        raise BhttpError(f"Binary HTTP framing indicator {indicator} is not a request")
    known = indicator == 0
    method = _text(r.vbytes(), "method")
    scheme = _text(r.vbytes(), "scheme")
    authority = _text(r.vbytes(), "authority")
    path = _text(r.vbytes(), "path")
    if not method or (not path.startswith("/") and path != "*"):
        raise BhttpError("Binary HTTP request lacks a method or an absolute path")
    request = Request(method, scheme, authority, path)
    if r.at_end():
        return request
    request.headers = _fields(r, known)
    request.body = _content(r, known, max_body)
    if not r.at_end():
        request.trailers = _fields(r, known)
    # the rest may only be padding (zeros)
    if any(r.data[r.pos:]):
        raise BhttpError("Binary HTTP request has trailing non-padding bytes")
    return request


def _encode_fields_indeterminate(fields: list[tuple[str, str]]) -> bytes:
    out = b""
    for name, value in fields:
        n, v = name.lower().encode("ascii"), value.encode("latin-1")
        out += encode_varint(len(n)) + n + encode_varint(len(v)) + v
    return out + b"\x00"


def _encode_fields_known(fields: list[tuple[str, str]]) -> bytes:
    out = b""
    for name, value in fields:
        n, v = name.lower().encode("ascii"), value.encode("latin-1")
        out += encode_varint(len(n)) + n + encode_varint(len(v)) + v
    return encode_varint(len(out)) + out


def encode_request(request: Request, *, known_length: bool = True) -> bytes:
    control = b"".join(encode_varint(len(x)) + x for x in (
        request.method.encode(), request.scheme.encode(), request.authority.encode(), request.path.encode()))
    if known_length:
        return (encode_varint(0) + control + _encode_fields_known(request.headers)
                + encode_varint(len(request.body)) + request.body + _encode_fields_known(request.trailers))
    body = encode_varint(len(request.body)) + request.body if request.body else b""
    return (encode_varint(2) + control + _encode_fields_indeterminate(request.headers) + body + b"\x00"
            + _encode_fields_indeterminate(request.trailers))


def response_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    if not 200 <= status <= 599:
        raise BhttpError(f"final response status {status} out of range")
    return encode_varint(3) + encode_varint(status) + _encode_fields_indeterminate(headers)


def response_chunk(data: bytes) -> bytes:
    return encode_varint(len(data)) + data if data else b""


def response_end(trailers: list[tuple[str, str]] | None = None) -> bytes:
    return b"\x00" + _encode_fields_indeterminate(trailers or [])


def decode_response(data: bytes, *, max_body: int = 64 * 1024 * 1024) -> Response:
    r = _Reader(data)
    indicator = r.varint()
    if indicator not in (1, 3):
        raise BhttpError(f"Binary HTTP framing indicator {indicator} is not a response")
    known = indicator == 1
    while True:
        status = r.varint()
        if not 100 <= status <= 599:
            raise BhttpError(f"Binary HTTP status {status} out of range")
        headers = _fields(r, known)
        if status >= 200:
            break
    response = Response(status, headers)
    response.body = _content(r, known, max_body)
    if not r.at_end():
        response.trailers = _fields(r, known)
    return response
