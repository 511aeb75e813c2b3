"""configfs-tsm quote protocol against the emulated kernel ABI, and the fake's own fidelity."""

from __future__ import annotations

import errno

import pytest

from attestation_agent.tdx import guest_device, tsm
from attestation_agent.tdx.errors import TsmError
from attestation_agent.tdx.quote import parse_quote
from attestation_agent.tdx.quote_verify import verify_quote
from tests.conftest import UPSTREAM
from tests.fakes.configfs_tsm import EmulatedTdxGuest

TEMPLATE = (UPSTREAM / "go-tdx-guest/ccel/cos-113-tdx-quote.dat").read_bytes()
RD = bytes(range(64))


@pytest.fixture
def guest(tmp_path):
    return EmulatedTdxGuest(TEMPLATE, tmp_path / "tsm" / "report")


def test_quote_binds_inblob_and_verifies(guest):
    quote = parse_quote(tsm.get_quote(RD, root=guest.tsm_root, fs=guest.fs))
    assert quote.report_data == RD
    assert quote.rtmrs == tuple(guest.rtmrs)
    assert "CAI Test SGX Root CA" in verify_quote(quote).root_subject
    assert guest.fs.inblob_writes == [64]
    assert guest.fs.created == guest.fs.removed and not guest.fs.entries


def test_wrong_provider_empty_outblob_and_race_are_errors_and_dir_is_always_removed(guest):
    guest.faults.provider = "sev_guest"
    with pytest.raises(TsmError, match="'sev_guest', not 'tdx_guest'"):
        tsm.get_quote(RD, root=guest.tsm_root, fs=guest.fs)
    guest.faults.provider = "tdx_guest"
    guest.faults.no_qgs = True
    with pytest.raises(TsmError, match="empty quote") as info:
        tsm.get_quote(RD, root=guest.tsm_root, fs=guest.fs)
    assert "QGS" in str(info.value)
    guest.faults.no_qgs = False
    guest.faults.racing_writer = True
    with pytest.raises(TsmError, match="generation=2, expected 1") as info:
        tsm.get_quote(RD, root=guest.tsm_root, fs=guest.fs)
    assert info.value.retryable
    assert len(guest.fs.removed) == 3 and not guest.fs.entries


def test_busy_is_retryable_and_bad_root_is_not(guest, tmp_path):
    guest.faults.busy = 1
    with pytest.raises(TsmError) as info:
        tsm.get_quote(RD, root=guest.tsm_root, fs=guest.fs)
    assert info.value.retryable and "busy" in str(info.value).lower()
    with pytest.raises(TsmError, match="mkdir") as info:
        tsm.get_quote(RD, root=tmp_path / "elsewhere", fs=guest.fs)
    assert not info.value.retryable and "configfs" in str(info.value)
    with pytest.raises(TsmError, match="exactly 64"):
        tsm.get_quote(RD[:48], root=guest.tsm_root, fs=guest.fs)


def test_fake_follows_the_kernel_abi(guest):
    entry = guest.tsm_root / "mine"
    fs = guest.fs
    fs.mkdir(entry)
    with pytest.raises(FileExistsError):
        fs.mkdir(entry)
    assert fs.read(entry / "provider", 64) == b"tdx_guest\n"
    assert fs.read(entry / "generation", 64) == b"0\n"
    with pytest.raises(OSError) as info:
        fs.read(entry / "outblob", 1 << 16)  # no inblob yet
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        fs.write(entry / "inblob", bytes(65))
    assert info.value.errno == errno.EINVAL
    fs.write(entry / "inblob", bytes(32))
    with pytest.raises(OSError):  # tdx_guest needs exactly 64 bytes
        fs.read(entry / "outblob", 1 << 16)
    fs.write(entry / "inblob", RD)
    assert fs.read(entry / "generation", 64) == b"2\n"
    first = fs.read(entry / "outblob", 1 << 16)
    assert fs.read(entry / "outblob", 1 << 16) == first and guest.quotes_generated == 1  # cached
    with pytest.raises(PermissionError):
        fs.write(entry / "provider", b"x")
    with pytest.raises(PermissionError):
        fs.read(entry / "inblob", 64)
    fs.rmdir(entry)
    with pytest.raises(FileNotFoundError):
        fs.read(entry / "provider", 64)


def test_os_filesystem_single_write_and_bounded_read(tmp_path):
    fs = tsm.OsTsmFilesystem()
    d = tmp_path / "entry"
    fs.mkdir(d)
    (d / "inblob").write_bytes(b"old-content-longer-than-new" * 4)
    assert fs.write(d / "inblob", RD) == 64
    assert (d / "inblob").read_bytes() == RD
    assert fs.read(d / "inblob", 10) == RD[:11]  # limit + 1 so callers can detect oversize
    (d / "inblob").unlink()
    fs.rmdir(d)
    assert not d.exists()


def test_td_report_ioctl_on_a_non_device_is_a_clear_error(tmp_path):
    not_a_device = tmp_path / "tdx_guest"
    not_a_device.write_bytes(b"")
    with pytest.raises(TsmError, match="GET_REPORT0") as info:
        guest_device.get_td_report(bytes(64), not_a_device)
    assert "not the tdx_guest device" in str(info.value)
    with pytest.raises(TsmError, match="opening"):
        guest_device.get_td_report(bytes(64), tmp_path / "missing")
    with pytest.raises(TsmError, match="exactly 64"):
        guest_device.get_td_report(bytes(10), not_a_device)
