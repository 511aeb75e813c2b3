"""The text AA event log (AAEL) shared by every TEE that records runtime measurements — sans-IO.

One module for the TDX attester (SHA-384, replayed against RTMR3), the vTPM attester (SHA-256,
replayed against a PCR) and the stand-in's verifiers, so the writer and both readers agree on one
grammar. Format (Trustiflux ``attestation-agent/src/eventlog``, sent as ``aa_eventlog``)::

    INIT <algorithm>/<hex of the register value when the log was started>
    <domain> <operation> <content>
    ...

Replay (AA and verifier): ``R = init``; then for every line *including the INIT line*
``R = H(R || H(line))``, hashing the line without its newline; the result must equal the register.

Trustee 1.5 splits each event line on single spaces and requires exactly three fields, so domain,
operation and content must be non-empty and contain no whitespace (Unicode whitespace: Trustee
trims with ``trim_end()``), no NUL and no line break. We enforce this when *writing*, so the
verifier never rejects our own log, and when *parsing*, exactly as the verifier does. Content that
needs spaces must be encoded (compact JSON without spaces, base64). ``INIT`` is reserved as a
domain when writing, so an event can never look like a second start line.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from attestation_agent.errors import EvidenceError

ALGORITHMS = {"sha256": 32, "sha384": 48, "sha512": 64}
MAX_FIELD = 4096
MAX_LOG_SIZE = 4 * 1024 * 1024


class AaEventLogError(EvidenceError, ValueError):
    """An AA event log is malformed; also a ``ValueError`` for callers that only validate text."""


class InvalidAaEventError(AaEventLogError):
    """A runtime event a caller asked to record cannot be written to the log (a client error)."""

    http_status = 400


@dataclass(frozen=True)
class AaEvent:
    """One ``<domain> <operation> <content>`` entry."""

    domain: str
    operation: str
    content: str

    @property
    def line(self) -> str:
        """The text hashed and written for this event (no newline)."""
        return f"{self.domain} {self.operation} {self.content}"


def validate_field(name: str, value: str) -> str:
    """A domain, operation or content value that Trustee 1.5 splits back unambiguously."""
    if not isinstance(value, str):
        raise InvalidAaEventError(f"AA event {name} must be a string")
    if not value:
        raise InvalidAaEventError(f"AA event {name} is empty",
                                  hint="Trustee 1.5 needs exactly three non-empty fields")
    if len(value) > MAX_FIELD:
        raise InvalidAaEventError(f"AA event {name} is {len(value)} characters; at most {MAX_FIELD} are allowed")
    if any(ch.isspace() or ch == "\0" for ch in value):
        raise InvalidAaEventError(f"AA event {name} contains whitespace, a newline or NUL",
                                  hint="Trustee 1.5 splits event lines on single spaces; encode the value without "
                                       "spaces (e.g. compact JSON with no spaces, or base64)")
    return value


def make_event(domain: str, operation: str, content: str) -> AaEvent:
    """A validated event to append (refuses what the verifier would reject, and the INIT domain)."""
    if domain == "INIT":
        raise InvalidAaEventError("AA event domain 'INIT' is reserved for the first line of the log")
    return AaEvent(validate_field("domain", domain), validate_field("operation", operation),
                   validate_field("content", content))


def _size(algorithm: str) -> int:
    size = ALGORITHMS.get(algorithm)
    if size is None:
        raise AaEventLogError(f"AA event log algorithm {algorithm!r} is not one of {sorted(ALGORITHMS)}")
    return size


def init_line(algorithm: str, init_value: bytes) -> str:
    """The first line, recording the register value the log starts from."""
    if len(init_value) != _size(algorithm):
        raise AaEventLogError(f"AA event log INIT value is {len(init_value)} bytes; {algorithm} needs "
                              f"{ALGORITHMS[algorithm]}")
    return f"INIT {algorithm}/{init_value.hex()}"


def line_digest(algorithm: str, line: str) -> bytes:
    """``H(line)``: what the AA extends into the register for one log line."""
    _size(algorithm)
    return hashlib.new(algorithm, line.encode("utf-8")).digest()


def extend(algorithm: str, register: bytes, line: str) -> bytes:
    """The register after extending it with ``line`` (what the hardware computes)."""
    return hashlib.new(algorithm, register + line_digest(algorithm, line)).digest()


@dataclass(frozen=True)
class AaEventLog:
    """A parsed or in-memory log: the starting register value and the events since."""

    algorithm: str
    init_value: bytes
    events: tuple[AaEvent, ...]

    @property
    def init(self) -> str:
        """The INIT line."""
        return init_line(self.algorithm, self.init_value)

    def lines(self) -> list[str]:
        """Every line (INIT first), without newlines."""
        return [self.init, *(e.line for e in self.events)]

    def to_text(self) -> str:
        """The log as written to disk and sent to Trustee (one newline after every line)."""
        return "".join(line + "\n" for line in self.lines())

    def replay(self, upto: int | None = None) -> bytes:
        """Register value after the INIT line and the first ``upto`` events (all by default)."""
        events = self.events if upto is None else self.events[:upto]
        value = extend(self.algorithm, self.init_value, self.init)
        for event in events:
            value = extend(self.algorithm, value, event.line)
        return value

    def matches(self, register: bytes) -> bool:
        """True if the log accounts for ``register`` (constant-time comparison)."""
        return hmac.compare_digest(self.replay(), register)

    def unextended_line(self, register: bytes) -> str | None:
        """After a restart: the one line written but not yet extended into ``register``, or None.

        The agent appends (durably) before it extends, so a crash in between leaves the log one
        line ahead of the register; that line must be extended, never dropped. Anything else —
        the register ahead of the log, or more than one line apart — is an :class:`AaEventLogError`:
        someone else extended the register or edited the log.
        """
        if self.matches(register):
            return None
        if self.events:
            if hmac.compare_digest(self.replay(upto=len(self.events) - 1), register):
                return self.events[-1].line
        elif hmac.compare_digest(self.init_value, register):
            return self.init
        raise AaEventLogError("the AA event log does not replay to the live register")

    def to_claims(self) -> dict[str, list[str]]:
        """Trustee 1.5's ``aael`` claim: ``{"<domain>/<operation>": [content, ...]}`` in log order."""
        claims: dict[str, list[str]] = {}
        for event in self.events:
            claims.setdefault(f"{event.domain}/{event.operation}", []).append(event.content)
        return claims


