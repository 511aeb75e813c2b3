"""CCEL ACPI table and TCG2 event log: parse, replay and trim against real logs.

Expected values come from outside this code: go-tdx-guest's consistent table+log+quote triple
(the replay must reproduce the RTMRs inside the *signed quote*), Trustee's published RTMR replay
vectors (``deps/eventlog/src/lib.rs`` test ``test_rtmr_integrity``, copied below) and Trustee's
``*_out.json`` parse outputs.
"""

from __future__ import annotations

import base64
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from attestation_agent.tdx import ccel
from attestation_agent.tdx.errors import EventLogError
from attestation_agent.tdx.quote import parse_quote
from tests.conftest import UPSTREAM

Z = "0" * 96
# Trustee deps/eventlog/src/lib.rs::test_rtmr_integrity (RTMR0..3 per log)
TRUSTEE_REPLAY = {
    "CCEL_data": (
        "2dc712306a963eadb894ad47dbaa17df44814151555aee11cbb843becca88950ffd079664902e6f22c66f7c8213543f4",
        "0fa3be56af61208bbd179dc7b124988eb929319154663c539d6f46445ecac2fec287075047ff7bd1922829fec28cd3cf", Z, Z),
    "CCEL_data_ovmf": (
        "8566f998798db09443b244c62de9a3041fb02e2e6936c4396d784bba2e90177329ec5aba3bb484404f2ab9cc90abe193",
        "775b9f6bfe99f8a31396f0d0218e67ffa796d3b96ccf961cbb0deba48c79c00f082cda1a5567c1c16305f1fc210c13c6",
        "94eaf7a7bf398ed8d888c91057ae0261802e4f3df084213a76ca7f0b5055ac9d2241de43cd58d9e8b49c503bbf25f34a", Z),
    "CCEL_data_grub": (
        "cec0a104f691f60da2387fea3c2de00c4ac035e2bb479ff02edcce69039d9e9907f0b3e55031da3dc7038f423adebd79",
        "6c289e0c62182d41ebe97bdbc9872d10998a08eaa86adcdc684001a363207ee72942c7522cdf00a4bbc3d784bed7b670",
        "08919d017ba0e52cd6d966351c7de16fe76c1d3d3d3da4554239e4c7d16cb8b82a94e7eaea3a0e6e18eb690b999fd31e", Z),
    "CCEL_data_gcp": (
        "3300980705adf09d28b707b79699d9874892164280832be2c386a715b6e204e0897fb564a064f810659207ba862b304f",
        "204d49f78d29918fe7b2f694e76653861a0c2a018987d2c3a54266eff737232524cf0af68c4d180e2f8c2c0937f21967", Z, Z),
    "CCEL_data_grub_gke": (
        "bc9945139042cf2cc75caf920aa57f14884ecfd7e893bccc51250c8ce90eb53ce72741e6adaa18183eb1331a87d4544a",
        "c17cb288a4dee302bb9ed8d27257a168f3264ad68cab53757f37eeaa7039657fa887cad65cf910e0fdc435ff110f8a7b",
        "334aeba2c985f8886cea97d1ecffbd512769d528b9a94009583db667ad7d2faa7d37fa145d75b192ceee2d2f10b2eb6d", Z),
}


def test_go_tdx_guest_table_and_log_replay_to_the_signed_quote_rtmrs():
    base = UPSTREAM / "go-tdx-guest/ccel"
    table = ccel.parse_acpi_table((base / "ccel_table.dat").read_bytes())
    assert (table.cc_type, table.cc_subtype, table.laml) == (2, 0, 262144)
    data = (base / "ccel_data.dat").read_bytes()
    assert len(data) == table.laml
    log = ccel.parse_event_log(data)
    quote = parse_quote((base / "cos-113-tdx-quote.dat").read_bytes())
    assert ccel.replay_rtmrs(log.events) == quote.rtmrs
    assert quote.report_data == (base / "nonce.dat").read_bytes()


@pytest.mark.parametrize("name", sorted(TRUSTEE_REPLAY))
def test_trustee_logs_replay_to_published_values(name):
    log = ccel.parse_event_log((UPSTREAM / "trustee/ccel" / name).read_bytes())
    assert tuple(r.hex() for r in ccel.replay_rtmrs(log.events)) == TRUSTEE_REPLAY[name]


@pytest.mark.parametrize("name", ["CCEL_data", "CCEL_data_ovmf", "CCEL_data_grub", "CCEL_data_grub_gke",
                                  "CCEL_AAEL_alibabacloud"])
