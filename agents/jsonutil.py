"""``json.loads`` for outside input: hostile nesting is a JSON error like any other.

``json.loads`` raises ``RecursionError`` (not ``ValueError``) on a few thousand nested brackets,
so every parser that catches ``ValueError`` for "not JSON" would let that escape as a crash.
Parsing every untrusted document through :func:`loads` keeps the rule in one place: callers
catch ``ValueError`` (or ``json.JSONDecodeError``) and are safe by default.
"""

from __future__ import annotations

import json
from typing import Any


def loads(data: str | bytes | bytearray) -> Any:
    """``json.loads(data)``; nesting too deep for the parser raises ``json.JSONDecodeError``."""
    try:
        return json.loads(data)
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", "", 0) from None
