"""The TDX side of the Attestation Agent event log (AAEL): SHA-384 and the TCG2 form — sans-IO.

The text form (``INIT sha384/<RTMR3 at start>`` then ``<domain> <operation> <content>`` lines,
Trustee <= 1.6) is shared with the vTPM attester and lives in :mod:`attestation_agent.eventlog`.
On TDX its algorithm must be SHA-384: the hardware extend is ``RTMR = SHA-384(RTMR || data)`` with
48-byte data, and the data the AA writes is ``H(line)``.

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

from attestation_agent.eventlog import AaEvent
from attestation_agent.tdx import ccel
from attestation_agent.tdx.errors import EventLogError

TDX_ALGORITHM = "sha384"
AAEL_TAG = 0x4141454C
AAEL_MR_INDEX = 4  # CC MR index of RTMR3


def _sha384(data: bytes) -> bytes:
    return hashlib.sha384(data).digest()


# --- TCG2 encoding ------------------------------------------------------------------------------

def tagged_event_data(event: AaEvent) -> bytes:
    text = event.line.encode("utf-8")
    return struct.pack("<II", AAEL_TAG, len(text)) + text


def encode_tcg2_event(event: AaEvent, mr_index: int = AAEL_MR_INDEX) -> bytes:
    """One AAEL record in TCG2 form (SHA-384 digest of the tagged event data)."""
    data = tagged_event_data(event)
    return ccel.encode_event(mr_index, ccel.EV_EVENT_TAG, [(ccel.ALG_SHA384, _sha384(data))], data)


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
    if digest is None or not hmac.compare_digest(digest, _sha384(event.data)):
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
