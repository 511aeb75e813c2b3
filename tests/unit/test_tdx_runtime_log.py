"""Durable AA event log + RTMR3: ordering, crash recovery, and the sysfs register shell."""

from __future__ import annotations

import hashlib
import os

import pytest

from attestation_agent import eventlog
from attestation_agent.tdx.errors import MeasurementError
from attestation_agent.tdx.rtmr import SysfsRtmr, rtmr_path
from attestation_agent.tdx.runtime_log import RuntimeEventLog
from tests.conftest import UPSTREAM
from tests.fakes.configfs_tsm import EmulatedTdxGuest

TEMPLATE = (UPSTREAM / "go-tdx-guest/ccel/cos-113-tdx-quote.dat").read_bytes()


@pytest.fixture
def guest(tmp_path):
    g = EmulatedTdxGuest(TEMPLATE, tmp_path / "tsm")
    g.rtmrs[3] = hashlib.sha384(b"boot-time RTMR3").digest()  # a non-zero start value
    return g


def test_first_start_writes_init_from_live_register_and_extends_it(tmp_path, guest):
    start = guest.rtmrs[3]
    log = RuntimeEventLog(tmp_path / "run" / "eventlog", guest.rtmr(3))
    parsed = log.open()
    text = (tmp_path / "run" / "eventlog").read_text()
    assert text == f"INIT sha384/{start.hex()}\n"
    assert parsed.init_value == start
    assert guest.rtmrs[3] == hashlib.sha384(start + hashlib.sha384(text.strip().encode()).digest()).digest()


def test_append_logs_before_extend_and_replays(tmp_path, guest):
    path = tmp_path / "eventlog"
    register = guest.rtmr(3)
    log = RuntimeEventLog(path, register)
    log.open()
    seen = []

    real_extend = register.extend

    def spy(data):
        seen.append(path.read_text())  # the line must already be on disk
        real_extend(data)

    register.extend = spy  # type: ignore[method-assign]
    value = log.append(eventlog.make_event("github.com/confidential-containers", "PullImage", "busybox@sha256:ab"))
    assert seen[-1].endswith("PullImage busybox@sha256:ab\n")
    assert value == guest.rtmrs[3]
    text, parsed = log.snapshot()
    assert parsed.matches(guest.rtmrs[3]) and text == path.read_text()


def test_restart_reextends_a_logged_but_unextended_entry(tmp_path, guest):
    path = tmp_path / "eventlog"
    log = RuntimeEventLog(path, guest.rtmr(3))
    log.open()
    log.append(eventlog.make_event("d", "op", "one"))
    with open(path, "a") as f:  # crash after the durable append, before the extend
        f.write("d op two\n")
    before = guest.rtmrs[3]
    recovered = RuntimeEventLog(path, guest.rtmr(3)).open()
    assert [e.content for e in recovered.events] == ["one", "two"]
    assert guest.rtmrs[3] != before and recovered.matches(guest.rtmrs[3])


def test_restart_after_crash_before_init_extend(tmp_path, guest):
    path = tmp_path / "eventlog"
    path.write_text(f"INIT sha384/{guest.rtmrs[3].hex()}\n")
    log = RuntimeEventLog(path, guest.rtmr(3)).open()
    assert log.matches(guest.rtmrs[3])


def test_torn_last_line_is_dropped(tmp_path, guest):
    path = tmp_path / "eventlog"
    log = RuntimeEventLog(path, guest.rtmr(3))
    log.open()
    log.append(eventlog.make_event("d", "op", "one"))
    with open(path, "a") as f:
        f.write("d op tw")  # torn write, never extended
    recovered = RuntimeEventLog(path, guest.rtmr(3)).open()
    assert [e.content for e in recovered.events] == ["one"]
    assert path.read_text().endswith("d op one\n")


def test_foreign_extend_or_edited_log_fails_closed(tmp_path, guest):
    path = tmp_path / "eventlog"
    log = RuntimeEventLog(path, guest.rtmr(3))
    log.open()
    log.append(eventlog.make_event("d", "op", "one"))
    guest.rtmr(3).extend(bytes(48))  # someone else extended RTMR3
    with pytest.raises(MeasurementError, match="does not replay"):
        RuntimeEventLog(path, guest.rtmr(3)).open()
    path.write_text("garbage\n")
    with pytest.raises(MeasurementError, match="corrupt"):
        RuntimeEventLog(path, guest.rtmr(3)).open()


def test_sysfs_rtmr_reads_48_bytes_and_writes_exactly_48_once(tmp_path):
    path = rtmr_path(3, tmp_path)
    assert path.name == "rtmr3:sha384"
    path.write_bytes(bytes(range(48)))
    register = SysfsRtmr(path)
    assert register.read() == bytes(range(48))
    register.extend(b"\x07" * 48)  # a plain file records what the kernel would receive
    assert path.read_bytes() == b"\x07" * 48
    with pytest.raises(MeasurementError, match="exactly 48"):
        register.extend(b"short")
    path.write_bytes(b"x" * 47)
    with pytest.raises(MeasurementError, match="47 bytes"):
        register.read()
    with pytest.raises(MeasurementError, match="does not exist"):
        SysfsRtmr(tmp_path / "missing").read()
    os.chmod(path, 0o000)
    if os.geteuid() != 0:  # root ignores file modes
        with pytest.raises(MeasurementError):
            register.read()
