"""Strict base64 helpers for the encodings the KBS protocol mixes (std with padding, url without)."""

from __future__ import annotations

import base64
import binascii
import re

_URL_RE = re.compile(r"^[A-Za-z0-9_-]*$")
_STD_RE = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")


def b64url_encode(data: bytes) -> str:
    """base64url without padding (JOSE)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Decode base64url; tolerate missing padding, reject any other alphabet."""
    if not isinstance(text, str):
        raise ValueError("expected a base64url string")
    stripped = text.rstrip("=")
    if not _URL_RE.match(stripped) or len(stripped) % 4 == 1:
        raise ValueError("not valid base64url")
    return base64.urlsafe_b64decode(stripped + "=" * (-len(stripped) % 4))


def b64std_encode(data: bytes) -> str:
    """Standard base64 with padding (Trustee evidence fields, nonces)."""
    return base64.b64encode(data).decode("ascii")


def b64std_decode(text: str) -> bytes:
    """Decode standard base64 (padding required, as Trustee's decoder requires)."""
    if not isinstance(text, str) or not _STD_RE.match(text) or len(text) % 4:
        raise ValueError("not valid standard base64")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError("not valid standard base64") from exc


def int_to_b64url(value: int, length: int | None = None) -> str:
    """Big-endian unsigned integer as base64url; minimal length unless ``length`` is given."""
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url_encode(value.to_bytes(size, "big"))


def b64url_to_int(text: str) -> int:
    return int.from_bytes(b64url_decode(text), "big")
