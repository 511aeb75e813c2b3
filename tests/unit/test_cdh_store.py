"""The resources directory: memory-filesystem check, atomic 0400 writes, 0700 directory, ready marker."""

from __future__ import annotations

import os
import stat
import subprocess
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_hub import memfs
from data_hub.errors import StorageError
from data_hub.store import READY_MARKER, ResourceStore, atomic_write

MOUNTINFO = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw
50 27 0:40 / /run rw,nosuid shared:5 - tmpfs tmpfs rw,mode=755
51 50 0:41 / /run/cai/resources rw - ramfs ramfs rw
52 27 0:42 / /srv/with\\040space rw - tmpfs tmpfs rw
53 27 0:43 / /run2 rw - ext4 /dev/vdb rw
garbage line
"""


@pytest.fixture
def tmpfs(tmp_path):
    """A real tmpfs mounted inside tmp_path (we run as root)."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(mount_point)], check=True)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.mark.parametrize("path, expected", [
    ("/run/cai/resources", "ramfs"),
    ("/run/cai/resources/model-key", "ramfs"),
    ("/run/cai", "tmpfs"),
    ("/run2/cai", "ext4"),          # prefix of /run but not under it
    ("/srv/with space/x", "tmpfs"),  # octal escapes decoded
    ("/var/lib", "ext4"),
])
def test_filesystem_of(path, expected):
    assert memfs.filesystem_of(path, memfs.parse_mountinfo(MOUNTINFO)) == expected


def test_later_mount_shadows_earlier():
    text = MOUNTINFO + "60 50 0:50 / /run rw - ext4 /dev/vdc rw\n"
    assert memfs.filesystem_of("/run/x", memfs.parse_mountinfo(text)) == "ext4"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_mountinfo_parser(text):
    mounts = memfs.parse_mountinfo(text)
    memfs.filesystem_of("/run/cai/resources", mounts)


def test_non_memory_directory_is_refused(tmp_path):
    target = tmp_path / "resources"
    assert memfs.filesystem_type(str(tmp_path)) not in memfs.MEMORY_FILESYSTEMS  # the test's premise
    with pytest.raises(StorageError, match="refusing to write secrets") as info:
        ResourceStore(target).prepare()
    assert "allow_persistent_storage" in str(info.value)
    assert not any(target.iterdir())


def test_override_allows_persistent_storage_with_warning(tmp_path):
    store = ResourceStore(tmp_path / "resources", allow_persistent=True)
    store.prepare()
    assert store.write("model-key", b"value-1")


def test_modes_atomic_write_and_marker(tmpfs):
    store = ResourceStore(tmpfs / "cai" / "resources")
    store.prepare()
    assert memfs.is_memory_filesystem(str(store.directory))
    assert stat.S_IMODE(os.stat(store.directory).st_mode) == 0o700
    assert store.write("model-key", b"first-value") is True
    path = store.path("model-key")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o400
    inode = os.stat(path).st_ino
    assert store.write("model-key", b"first-value") is False  # unchanged: same inode, no churn
    assert os.stat(path).st_ino == inode
    assert store.write("model-key", b"second-value") is True
    assert path.read_bytes() == b"second-value" and os.stat(path).st_ino != inode
    assert sorted(p.name for p in store.directory.iterdir()) == ["model-key"]  # no temp files left
    store.set_ready(True)
    assert (store.directory / READY_MARKER).exists()
    store.set_ready(False)
    assert not (store.directory / READY_MARKER).exists()


def test_owner_group_and_group_readable_mode(tmpfs):
    store = ResourceStore(tmpfs / "res", file_mode=0o440, uid=65534, gid=65534)
    store.prepare()
    store.write("alt-key", b"v")
    for path, mode in ((store.directory, 0o700), (store.path("alt-key"), 0o440)):
        st_ = os.stat(path)
        assert (st_.st_uid, st_.st_gid, stat.S_IMODE(st_.st_mode)) == (65534, 65534, mode)


def test_stale_temp_files_are_removed(tmpfs):
    directory = tmpfs / "res"
    directory.mkdir()
    (directory / ".tmp-abc").write_bytes(b"half a secret")
    ResourceStore(directory).prepare()
    assert not (directory / ".tmp-abc").exists()


def test_failed_write_leaves_previous_value_and_no_temp(tmpfs, monkeypatch):
    store = ResourceStore(tmpfs / "res")
    store.prepare()
    store.write("k", b"good")

    def boom(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(StorageError, match="No space left"):
        store.write("k", b"new")
    monkeypatch.undo()
    assert store.path("k").read_bytes() == b"good"
    assert sorted(p.name for p in store.directory.iterdir()) == ["k"]


def test_reader_never_sees_partial_or_empty_file(tmpfs):
    """A reader polling the path while values are replaced sees only complete old or new values."""
    path = tmpfs / "model-key"
    values = [bytes([i]) * (256 * 1024) for i in range(1, 40)]
    atomic_write(path, values[0])
    seen: set[bytes] = set()
    bad: list[int] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            data = path.read_bytes()
            if data not in values:
                bad.append(len(data))
            seen.add(data[:1])

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for value in values[1:]:
            atomic_write(path, value)
    finally:
        done.set()
        thread.join()
    assert bad == []
    assert len(seen) >= 1
