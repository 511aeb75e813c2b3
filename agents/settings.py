"""A small declarative schema for configuration settings.

Each daemon declares its settings once as :class:`Setting` values; the same declarations drive
parsing (string coercion, defaults, validation, unknown-key detection) and the generated
configuration reference, so documentation and behaviour cannot drift apart.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from agents.errors import ConfigError
from agents.redaction import register_secret


class _Required:
    """Sentinel type: a setting without a default must be present."""

    _instance: _Required | None = None

    def __new__(cls) -> _Required:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Final = _Required()

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_INT_RE = re.compile(r"^[+-]?[0-9]+$")
_LIST_SPLIT_RE = re.compile(r"[\s,]+")
_KINDS = (str, int, bool, float, list)


@dataclass(frozen=True)
class Setting:
    """One configuration key: its type, default, documentation and validation.

    ``default=REQUIRED`` makes the key mandatory; ``None`` (the default) makes it optional with
    value ``None``. ``validator`` receives the coerced value and returns the value to use (or
    ``None`` to keep it unchanged); it signals bad input with ``ValueError``. ``secret=True``
    keeps the value out of every error message and registers it for log redaction.
    ``kind=list`` yields ``list[str]``; from a string it splits on whitespace and commas.
    """

    name: str
    kind: type
    default: Any = None
    doc: str = ""
    secret: bool = False
    validator: Callable[[Any], Any] | None = None
    choices: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise TypeError(f"Setting {self.name!r}: kind must be one of str, int, bool, float, list")
        if not self.doc:
            raise TypeError(f"Setting {self.name!r} needs a doc string: the reference docs are built from it")

    @property
    def required(self) -> bool:
        """True if parsing fails when the key is absent."""
        return self.default is REQUIRED


def _describe(value: Any, setting: Setting) -> str:
    return "<secret>" if setting.secret else repr(value)


def coerce(value: Any, setting: Setting) -> Any:
    """Convert a raw value (a string from env files, or a TOML/JSON scalar) to ``setting.kind``.

    Raises ``ValueError`` whose message includes the value only for non-secret settings.
    """
    kind = setting.kind
    shown = _describe(value, setting)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE:
            return True
        if isinstance(value, str) and value.strip().lower() in _FALSE:
            return False
        raise ValueError(f"expected a boolean (true/false, yes/no, on/off, 1/0), got {shown}")
    if kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and _INT_RE.match(value.strip()):
            return int(value.strip())
        raise ValueError(f"expected an integer, got {shown}")
    if kind is float:
        result: float | None = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            result = float(value)
        elif isinstance(value, str):
            try:
                result = float(value.strip())
            except ValueError:
                result = None
        if result is None or not math.isfinite(result):
            raise ValueError(f"expected a finite number, got {shown}")
        return result
    if kind is list:
        if isinstance(value, str):
            return [item for item in _LIST_SPLIT_RE.split(value.strip()) if item]
        if isinstance(value, list | tuple) and all(isinstance(item, str) for item in value):
            return list(value)
        raise ValueError(f"expected a list of strings or a space-separated string, got {shown}")
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string, got {type(value).__name__}")


def _scrub(message: str, raw: Any, setting: Setting) -> str:
    """Remove a secret's value from a validator's message (validators may quote values)."""
    if not setting.secret:
        return message
    for form in {str(raw), repr(raw), str(raw).strip()}:
        if form:
            message = message.replace(form, "<secret>")
    return message


def _is_blank(raw: Any) -> bool:
    # `KEY=` in an env file conventionally means "not set".
    return isinstance(raw, str) and not raw.strip()


def _parse_one(raw: Any, setting: Setting, where: str) -> Any:
    if setting.secret and isinstance(raw, str):
        # Register before anything else can fail and format it into an error.
        register_secret(raw)
    try:
        value = coerce(raw, setting)
        if setting.validator is not None:
            checked = setting.validator(value)
            if checked is not None:
                value = checked
    except ValueError as exc:
        detail = _scrub(str(exc), raw, setting)
        raise ConfigError(f"invalid value for {setting.name!r} in {where}: {detail}") from None
    if setting.choices is not None and value not in setting.choices:
        allowed = ", ".join(str(choice) for choice in setting.choices)
        raise ConfigError(
            f"invalid value for {setting.name!r} in {where}: {_describe(value, setting)}"
            f" is not one of: {allowed}"
        )
    if setting.secret and isinstance(value, str):
        register_secret(value)
    return value


def _unknown_key_message(key: str, where: str, names: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    suggestion = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r} in {where}{suggestion}; valid keys: {', '.join(sorted(names))}"


def parse_settings(
    raw: Mapping[str, Any],
    settings: Sequence[Setting],
    *,
    where: str,
    allow_unknown: bool = False,
) -> dict[str, Any]:
    """Coerce, default and validate ``raw`` against ``settings``.

    Returns one entry per declared setting. All problems are collected and raised together as
    one :class:`ConfigError`, so an operator fixes a config file in one pass; every problem
    names its key and ``where`` (e.g. ``"[aa] (/etc/cai/cai.toml)"``).
    """
    by_name = {setting.name: setting for setting in settings}
    problems: list[str] = []
    if not allow_unknown:
        names = list(by_name)
        problems.extend(_unknown_key_message(str(key), where, names) for key in raw if key not in by_name)
    result: dict[str, Any] = {}
    for setting in settings:
        present = setting.name in raw and raw[setting.name] is not None and not _is_blank(raw[setting.name])
        if not present:
            if setting.required:
                problems.append(f"missing required key {setting.name!r} in {where}")
            else:
                result[setting.name] = setting.default
            continue
        try:
            result[setting.name] = _parse_one(raw[setting.name], setting, where)
        except ConfigError as exc:
            problems.append(exc.message)
    if problems:
        if len(problems) == 1:
            raise ConfigError(problems[0])
        raise ConfigError(f"{len(problems)} problems: " + "; ".join(problems))
    return result
