"""The ``kbs-session-id`` cookie, handled by hand.

aiohttp's cookie jar ignores cookies from IP-address hosts (every Trustee in practice), Trustee
sets no ``Path``, and trustee-gateway can emit the header twice; so the client extracts the id
itself and sends it explicitly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from http.cookies import CookieError, SimpleCookie

SESSION_COOKIE = "kbs-session-id"
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def session_id_from_set_cookie(values: Iterable[str]) -> str | None:
    """Return the session id from ``Set-Cookie`` header values (last valid one wins)."""
    found: str | None = None
    for value in values:
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(value)
        except CookieError:
            continue
        morsel = jar.get(SESSION_COOKIE)
        if morsel is not None and _ID_RE.match(morsel.value):
            found = morsel.value
    return found


def session_id_from_cookie_header(value: str | None) -> str | None:
    """Server side: the session id from a request's ``Cookie`` header (duplicates tolerated)."""
    if not value:
        return None
    found = None
    for part in value.split(";"):
        name, _, val = part.strip().partition("=")
        if name == SESSION_COOKIE and _ID_RE.match(val):
            found = val
    return found


def cookie_header(session_id: str) -> str:
    if not _ID_RE.match(session_id):
        raise ValueError("invalid KBS session id")
    return f"{SESSION_COOKIE}={session_id}"
