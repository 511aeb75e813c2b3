"""AA event log (text form: ``attestation_agent.eventlog``; TCG2 form: ``tdx.aael``) against the openanolis
Trustee 1.5.2 and Trustiflux fixtures.

Published replay values are from Trustee v1.5.2 ``deps/verifier/src/eventlog`` unit tests; the
RTMR3 comes from the signed quote ``AAEL_quote_tdx``.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attestation_agent import eventlog
from attestation_agent.eventlog import AaEventLogError, InvalidAaEventError
from attestation_agent.tdx import aael, ccel
from attestation_agent.tdx.errors import EventLogError
from attestation_agent.tdx.quote import parse_quote
from tests.conftest import UPSTREAM

AAEL = UPSTREAM / "openanolis-trustee-v1.5.2/aael"
PUBLISHED = {
    1: "71563a23b430b8637970b866169052815ef9434056516dc9f78c1b3bfb745cee18a2ca92aa53c8122be5cbe59a100764",
    2: "31fa17881137923029b1da5b368e92d8b22b14bbb4deaa360da61fce7aa530bd2f4c59ac7bd27021ef64104ff4dd04f9",
    3: "0de62b45b29775495d278c85ad63ff45e59406e509506b26c545a5419316e1c4bd2b00a4e803051fa98b550767e13f06",
}


@pytest.mark.parametrize("n", sorted(PUBLISHED))
def test_text_logs_replay_to_published_values(n):
    log = eventlog.parse_text((AAEL / f"AAEL_data_{n}").read_text())
    assert log.replay().hex() == PUBLISHED[n]


def test_aael_data_1_replays_to_rtmr3_of_the_signed_quote():
    quote = parse_quote((AAEL / "AAEL_quote_tdx").read_bytes())
    assert eventlog.parse_text((AAEL / "AAEL_data_1").read_text()).matches(quote.rtmrs[3])
    assert not eventlog.parse_text((AAEL / "AAEL_data_2").read_text()).matches(quote.rtmrs[3])


def test_replay_rule_by_hand():
    init = bytes(48)
    log = eventlog.AaEventLog("sha384", init, (eventlog.make_event("d", "op", "c"),))
    h = hashlib.sha384
    r = h(init + h(b"INIT sha384/" + b"0" * 96).digest()).digest()
    r = h(r + h(b"d op c").digest()).digest()
    assert log.replay() == r
    assert eventlog.parse_text(log.to_text()) == log


def test_claims_shape():
    log = eventlog.parse_text((AAEL / "AAEL_data_3").read_text())
    assert log.to_claims() == {"github.com/confidential-containers/CreateContainer":
                               ["docker.io/library/alpine", "docker.io/library/busybox"]}


@pytest.mark.parametrize("bad", ["has space", "new\nline", "", "tab\there", "cr\r", "nul\0", "nbsp\u00a0x",
                                 "x" * (eventlog.MAX_FIELD + 1)])
def test_fields_trustee_15_cannot_split_are_refused(bad):
    with pytest.raises(InvalidAaEventError):
        eventlog.make_event("domain", "op", bad)
    with pytest.raises(InvalidAaEventError):
        eventlog.make_event(bad, "op", "content")


def test_init_domain_is_reserved_when_writing():
    with pytest.raises(InvalidAaEventError, match="reserved"):
        eventlog.make_event("INIT", "op", "c")
    assert eventlog.make_event("init", "op", "c").line == "init op c"


@pytest.mark.parametrize("text", [
    "", "\n", "INIT sha384/00\n", "INIT md5/" + "0" * 32 + "\n", "NOPE sha384/" + "0" * 96 + "\n",
    "INIT sha384/" + "0" * 96 + "\nonly two\n", "INIT sha384/" + "0" * 96 + "\na b c d\n",
    "INIT sha384/" + "zz" * 48 + "\n", "INIT sha384/" + "0" * 96 + "\na  c\n",
])
def test_malformed_text_logs(text):
    with pytest.raises(AaEventLogError):
        eventlog.parse_text(text)


def test_tcg2_fixture_decodes_and_reencodes_exactly():
    raw = (UPSTREAM / "trustiflux/v1.5.2/aael/aael-tcg2.bin").read_bytes()
    records = aael.parse_tcg2_records(raw)
    events = [aael.decode_tagged_event(r) for r in records]
    assert events == [eventlog.AaEvent("domain", "operation", "content1"),
                      eventlog.AaEvent("domain", "operation", "content2")]
    assert b"".join(aael.encode_tcg2_event(e, records[0].mr_index) for e in events) == raw


def test_tcg2_events_inside_alibaba_ccel():
    log = ccel.parse_event_log((UPSTREAM / "trustee/ccel/CCEL_AAEL_alibabacloud").read_bytes())
    events = aael.tcg2_events(log.events)
    assert [e.domain for e in events] == ["coco.com", "coco.com"]
    assert events[1].content == '{"key": "value", "nested-key": {"sub-key": "value"}}'
    tampered = ccel.Event(4, ccel.EV_EVENT_TAG, log.events[-1].digests, log.events[-1].data[:-1] + b"X", 0)
    with pytest.raises(EventLogError, match="digest"):
        aael.decode_tagged_event(tampered)


_field = st.text(st.characters(blacklist_characters=" \r\n\t\v\f\x00", blacklist_categories=("Cs",)),
                 min_size=1, max_size=20)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=48, max_size=48), st.lists(st.tuples(_field, _field, _field), max_size=5))
def test_text_roundtrip_property(init, fields):
    events = []
    for f in fields:
        try:
            events.append(eventlog.make_event(*f))
        except InvalidAaEventError:
            continue  # other Unicode whitespace is refused too
    log = eventlog.AaEventLog("sha384", init, tuple(events))
    again = eventlog.parse_text(log.to_text())
    assert again == log and again.replay() == log.replay()


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.text(max_size=400), st.binary(max_size=400)))
def test_fuzz_text(data):
    try:
        eventlog.parse_text(data)
    except AaEventLogError:
        pass


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_fuzz_tcg2(data):
    try:
        for record in aael.parse_tcg2_records(data):
            aael.decode_tagged_event(record)
    except EventLogError:
        pass


@pytest.mark.parametrize("algorithm", ["sha384", "sha256"])
def test_unextended_line_after_a_crash_between_append_and_extend(algorithm: str) -> None:
    """The shared recovery rule of the TDX (RTMR3) and vTPM (PCR) runtime logs."""
    from attestation_agent import eventlog

    size = 48 if algorithm == "sha384" else 32
    init = bytes(size)
    events = (eventlog.make_event("github.com", "start", "vllm"), eventlog.make_event("github.com", "load", "model"))
    log = eventlog.AaEventLog(algorithm, init, events)
    assert log.unextended_line(log.replay()) is None  # in step
    assert log.unextended_line(log.replay(upto=1)) == events[1].line  # one line ahead: extend it
    empty = eventlog.AaEventLog(algorithm, init, ())
    assert empty.unextended_line(init) == empty.init  # crashed before extending INIT
    for register in (log.replay(upto=0), bytes([1]) * size):  # two lines apart, or foreign extends
        with pytest.raises(eventlog.AaEventLogError, match="does not replay"):
            log.unextended_line(register)
