"""The Attestation Agent event log (AAEL) — text form (Trustee <= 1.6) and TCG2 form — sans-IO.

Text form, sent verbatim as ``aa_eventlog`` to Trustee 1.5::

    INIT sha384/<hex of the register value when the AA first started>
    <domain> <operation> <content>
    ...

Replay (both AA and verifier): ``R = init``; then for every line *including the INIT line*
``R = H(R || H(line))`` with no newline hashed; the result must equal RTMR3. On TDX the algorithm
must be SHA-384: the hardware extend is ``RTMR = SHA-384(RTMR || data)`` with 48-byte data, and
the data the AA writes is ``H(line)``.

Trustee 1.5 splits each event line on single spaces and requires exactly three fields, so domain,
operation and content must be non-empty and contain no space; no field may contain a newline
(CR or LF) either. We enforce this when *writing*, so the verifier never rejects our own log, and
when parsing, exactly as the verifier does.

TCG2 form (Trustiflux >= 1.5, Trustee >= 1.7): each entry is a ``TCG_PCR_EVENT2`` with event type
``EV_EVENT_TAG`` (6), one SHA-384 digest, event data ``TaggedEventID 0x4141454C ("AAEL") || size
u32 || "<domain> <operation> <content>"``; the digest covers the whole tagged event data. These
records are appended after the trimmed CCEL at CC MR index 4 (RTMR3).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from attestation_agent.tdx import ccel
from attestation_agent.tdx.errors import EventLogError, InvalidEventError

ALGORITHMS = {"sha256": 32, "sha384": 48, "sha512": 64}
TDX_ALGORITHM = "sha384"
AAEL_TAG = 0x4141454C
AAEL_MR_INDEX = 4  # CC MR index of RTMR3
MAX_FIELD = 4096
MAX_LOG_SIZE = 4 * 1024 * 1024


@dataclass(frozen=True)
class AaEvent:
    domain: str
    operation: str
    content: str

    @property
    def line(self) -> str:
        return f"{self.domain} {self.operation} {self.content}"


def validate_field(name: str, value: str) -> str:
    """A domain, operation or content value that Trustee 1.5 can split back unambiguously."""
    if not isinstance(value, str):
        raise InvalidEventError(f"AA event {name} must be a string")
    if not value:
        raise InvalidEventError(f"AA event {name} is empty", hint="Trustee 1.5 needs exactly three non-empty fields")
    if len(value) > MAX_FIELD:
        raise InvalidEventError(f"AA event {name} is {len(value)} characters; at most {MAX_FIELD} are allowed")
    if any(ch.isspace() or ch == "\0" for ch in value):
        # Trustee splits on spaces after trim_end() (Unicode whitespace), so any whitespace is unsafe.
        raise InvalidEventError(f"AA event {name} contains whitespace, a newline or NUL",
                            hint="Trustee 1.5 splits event lines on single spaces; encode the value without "
                                 "spaces (e.g. compact JSON with no spaces, or base64)")
    return value


def make_event(domain: str, operation: str, content: str) -> AaEvent:
    return AaEvent(validate_field("domain", domain), validate_field("operation", operation),
                   validate_field("content", content))


def _hash(algorithm: str, data: bytes) -> bytes:
    return hashlib.new(algorithm, data).digest()


def init_line(algorithm: str, init_value: bytes) -> str:
    if algorithm not in ALGORITHMS:
        raise EventLogError(f"AA event log algorithm {algorithm!r} is not one of {sorted(ALGORITHMS)}")
    if len(init_value) != ALGORITHMS[algorithm]:
        raise EventLogError(f"INIT value is {len(init_value)} bytes; {algorithm} needs {ALGORITHMS[algorithm]}")
    return f"INIT {algorithm}/{init_value.hex()}"


def line_digest(algorithm: str, line: str) -> bytes:
    """``H(line)``: what the AA extends into the register for one log line."""
    return _hash(algorithm, line.encode("utf-8"))


def extend(algorithm: str, register: bytes, line: str) -> bytes:
    return _hash(algorithm, register + line_digest(algorithm, line))


@dataclass(frozen=True)
class AaEventLog:
    algorithm: str
    init_value: bytes
    events: tuple[AaEvent, ...]

    @property
    def init(self) -> str:
        return init_line(self.algorithm, self.init_value)

    def lines(self) -> list[str]:
        return [self.init, *(e.line for e in self.events)]

    def to_text(self) -> str:
        return "".join(line + "\n" for line in self.lines())

    def replay(self, upto: int | None = None) -> bytes:
        """Register value after the INIT line and the first ``upto`` events (all by default)."""
        events = self.events if upto is None else self.events[:upto]
        value = extend(self.algorithm, self.init_value, self.init)
        for event in events:
            value = extend(self.algorithm, value, event.line)
        return value

    def matches(self, register: bytes) -> bool:
        return hmac.compare_digest(self.replay(), register)

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
            raise EventLogError(f"AA event log is {len(text)} bytes, over the {MAX_LOG_SIZE}-byte limit")
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise EventLogError("AA event log is not UTF-8 text") from None
    if not isinstance(text, str):
        raise EventLogError("AA event log must be text")
    if len(text) > MAX_LOG_SIZE:
        raise EventLogError(f"AA event log is {len(text)} characters, over the {MAX_LOG_SIZE} limit")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise EventLogError("AA event log is empty; at least the INIT line is required")
    head = lines[0].split()
    if len(head) != 2 or head[0] != "INIT" or "/" not in head[1]:
        raise EventLogError("AA event log line 1 is not `INIT <algorithm>/<hex register value>`")
    algorithm, _, hex_value = head[1].partition("/")
    if algorithm not in ALGORITHMS:
        raise EventLogError(f"AA event log INIT algorithm {algorithm!r} is not one of {sorted(ALGORITHMS)}")
    try:
        value = bytes.fromhex(hex_value)
    except ValueError:
        raise EventLogError("AA event log INIT value is not hex") from None
    if len(value) != ALGORITHMS[algorithm]:
        raise EventLogError(f"AA event log INIT value is {len(value)} bytes; {algorithm} needs "
                            f"{ALGORITHMS[algorithm]}")
    events = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.rstrip().split(" ")
        if len(fields) != 3 or not all(fields):
            raise EventLogError(f"AA event log line {number} is not `<domain> <operation> <content>` "
                                "(exactly three fields separated by single spaces)")
        try:
            events.append(make_event(*fields))
        except EventLogError as exc:
            raise EventLogError(f"AA event log line {number}: {exc.message}") from None
    return AaEventLog(algorithm, value, tuple(events))


# --- TCG2 encoding ------------------------------------------------------------------------------

def tagged_event_data(event: AaEvent) -> bytes:
    text = event.line.encode("utf-8")
    return struct.pack("<II", AAEL_TAG, len(text)) + text


def encode_tcg2_event(event: AaEvent, mr_index: int = AAEL_MR_INDEX) -> bytes:
    """One AAEL record in TCG2 form (SHA-384 digest of the tagged event data)."""
    data = tagged_event_data(event)
    return ccel.encode_event(mr_index, ccel.EV_EVENT_TAG, [(ccel.ALG_SHA384, _hash("sha384", data))], data)


def decode_tagged_event(event: ccel.Event) -> AaEvent | None:
    """The AA event inside an ``EV_EVENT_TAG`` record tagged "AAEL", or None for other records.

    The digest is checked against the data: a record whose text was altered is an error, not a
    silently different claim."""
    if event.event_type != ccel.EV_EVENT_TAG or len(event.data) < 8:
        return None
    tag, size = struct.unpack_from("<II", event.data)
    if tag != AAEL_TAG:
        return None
    if size != len(event.data) - 8:
        raise EventLogError(f"AAEL tagged event at offset {event.offset} declares {size} bytes of data but has "
                            f"{len(event.data) - 8}")
    digest = event.digest(ccel.ALG_SHA384)
    if digest is None or not hmac.compare_digest(digest, _hash("sha384", event.data)):
        raise EventLogError(f"AAEL tagged event at offset {event.offset}: SHA-384 digest does not match its data")
    try:
        text = event.data[8:].decode("utf-8")
    except UnicodeDecodeError:
        raise EventLogError(f"AAEL tagged event at offset {event.offset} is not UTF-8") from None
    fields = text.split(" ", 2)
    if len(fields) != 3:
        raise EventLogError(f"AAEL tagged event at offset {event.offset} is not `<domain> <operation> <content>`")
    # TCG2 content may contain spaces (it is length-delimited, e.g. RFC 8785 JSON).
    return AaEvent(*fields)


def tcg2_events(events: Iterable[ccel.Event]) -> list[AaEvent]:
    return [e for e in (decode_tagged_event(ev) for ev in events) if e is not None]


def parse_tcg2_records(data: bytes) -> list[ccel.Event]:
    """Parse headerless TCG2 AAEL records (as stored by Trustiflux), SHA-384 only."""
    events, _ = ccel.parse_events(bytes(data), {ccel.ALG_SHA384: 48})
    return events
