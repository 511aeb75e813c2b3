"""TdxAttester on an emulated TD: evidence shape, CCEL, AAEL, retries and runtime measurement."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from agents.settings import parse_settings
from attestation_agent import eventlog
from attestation_agent.attesters.base import MeasurementResult, RuntimeEvent
from attestation_agent.attesters.select import REGISTRY, select_attester
from attestation_agent.attesters.tdx import TdxAttester, TdxConfig, config_from_settings
from attestation_agent.errors import EvidenceError
from attestation_agent.eventlog import InvalidAaEventError
from attestation_agent.tdx import ccel
from attestation_agent.tdx.errors import MeasurementError, TsmError
from attestation_agent.tdx.quote import parse_quote
from attestation_agent.tdx.settings import TDX_SETTINGS
from tests.conftest import UPSTREAM
from tests.fakes.configfs_tsm import emulated_guest

GO = UPSTREAM / "go-tdx-guest/ccel"
DIGEST = hashlib.sha384(b"runtime data").digest()


@pytest.fixture
def guest(tmp_path):
    return emulated_guest(GO, tmp_path / "td")


def make(guest, tmp_path, **overrides):
    acpi = tmp_path / "td" / "acpi" / "tables"
    fields = dict(tsm_root=guest.tsm_root, ccel_table=acpi / "CCEL", ccel_data=acpi / "data" / "CCEL",
                  measurements_dir=tmp_path / "none", eventlog_path=tmp_path / "run" / "eventlog",
                  enable_eventlog=True, retry_delay=0.001)
    fields.update(overrides)
    return TdxAttester(TdxConfig(**fields), tsm_fs=guest.fs, register=guest.rtmr(3))


async def test_evidence_shape_and_binding(guest, tmp_path):
    evidence = await make(guest, tmp_path, enable_eventlog=False).evidence(DIGEST)
    assert set(evidence) == {"cc_eventlog", "quote", "aa_eventlog"}
    quote = parse_quote(base64.b64decode(evidence["quote"], validate=True))
    assert quote.report_data == DIGEST + bytes(16)
    assert base64.b64decode(evidence["cc_eventlog"]) == ccel.trim((GO / "ccel_data.dat").read_bytes())
    assert evidence["aa_eventlog"] is None


async def test_aael_is_sent_when_it_replays_to_the_quoted_rtmr3(guest, tmp_path):
    attester = make(guest, tmp_path)
    assert await attester.extend_runtime_measurement(RuntimeEvent("d", "op", "content")) is MeasurementResult.OK
    evidence = await attester.evidence(DIGEST)
    log = eventlog.parse_text(evidence["aa_eventlog"])
    assert [e.line for e in log.events] == ["d op content"]
    assert log.matches(parse_quote(base64.b64decode(evidence["quote"])).rtmrs[3])
    guest.rtmr(3).extend(bytes(48))  # a foreign extend: the log no longer explains RTMR3
    assert (await attester.evidence(DIGEST))["aa_eventlog"] is None


async def test_first_evidence_initialises_the_log_before_quoting(guest, tmp_path):
    evidence = await make(guest, tmp_path).evidence(DIGEST)
    assert evidence["aa_eventlog"].startswith("INIT sha384/")


async def test_runtime_measurement_switches_and_validation(guest, tmp_path):
    disabled = make(guest, tmp_path, enable_eventlog=False)
    assert await disabled.extend_runtime_measurement(RuntimeEvent("d", "o", "c")) is MeasurementResult.NOT_ENABLED
    attester = make(guest, tmp_path)
    with pytest.raises(MeasurementError, match="PCR 17"):
        await attester.extend_runtime_measurement(RuntimeEvent("d", "o", "c", register_index=5))
    with pytest.raises(InvalidAaEventError, match="whitespace") as info:
        await attester.extend_runtime_measurement(RuntimeEvent("d", "o", "two words"))
    assert info.value.http_status == 400
    assert await attester.extend_runtime_measurement(RuntimeEvent("d", "o", "c", 17)) is MeasurementResult.OK
    no_sysfs = TdxAttester(TdxConfig(tsm_root=guest.tsm_root, measurements_dir=tmp_path / "absent",
                                     enable_eventlog=True), tsm_fs=guest.fs)
    assert await no_sysfs.extend_runtime_measurement(RuntimeEvent("d", "o", "c")) is MeasurementResult.NOT_SUPPORTED


async def test_transient_errors_are_retried_and_permanent_ones_reported(guest, tmp_path):
    attester = make(guest, tmp_path, enable_eventlog=False)
    guest.faults.busy = 2
    assert (await attester.evidence(DIGEST))["quote"]
    guest.faults.busy = 5
    with pytest.raises(TsmError, match="busy"):
        await attester.evidence(DIGEST)
    guest.faults.busy = 0
    guest.faults.no_qgs = True
    with pytest.raises(TsmError, match="QGS"):
        await attester.evidence(DIGEST)
    assert not guest.fs.entries  # every report directory was removed


async def test_missing_or_broken_ccel(guest, tmp_path):
    missing = make(guest, tmp_path, enable_eventlog=False, ccel_data=tmp_path / "nope", ccel_table=tmp_path / "nope2")
    assert (await missing.evidence(DIGEST))["cc_eventlog"] is None
    broken = tmp_path / "broken"
    broken.write_bytes(b"\x01\x00\x00\x00junk")
    with pytest.raises(EvidenceError, match="event log"):
        await make(guest, tmp_path, enable_eventlog=False, ccel_data=broken).evidence(DIGEST)
    with pytest.raises(ValueError, match="at most 64"):
        await missing.evidence(bytes(65))


async def test_registered_and_selectable_with_settings(guest, tmp_path):
    assert REGISTRY.get("tdx") is not None
    default = select_attester("tdx")
    assert isinstance(default, TdxAttester) and not default.config.enable_eventlog
    assert default.config.tsm_root == Path("/sys/kernel/config/tsm/report")
    configured = select_attester("tdx", settings={"tdx_aael": str(tmp_path / "log"), "tdx_tsm_root": "/x",
                                                  "tdx_quote_attempts": 5})
    assert configured.config.enable_eventlog and configured.config.eventlog_path == tmp_path / "log"
    assert configured.config.tsm_root == Path("/x") and configured.config.quote_attempts == 5
    parsed = parse_settings({"tdx_aael": "off", "tdx_quote_attempts": "3"}, TDX_SETTINGS, where="[aa]")
    assert config_from_settings(parsed) == TdxConfig()
    assert make(guest, tmp_path).describe()["tee"] == "tdx"


async def test_td_report_through_a_non_device_is_a_clear_error(guest, tmp_path):
    fake = tmp_path / "tdx_guest"
    fake.write_bytes(b"")
    with pytest.raises(TsmError, match="GET_REPORT0"):
        await make(guest, tmp_path, tdx_guest_device=fake).td_report(DIGEST)