def test_trustee_parse_outputs(name):
    expected = json.loads((UPSTREAM / "trustee/ccel" / f"{name}_out.json").read_text())["uefi_event_logs"]
    log = ccel.parse_event_log((UPSTREAM / "trustee/ccel" / name).read_bytes())
    assert len(log.events) == len(expected)
    for event, exp in zip(log.events, expected, strict=True):
        assert event.mr_index == exp["index"]
        assert event.type_name == exp["type_name"]
        assert base64.b64encode(event.data).decode() == exp["event"]
        assert [{"alg": ccel.ALGORITHM_NAMES[a], "digest": d.hex()} for a, d in event.digests] == exp["digests"]
        assert event.digest_matches_data() == exp["digest_matches_event"]


def test_go_eventlog_table_and_logs():
    base = UPSTREAM / "go-eventlog/ccel"
    table = ccel.parse_acpi_table((base / "CCEL.bin").read_bytes())
    padded = (base / "event_log.bin").read_bytes()
    assert len(padded) == table.laml
    log = ccel.parse_event_log(padded)
    assert len(log.events) == 27
    unpadded = ccel.parse_event_log((base / "CCEL_unpadded.data.bin").read_bytes())
    assert unpadded.end == len((base / "CCEL_unpadded.data.bin").read_bytes())
    # the duplicated-separator log is well-formed TCG2; the bug is semantic, not structural
    assert ccel.parse_event_log((base / "cos-113-intel-tdx-dupe-separator.bin").read_bytes()).events


def test_trim_drops_padding_only():
    data = (UPSTREAM / "go-tdx-guest/ccel/ccel_data.dat").read_bytes()
    trimmed = ccel.trim(data)
    assert len(trimmed) < len(data) and set(data[len(trimmed):]) == {0xFF}
    assert ccel.replay_rtmrs(ccel.parse_event_log(trimmed).events) == ccel.replay_rtmrs(
        ccel.parse_event_log(data).events)
    assert ccel.trim(trimmed) == trimmed


def test_acpi_table_validation():
    table = (UPSTREAM / "go-tdx-guest/ccel/ccel_table.dat").read_bytes()
    with pytest.raises(EventLogError, match="signature"):
        ccel.parse_acpi_table(b"XCEL" + table[4:])
    with pytest.raises(EventLogError, match="checksum"):
        ccel.parse_acpi_table(table[:40] + bytes([table[40] ^ 1]) + table[41:])
    with pytest.raises(EventLogError):
        ccel.parse_acpi_table(table[:30])


def test_appended_records_and_encoder_roundtrip():
    data = ccel.trim((UPSTREAM / "go-tdx-guest/ccel/ccel_data.dat").read_bytes())
    extra = ccel.encode_event(4, ccel.EV_EVENT_TAG, [(ccel.ALG_SHA384, bytes(range(48)))], b"hello")
    log = ccel.parse_event_log(data + extra + b"\xff" * 8)
    assert log.events[-1].data == b"hello" and log.events[-1].mr_index == 4
    own = ccel.parse_event_log(ccel.spec_id_header() + extra)
    assert len(own.events) == 1 and own.spec_id.digest_sizes == {ccel.ALG_SHA384: 48}


def test_malformed_logs_are_clean_errors():
    data = ccel.trim((UPSTREAM / "go-tdx-guest/ccel/ccel_data.dat").read_bytes())
    for cut in (0, 10, 40, 60, 100, len(data) - 3):
        with pytest.raises(EventLogError):
            ccel.parse_event_log(data[:cut])
    with pytest.raises(EventLogError, match="EV_NO_ACTION"):
        ccel.parse_event_log(b"\0\0\0\0\x04\0\0\0" + data[8:])
    undeclared = ccel.encode_event(1, 4, [(ccel.ALG_SHA256, bytes(32))], b"")
    with pytest.raises(EventLogError, match="does not declare"):
        ccel.parse_event_log(data + undeclared)


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
_SEED = ccel.trim((UPSTREAM / "trustee/ccel/CCEL_data_ovmf").read_bytes())


@FUZZ
@given(st.binary(max_size=4000))
def test_fuzz_random(data):
    for fn in (ccel.parse_event_log, ccel.parse_acpi_table):
        try:
            fn(data)
        except EventLogError:
            pass


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(_SEED) - 1), st.integers(0, 255)), min_size=1, max_size=6))
def test_fuzz_mutated(mutations):
    data = bytearray(_SEED)
    for offset, value in mutations:
        data[offset] = value
    try:
        log = ccel.parse_event_log(bytes(data))
        ccel.replay_rtmrs(log.events)
    except EventLogError:
        pass