def parse_text(text: str | bytes) -> AaEventLog:
    """Parse the text AAEL with Trustee 1.5's rules (first line INIT, then 3-field event lines)."""
    if isinstance(text, bytes | bytearray):
        if len(text) > MAX_LOG_SIZE:
            raise AaEventLogError(f"AA event log is {len(text)} bytes, over the {MAX_LOG_SIZE}-byte limit")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise AaEventLogError("AA event log is not UTF-8 text") from None
    if not isinstance(text, str):
        raise AaEventLogError("AA event log must be text")
    if len(text) > MAX_LOG_SIZE:
        raise AaEventLogError(f"AA event log is {len(text)} characters, over the {MAX_LOG_SIZE} limit")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise AaEventLogError("AA event log is empty; at least the INIT line is required")
    head = lines[0].split()
    if len(head) != 2 or head[0] != "INIT" or "/" not in head[1]:
        raise AaEventLogError("AA event log line 1 is not `INIT <algorithm>/<hex register value>`")
    algorithm, _, hex_value = head[1].partition("/")
    size = _size(algorithm)
    try:
        value = bytes.fromhex(hex_value)
    except ValueError:
        raise AaEventLogError("AA event log INIT value is not hex") from None
    if len(value) != size:
        raise AaEventLogError(f"AA event log INIT value is {len(value)} bytes; {algorithm} needs {size}")
    events = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.rstrip().split(" ")
        if len(fields) != 3 or not all(fields):
            raise AaEventLogError(f"AA event log line {number} is not `<domain> <operation> <content>` "
                                  "(exactly three fields separated by single spaces)")
        try:
            events.append(AaEvent(*(validate_field(name, field) for name, field in
                                    zip(("domain", "operation", "content"), fields, strict=True))))
        except AaEventLogError as exc:
            raise AaEventLogError(f"AA event log line {number}: {exc.message}") from None
    return AaEventLog(algorithm, value, tuple(events))
