"""Errors of the TDX evidence code.

Format errors (:class:`QuoteError`, :class:`EventLogError`) are raised by the pure parsers on any
malformed input; they derive from both :class:`~attestation_agent.errors.EvidenceError` (so a
daemon reports them as one clean line) and :class:`ValueError` (so callers that only validate
bytes can catch the builtin). Messages name the structure and byte offset that failed and never
contain secret material (quotes and event logs hold none).
"""

from __future__ import annotations

from attestation_agent.errors import EvidenceError


class TdxFormatError(EvidenceError, ValueError):
    """Bytes that should be a TDX structure are not."""


class QuoteError(TdxFormatError):
    """A DCAP quote or TD report is truncated, oversize or has unsupported fields."""


class QuoteVerificationError(QuoteError):
    """A well-formed quote whose signatures or key bindings do not check out."""


class EventLogError(TdxFormatError):
    """A CCEL table, TCG2 event log or AA event log is malformed or does not replay."""


class TsmError(EvidenceError):
    """The configfs-tsm report interface failed; ``retryable`` marks transient kernel errors."""

    def __init__(self, message: str, *, hint: str | None = None, retryable: bool = False) -> None:
        super().__init__(message, hint=hint)
        self.retryable = retryable


class MeasurementError(EvidenceError):
    """Extending or reading a runtime measurement register failed, or the log disagrees with it."""


class InvalidEventError(EventLogError):
    """A runtime event the caller asked to record cannot be represented in the AA event log."""

    http_status = 400
