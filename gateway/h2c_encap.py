"""TNG <= 2.2.4 ``encap_in_http``/``decap_from_http`` outer layer: pure pieces.

Layering (TNG 2.0.0 … 2.2.4, read from ``tng/src/tunnel/{ingress,egress}/core/protocol/transport``
at tag v2.2.4): TCP → h2c (HTTP/2 with prior knowledge, cleartext) → one ``POST`` stream per rats-tls
session → TLS 1.3 (ALPN ``h2``, format-A certificate) → HTTP/2 ``CONNECT`` streams → application
bytes. The outer request carries ``:scheme http``, ``:authority`` = the inner request's authority,
``:path`` = the inner path rewritten by ``path_rewrites`` (``/`` when no rule matches) and the header
``tng: {}``; its body is the client's TLS records. The egress answers ``200`` with ``server: tng``
and its response body is the server's TLS records. An egress refuses streams without the ``tng``
header, answers plain HTTP/1 requests ``418`` (unless ``direct_forward`` lets them through) and gives
a client 5 s for its first byte.

Here: the outer request/response headers, the path rewriting (TNG's ``PathRewriteGroup``: full
match, first rule wins, ``$1``/``${name}`` and the pre-2.0 ``\\1`` in substitutions, Rust
semantics: an unknown group expands to nothing), the ``direct_forward`` matcher and the 418 answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from gateway.http_inspect import RequestInfo

TNG_HEADER = "tng"
FIRST_BYTE_TIMEOUT = 5.0
INNER_AUTHORITY = "tng.internal:443"  # the inner CONNECT target (hyper's authority of https://tng.internal/)
TEAPOT_BODY = (b"This service is secured by TNG secure session and you must establish the connection via TNG.\n\n"
               b"If this is an unexpected behavior, add path matching rules to `direct_forward` "
               b"(`decap_from_http.allow_non_tng_traffic_regexes` in TNG 2.2.4).")
_NAME = re.compile(r"[A-Za-z0-9_]+")


def outer_request_headers(authority: str, path: str) -> list[tuple[str, str]]:
    """The h2c ``POST`` that carries one rats-tls session."""
    return [(":method", "POST"), (":scheme", "http"), (":authority", authority), (":path", path),
            (TNG_HEADER, "{}")]


OUTER_RESPONSE_HEADERS = [(":status", "200"), ("server", "tng")]
CONNECT_REQUEST_HEADERS = [(":method", "CONNECT"), (":authority", INNER_AUTHORITY)]


def is_tng_request(headers: Sequence[tuple[str, str]]) -> bool:
    """An egress accepts an h2c stream as a tunnel only when it carries the ``tng`` header."""
    return any(name.lower() == TNG_HEADER for name, _ in headers)


def teapot_response() -> bytes:
    """TNG's answer to a plain HTTP/1 client on a ``decap_from_http`` port (418)."""
    return (b"HTTP/1.1 418 I'm a teapot\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (len(TEAPOT_BODY), TEAPOT_BODY))


def _expand(template: str, match: re.Match[str]) -> str:
    """Rust ``regex`` replacement syntax (``$n``, ``${name}``, ``$$``) plus TNG's ``\\n`` compatibility."""
    out, i = [], 0
    while i < len(template):
        c = template[i]
        if c == "\\" and i + 1 < len(template) and template[i + 1] == "\\":
            out.append("\\\\")  # an escaped backslash stays as it is (TNG only rewrites unescaped \\n)
            i += 2
            continue
        if c == "\\" and i + 1 < len(template) and template[i + 1].isdigit():
            j = i + 1
            while j < len(template) and template[j].isdigit():
                j += 1
            out.append(_group(match, template[i + 1:j]))
            i = j
            continue
        if c == "$" and i + 1 < len(template):
            if template[i + 1] == "$":
                out.append("$")
                i += 2
                continue
            if template[i + 1] == "{":
                end = template.find("}", i + 2)
                if end > i + 2 and _NAME.fullmatch(template[i + 2:end]):
                    out.append(_group(match, template[i + 2:end]))
                    i = end + 1
                    continue
            named = _NAME.match(template, i + 1)
            if named:
                out.append(_group(match, named.group()))
                i = named.end()
                continue
        out.append(c)
        i += 1
    return "".join(out)


def _group(match: re.Match[str], name: str) -> str:
    try:
        value = match.group(int(name) if name.isdigit() else name)
    except IndexError:  # no such group: Rust expands it to nothing
        return ""
    return value or ""


class PathRewriter:
    """``encap_in_http.path_rewrites``: the outer ``:path`` for an inner request path."""

    def __init__(self, rules: Sequence[tuple[str, str]]) -> None:
        self.rules = [(re.compile(f"(?:{regex})"), substitution) for regex, substitution in rules]

    def rewrite(self, path: str) -> str:
        for regex, substitution in self.rules:
            match = regex.fullmatch(path)
            if match is not None:
                return _expand(substitution, match)
        return "/"


class DirectForward:
    """``direct_forward`` (``http_path`` regexes, searched anywhere in the path as Rust ``is_match``)."""

    def __init__(self, regexes: Sequence[str]) -> None:
        self.regexes = [re.compile(r) for r in regexes]

    def __bool__(self) -> bool:
        return bool(self.regexes)

    def matches(self, info: RequestInfo) -> bool:
        return any(r.search(info.path) for r in self.regexes)
