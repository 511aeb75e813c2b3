"""The root of the project's exception hierarchy.

Every package derives its errors from :class:`CaiError` so a daemon's top level can tell
"bad input / bad config, explain it in one line" apart from "a bug, show the traceback".
Messages say what failed and where; the optional ``hint`` says what to do about it.
"""

from __future__ import annotations


class CaiError(Exception):
    """Base for all project errors; its text is safe to show to an operator.

    Subclasses may set ``http_status`` so HTTP handlers can map them to a response code
    without a lookup table that would drift out of sync with the hierarchy.
    """

    http_status: int = 500

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} — {self.hint}"
        return self.message


class ConfigError(CaiError):
    """Configuration is missing, malformed or invalid; the daemon cannot start with it."""
