"""Secret redaction for everything that leaves the process as text.

Secrets (Trustee-released keys, object-storage credentials, tokens) must never appear in a log
line, an error message or a metric label. Call sites cannot be trusted to remember that, so the
registry works the other way round: whoever *learns* a secret registers it once, and every log
line is scrubbed of it (and of its common encodings) on the way out.
"""

from __future__ import annotations

import base64
import binascii
import re
import threading
from collections.abc import Iterable, MutableMapping
from typing import Any

REDACTED = "[REDACTED]"

# Shorter values would redact ordinary words and numbers all over the logs.
MIN_SECRET_LENGTH = 4

# Event keys whose *value* is secret by name alone, whether or not anyone registered it.
SECRET_KEY_PATTERN = re.compile(
    r"password|passwd|secret|token|private_key|authorization|cookie|session_id|key_material",
    re.IGNORECASE,
)

_lock = threading.Lock()
# Reference counts: two components may register the same value; one forgetting it must not
# un-redact it for the other.
_secrets: dict[str, int] = {}
_pattern: re.Pattern[str] | None = None


def _text_forms(value: str | bytes) -> set[str]:
    """Return every textual form under which ``value`` is likely to show up in a log line."""
    forms: set[str] = set()
    if isinstance(value, str):
        forms.add(value)
        raw = value.encode("utf-8")
    else:
        raw = bytes(value)
        try:
            forms.add(raw.decode("utf-8"))
        except UnicodeDecodeError:
            pass
    if raw:
        hexed = binascii.hexlify(raw).decode("ascii")
        std = base64.b64encode(raw).decode("ascii")
        url = base64.urlsafe_b64encode(raw).decode("ascii")
        forms.update({hexed, hexed.upper(), std, std.rstrip("="), url, url.rstrip("=")})
    return {form for form in forms if len(form) >= MIN_SECRET_LENGTH}


def _too_short(value: str | bytes) -> bool:
    return len(value) < MIN_SECRET_LENGTH


def register_secret(value: str | bytes) -> None:
    """Make ``value`` (and its utf-8/hex/base64 forms) disappear from all future log output."""
    global _pattern
    if not isinstance(value, str | bytes | bytearray) or _too_short(value):
        return
    forms = _text_forms(value)
    with _lock:
        for form in forms:
            _secrets[form] = _secrets.get(form, 0) + 1
        _pattern = None


def forget_secret(value: str | bytes) -> None:
    """Undo one :func:`register_secret` call, e.g. after a key was rotated and wiped."""
    global _pattern
    if not isinstance(value, str | bytes | bytearray) or _too_short(value):
        return
    forms = _text_forms(value)
    with _lock:
        for form in forms:
            count = _secrets.get(form, 0) - 1
            if count > 0:
                _secrets[form] = count
            else:
                _secrets.pop(form, None)
        _pattern = None


def clear_secrets() -> None:
    """Forget every registered secret; meant for test isolation, not production code."""
    global _pattern
    with _lock:
        _secrets.clear()
        _pattern = None


def _current_pattern() -> re.Pattern[str] | None:
    global _pattern
    with _lock:
        if _pattern is None and _secrets:
            # Longest first: the regex engine takes the first alternative that matches, so a
            # secret that contains another one is replaced whole.
            ordered: Iterable[str] = sorted(_secrets, key=len, reverse=True)
            _pattern = re.compile("|".join(re.escape(s) for s in ordered))
        return _pattern


def redact(text: str) -> str:
    """Replace every registered secret in ``text`` with ``[REDACTED]``."""
    pattern = _current_pattern()
    if pattern is None or not text:
        return text
    return pattern.sub(REDACTED, text)


def is_secret_key(key: object) -> bool:
    """True if an event/mapping key's name alone marks its value as secret."""
    return isinstance(key, str) and SECRET_KEY_PATTERN.search(key) is not None


def redact_value(value: Any) -> Any:
    """Redact strings inside ``value``, recursing into dicts, lists and tuples.

    Bytes are converted to a redacted text form because a raw ``bytes`` repr could still carry
    the secret into a renderer that calls ``repr()``.
    """
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, bytes | bytearray):
        return redact(repr(bytes(value)))
    if isinstance(value, dict):
        return {
            redact_value(k): (REDACTED if is_secret_key(k) else redact_value(v)) for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact_value(v) for v in value]
    if isinstance(value, tuple):
        return tuple(redact_value(v) for v in value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    # Arbitrary objects get rendered with str()/repr() later; do it now so the text is scrubbed.
    return redact(str(value))


def redact_event(_logger: Any, _method_name: str, event_dict: MutableMapping[str, Any]) -> Any:
    """structlog processor: scrub registered secrets and secret-named keys from an event.

    Must run *after* ``format_exc_info`` so the rendered traceback text is scrubbed too.
    Private ``_record``-style keys added by ``ProcessorFormatter`` are passed through untouched.
    """
    out: dict[str, Any] = {}
    for key, value in event_dict.items():
        if isinstance(key, str) and key.startswith("_"):
            out[key] = value
        elif key == "exc_info":
            # Left for a renderer that formats it itself; its final output is redacted as text.
            out[key] = value
        elif is_secret_key(key):
            out[redact_value(key)] = REDACTED
        else:
            out[redact_value(key)] = redact_value(value)
    return out
