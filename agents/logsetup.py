"""structlog setup shared by every daemon: one JSON line per event, secrets scrubbed.

Named ``logsetup`` rather than ``logging`` so it never shadows the standard library module.
Both structlog loggers and plain ``logging`` loggers (aiohttp, asyncio, third-party code) end up
in the same handler and processor chain, so every line has the same shape and passes through
the same redaction, including rendered tracebacks.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, TextIO

import structlog
from structlog.types import EventDict, Processor

from agents.errors import ConfigError
from agents.redaction import forget_secret, redact, redact_event, register_secret

__all__ = [
    "configure_logging",
    "forget_secret",
    "get_logger",
    "is_configured",
    "redact",
    "redact_event",
    "register_secret",
]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

_HANDLER_MARK = "_cai_log_handler"


class _RedactingFormatter(structlog.stdlib.ProcessorFormatter):
    """Redacts the *final* text too: renderers may add material the event dict never held."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _add_service(service: str | None) -> Processor:
    def processor(_logger: Any, _name: str, event_dict: EventDict) -> EventDict:
        if service is not None:
            event_dict.setdefault("service", service)
        return event_dict

    return processor


def configure_logging(
    *,
    level: str = "info",
    fmt: str = "json",
    stream: TextIO | None = None,
    service: str | None = None,
) -> None:
    """(Re)configure structlog and stdlib logging to write to ``stream`` (default stderr).

    Safe to call repeatedly: the previous handler installed here is replaced, which is what
    tests rely on to capture output into their own stream.
    """
    try:
        numeric_level = _LEVELS[level.lower()]
    except KeyError:
        raise ConfigError(
            f"unknown log level {level!r}", hint=f"use one of: {', '.join(sorted(_LEVELS))}"
        ) from None
    if fmt not in ("json", "console"):
        raise ConfigError(f"unknown log format {fmt!r}", hint="use 'json' or 'console'")

    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        timestamper,
    ]
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer(sort_keys=False, default=str)
    else:
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )

    formatter = _RedactingFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _add_service(service),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            redact_event,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(numeric_level)

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: a reconfiguration must reach loggers that were created earlier.
        cache_logger_on_first_use=False,
    )


def reset_logging() -> None:
    """Undo :func:`configure_logging` (structlog defaults, our stdlib handler removed).

    Tests call it after capturing output so one test's stream never receives another's logs.
    """
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, _HANDLER_MARK, False):
            root.removeHandler(handler)
    root.setLevel(logging.WARNING)


def is_configured() -> bool:
    """True once :func:`configure_logging` has installed its handler on the root logger."""
    return any(getattr(handler, _HANDLER_MARK, False) for handler in logging.getLogger().handlers)


def get_logger(name: str | None = None, **initial: Any) -> structlog.stdlib.BoundLogger:
    """Return a structlog logger bound to ``initial`` context (e.g. ``component="kbs"``)."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name, **initial)
    return logger
