"""Parser for docker/systemd-style env files such as ``cai.env``.

Pure: text in, dict out. Values may be secrets (object-storage keys, tokens), so no error
message ever quotes a line's content; errors say which file and which line number instead.
"""

from __future__ import annotations

import re
from pathlib import Path

from agents.errors import ConfigError

_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INLINE_COMMENT_RE = re.compile(r"\s#")


class _LineError(Exception):
    """Internal: a problem on one line, turned into a ConfigError with file and line number."""


def _parse_double_quoted(rest: str) -> tuple[str, str]:
    """Parse after an opening ``"``; return (value, text after the closing quote)."""
    out: list[str] = []
    i = 0
    while i < len(rest):
        ch = rest[i]
        if ch == "\\" and i + 1 < len(rest) and rest[i + 1] in ('"', "\\"):
            out.append(rest[i + 1])
            i += 2
            continue
        if ch == '"':
            return "".join(out), rest[i + 1 :]
        out.append(ch)
        i += 1
    raise _LineError("unterminated double-quoted value (multi-line values are not supported)")


def _parse_single_quoted(rest: str) -> tuple[str, str]:
    """Parse after an opening ``'``: no escapes at all, like the shell."""
    end = rest.find("'")
    if end < 0:
        raise _LineError("unterminated single-quoted value (multi-line values are not supported)")
    return rest[:end], rest[end + 1 :]


def _check_trailer(trailer: str) -> None:
    stripped = trailer.lstrip()
    if stripped and not stripped.startswith("#"):
        raise _LineError("unexpected text after the closing quote")


def parse_env_line(line: str) -> tuple[str, str] | None:
    """Parse one line; ``None`` for blank/comment lines. Raises ``_LineError`` when malformed."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if text.startswith("export") and text[6:7] in (" ", "\t"):
        text = text[6:].lstrip()
    match = _NAME_RE.match(text)
    if match is None:
        raise _LineError("expected KEY=VALUE with KEY made of letters, digits and '_'")
    name = match.group(0)
    after_name = text[match.end() :].lstrip(" \t")
    if not after_name.startswith("="):
        # Not naming the "name": on a line without '=' it may well be a pasted secret.
        raise _LineError("expected '=' after the variable name")
    raw = after_name[1:]
    value_text = raw.lstrip(" \t")
    if value_text.startswith('"'):
        value, trailer = _parse_double_quoted(value_text[1:])
        _check_trailer(trailer)
    elif value_text.startswith("'"):
        value, trailer = _parse_single_quoted(value_text[1:])
        _check_trailer(trailer)
    else:
        comment = _INLINE_COMMENT_RE.search(raw)
        value = (raw[: comment.start()] if comment else raw).strip()
    if "\x00" in value:
        raise _LineError(f"value of {name} contains a NUL character")
    return name, value


def parse_env_text(text: str, *, source: str) -> dict[str, str]:
    """Parse env-file text; later assignments override earlier ones, as in the shell."""
    result: dict[str, str] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        try:
            parsed = parse_env_line(line.removesuffix("\r"))
        except _LineError as exc:
            raise ConfigError(
                f"{source}, line {number}: {exc}",
                hint="lines must look like KEY=VALUE, KEY=\"VALUE\" or KEY='VALUE'",
            ) from None
        if parsed is not None:
            result[parsed[0]] = parsed[1]
    return result


def load_env_file(path: str | Path) -> dict[str, str]:
    """Read a ``KEY=VALUE`` env file (blank lines, ``#`` comments, ``export``, quotes)."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read env file {source}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{source}, line {line}: not valid UTF-8") from None
    return parse_env_text(text.removeprefix("\ufeff"), source=source)
