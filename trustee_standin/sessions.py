"""KBS RCAR sessions, kept in process memory like Trustee 1.5 (a restart drops them).

Development and tests only. A session is created by ``/auth`` (nonce + TEE), becomes attested on
``/attest`` (token stored) and is looked up by the ``kbs-session-id`` cookie afterwards. Expiry
uses the configured clock so tests can age sessions without sleeping.
"""

from __future__ import annotations

import base64
import email.utils
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from attestation_agent.kbs.cookies import SESSION_COOKIE
from attestation_agent.kbs.dialect import Dialect

NONCE_BYTES = 32
MAX_SESSIONS = 10_000  # bound memory: oldest sessions are evicted beyond this


@dataclass
class Session:
    id: str
    nonce: str
    tee: str
    dialect: Dialect
    expires_at: float
    token: str | None = None

    @property
    def attested(self) -> bool:
        return self.token is not None

    def set_cookie_value(self) -> str:
        """``Set-Cookie`` exactly as Trustee writes it: name, value, ``Expires`` and no ``Path``."""
        expires = email.utils.formatdate(self.expires_at, usegmt=True)
        return f"{SESSION_COOKIE}={self.id}; Expires={expires}"


class SessionStore:
    """In-memory sessions with lazy expiry (Trustee purges every 60 s; lookups here check expiry)."""

    def __init__(self, timeout_s: float, clock: Callable[[], float]) -> None:
        self._timeout = timeout_s
        self._clock = clock
        self._sessions: dict[str, Session] = {}

    def create(self, tee: str, dialect: Dialect) -> Session:
        self._purge()
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.pop(next(iter(self._sessions)))
        session = Session(
            id=uuid.uuid4().hex,
            nonce=base64.b64encode(os.urandom(NONCE_BYTES)).decode("ascii"),
            tee=tee,
            dialect=dialect,
            expires_at=self._clock() + self._timeout,
        )
        self._sessions[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        """The live session for ``session_id``; None when unknown or expired."""
        if session_id is None:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if self._clock() >= session.expires_at:
            del self._sessions[session_id]
            return None
        return session

    def clear(self) -> None:
        """Forget every session, as a KBS restart does."""
        self._sessions.clear()

    def __len__(self) -> int:
        return len(self._sessions)

    def _purge(self) -> None:
        now = self._clock()
        for sid in [sid for sid, s in self._sessions.items() if now >= s.expires_at]:
            del self._sessions[sid]
