"""The text AA event log (AAEL) for runtime measurements extended into a TPM PCR — minimal.

Format (Trustiflux 1.3.1 ``attestation-agent/src/eventlog``, read by Trustee 1.5.2)::

    INIT sha256/<hex of the PCR when the log was started>
    <domain> <operation> <content>
    ...

Replay: ``R = init; for line in lines (INIT line included): R = H(R ‖ H(line))`` with no trailing
newline in the hashed text; the result must equal the PCR. For a TPM the hash is SHA-256 because
``TPM2_PCR_Extend`` on the SHA-256 bank takes 32-byte digests. The TDX attester keeps the same
format with SHA-384 against RTMR3; this module is deliberately small so the two can be merged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from attestation_agent.tpm.errors import TpmFormatError

_SIZES = {"sha256": 32, "sha384": 48, "sha512": 64}
MAX_LINE = 4096


@dataclass(frozen=True)
class Aael:
    hash_name: str
    init_value: bytes
    events: tuple[str, ...]


def _check_hash(hash_name: str) -> int:
    size = _SIZES.get(hash_name)
    if size is None:
        raise TpmFormatError(f"AA event log hash {hash_name!r} is not one of " + ", ".join(_SIZES))
    return size


def init_line(hash_name: str, value: bytes) -> str:
    """The first line, recording the register value the log starts from."""
    if len(value) != _check_hash(hash_name):
        raise TpmFormatError(f"AA event log INIT value must be {_SIZES[hash_name]} bytes for {hash_name}")
    return f"INIT {hash_name}/{value.hex()}"


def event_line(domain: str, operation: str, content: str) -> str:
    """One event line; refuses text Trustee's parser would split differently."""
    for what, value in (("domain", domain), ("operation", operation)):
        if not value or any(c.isspace() for c in value):
            raise TpmFormatError(f"AA event {what} {value!r} must be non-empty and contain no whitespace")
    if "\n" in content or "\r" in content:
        raise TpmFormatError("AA event content must not contain a line break",
                             hint="each event is one line of the log")
    if domain == "INIT":
        raise TpmFormatError("AA event domain 'INIT' is reserved for the first line")
    line = f"{domain} {operation} {content}"
    if len(line) > MAX_LINE:
        raise TpmFormatError(f"AA event line is {len(line)} characters; at most {MAX_LINE}")
    return line


def entry_digest(line: str, hash_name: str) -> bytes:
    """The digest extended into the register for ``line``."""
    _check_hash(hash_name)
    return hashlib.new(hash_name, line.encode("utf-8")).digest()


def parse(text: str) -> Aael:
    """Parse log text (trailing newline allowed); the INIT line must come first."""
    if not isinstance(text, str):
        raise TpmFormatError("AA event log must be text")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise TpmFormatError("AA event log is empty; it must start with an INIT line")
    head = lines[0].split(" ")
    if len(head) != 2 or head[0] != "INIT" or "/" not in head[1]:
        raise TpmFormatError("AA event log must start with 'INIT <hash>/<hex value>'")
    hash_name, _, hex_value = head[1].partition("/")
    size = _check_hash(hash_name)
    try:
        value = bytes.fromhex(hex_value)
    except ValueError:
        raise TpmFormatError("AA event log INIT value is not hex") from None
    if len(value) != size:
        raise TpmFormatError(f"AA event log INIT value is {len(value)} bytes; {hash_name} needs {size}")
    events = []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split(" ", 2)
        if len(fields) != 3 or not fields[0] or not fields[1] or len(line) > MAX_LINE:
            raise TpmFormatError(f"AA event log line {number} is not '<domain> <operation> <content>'")
        events.append(line)
    return Aael(hash_name, value, tuple(events))


def replay(log: Aael) -> bytes:
    """The register value the log accounts for."""
    value = log.init_value
    for line in (init_line(log.hash_name, log.init_value), *log.events):
        value = hashlib.new(log.hash_name, value + entry_digest(line, log.hash_name)).digest()
    return value
