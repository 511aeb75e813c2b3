"""Real FUSE against the real gocryptfs: our mount of gocryptfs-made volumes, our encryptor's
volumes in gocryptfs, tampering (EIO per block, manifest, strict), and daemon lifecycle."""

from __future__ import annotations

import asyncio
import errno
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cachefs.gocryptfs.content import CIPHER_BLOCK, HEADER_LEN, PLAIN_BLOCK
from cachefs.sources.local import LocalDirSource
from cachefs.testing import LONG_NAME, gocryptfs_mount, make_gocryptfs_volume, make_plain_tree, tree_digest, unmount
from cachefs.volume import open_volume

pytestmark = pytest.mark.timeout(180)
PASSWORD = b"integration password \xe2\x9c\x93"
REPO = Path(__file__).resolve().parents[2]


class Daemon:
    """``cai cachefs`` in a subprocess (pyfuse3 allows one mount per process)."""

    def __init__(self, cipher: Path, mnt: Path, key: Path, **env: str) -> None:
        self.mnt = mnt
        self.log = mnt.parent / f"{mnt.name}.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("CAI_", "MODEL_"))}
        environ.update({"CAI_CACHEFS_KEY_WAIT_TIMEOUT": "20", "CAI_CACHEFS_ALLOW_OTHER": "false", **env})
        mnt.mkdir(parents=True, exist_ok=True)
        self._log_handle = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agents.cli", "cachefs", "--cipher-dir", str(cipher), "--mount-point", str(mnt),
             "--key-file", str(key), "--log-format", "json"],
            cwd=REPO, env=environ, stdout=subprocess.DEVNULL, stderr=self._log_handle)

    def wait_ready(self, timeout: float = 60) -> Daemon:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"cachefs exited {self.proc.returncode}: {self.output()}")
            if '"cachefs.ready"' in self.output():
                return self
            time.sleep(0.05)
        raise AssertionError(f"cachefs not ready: {self.output()}")

    def wait_exit(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        self._log_handle.close()
        return code

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_handle.close()
        unmount(self.mnt)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cachefs-it")


@pytest.fixture(scope="module")
def keyfile(work: Path) -> Path:
    path = work / "key"
    path.write_bytes(PASSWORD + b"\n")
    return path


@pytest.fixture(scope="module")
def plain(work: Path) -> Path:
    root = work / "plain"
    make_plain_tree(root, big_mib=3)
    (root / "twin-4096").write_bytes(os.urandom(4096))  # same size as size-4096, for the swap test
    return root


@pytest.fixture(scope="module")
def gc_volume(work: Path, plain: Path, keyfile: Path) -> Path:
    make_gocryptfs_volume(plain, work / "gc-cipher", keyfile, work)
    return work / "gc-cipher"


@pytest.fixture
def mounted(gc_volume: Path, keyfile: Path, tmp_path: Path) -> Iterator[Daemon]:
    daemon = Daemon(gc_volume, tmp_path / "mnt", keyfile).wait_ready()
    yield daemon
    daemon.stop()


def _cipher_paths(cipher: Path) -> dict[str, str]:
    vol = asyncio.run(open_volume(LocalDirSource(cipher), PASSWORD))
    out = {}
    for node in vol.tree.nodes.values():
        parts = []
        n = node
        while n.inode != 1:
            parts.append(n.name.decode())
            n = vol.tree.nodes[n.parent]
        out["/".join(reversed(parts))] = node.cipher_path
    return out


def test_gocryptfs_volume_reads_identically(mounted: Daemon, plain: Path) -> None:
    mnt = mounted.mnt
    assert tree_digest(mnt) == tree_digest(plain)
    for rel in ("empty", "one", "size-4095", "size-4096", "size-4097", "big.bin", "sparse.bin", LONG_NAME):
        assert os.stat(mnt / rel).st_size == os.stat(plain / rel).st_size
    assert os.readlink(mnt / "link-to-deep") == "a/b/c/deep.txt"
    assert (mnt / "link-to-deep").read_bytes() == (plain / "a/b/c/deep.txt").read_bytes()
    assert sorted(os.listdir(mnt / "empty-dir")) == [] and sorted(os.listdir(mnt / "a")) == ["b", "empty-sub"]
    rnd = random.Random(7)
    for rel in ("big.bin", "sparse.bin", "size-4097"):
        expected = (plain / rel).read_bytes()
        fd = os.open(mnt / rel, os.O_RDONLY)
        try:
            for _ in range(60):
                off = rnd.randrange(0, len(expected) + 10)
                size = rnd.choice([1, 3, 4095, 4097, 65537, 200000, rnd.randrange(1, 300000)])
                assert os.pread(fd, size, off) == expected[off:off + size], (rel, off, size)
        finally:
            os.close(fd)
    vfs = os.statvfs(mnt)
    assert vfs.f_namemax == 255
    with pytest.raises(OSError) as info:
        open(mnt / "one", "r+b")
    assert info.value.errno in (errno.EROFS, errno.EACCES)


def test_inodes_stable_across_remount(gc_volume: Path, keyfile: Path, tmp_path: Path) -> None:
    inodes = []
    for _ in range(2):
        daemon = Daemon(gc_volume, tmp_path / "mnt", keyfile).wait_ready()
        try:
            inodes.append({rel: os.lstat(tmp_path / "mnt" / rel).st_ino for rel in ("big.bin", "a/b/c", "one")})
        finally:
            daemon.stop()
    assert inodes[0] == inodes[1]


def test_encryptor_volume_in_real_gocryptfs(work: Path, plain: Path, keyfile: Path, tmp_path: Path) -> None:
    dst = tmp_path / "ours"
    out = subprocess.run([sys.executable, "-m", "agents.cli", "cachefs", "encrypt", str(plain), str(dst),
                          "--passfile", str(keyfile), "--scryptn", "10", "--manifest"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, check=True).stdout
    assert "manifest digest: sha256:" in out
    with gocryptfs_mount(dst, tmp_path / "gc", keyfile) as mnt:
        assert tree_digest(mnt) == tree_digest(plain)
    daemon = Daemon(dst, tmp_path / "mnt", keyfile,
                    CAI_CACHEFS_MANIFEST_DIGEST=out.split("manifest digest: ")[1].strip()).wait_ready()
    try:
        assert tree_digest(tmp_path / "mnt") == tree_digest(plain)
    finally:
        daemon.stop()


def test_flipped_byte_is_eio_for_that_block_only(gc_volume: Path, plain: Path, keyfile: Path, tmp_path: Path) -> None:
    cipher = tmp_path / "cipher"
    shutil.copytree(gc_volume, cipher, symlinks=True)
    big = cipher / _cipher_paths(cipher)["big.bin"]
    data = bytearray(big.read_bytes())
    data[HEADER_LEN + CIPHER_BLOCK + 77] ^= 0x01  # block 1
    big.chmod(0o644)
    big.write_bytes(bytes(data))
    daemon = Daemon(cipher, tmp_path / "mnt", keyfile).wait_ready()
    try:
        expected = (plain / "big.bin").read_bytes()
        fd = os.open(tmp_path / "mnt" / "big.bin", os.O_RDONLY)
        try:
            assert os.pread(fd, PLAIN_BLOCK, 0) == expected[:PLAIN_BLOCK]
            with pytest.raises(OSError) as info:
                os.pread(fd, 100, PLAIN_BLOCK + 5)
            assert info.value.errno == errno.EIO
            assert os.pread(fd, 1 << 20, 2 * PLAIN_BLOCK) == expected[2 * PLAIN_BLOCK:2 * PLAIN_BLOCK + (1 << 20)]
        finally:
            os.close(fd)
        assert (tmp_path / "mnt" / "size-4097").read_bytes() == (plain / "size-4097").read_bytes()
    finally:
        daemon.stop()
    assert '"cachefs.bad_block"' in daemon.output() and '"block": 1' in daemon.output()


def test_wrong_password_no_mount(gc_volume: Path, tmp_path: Path) -> None:
    key = tmp_path / "wrong"
    key.write_bytes(b"not-the-password-xyzzy\n")
    daemon = Daemon(gc_volume, tmp_path / "mnt", key)
    assert daemon.wait_exit() == 1
    assert "wrong password" in daemon.output() and "xyzzy" not in daemon.output()
    assert not os.path.ismount(tmp_path / "mnt")


def test_key_timeout_and_sam_fail_closed(gc_volume: Path, tmp_path: Path) -> None:
    daemon = Daemon(gc_volume, tmp_path / "mnt", tmp_path / "never", CAI_CACHEFS_KEY_WAIT_TIMEOUT="0.5")
    assert daemon.wait_exit() == 1 and "did not appear" in daemon.output()
    daemon = Daemon(gc_volume, tmp_path / "mnt2", tmp_path / "never", MODEL_ENCRYPTION_METHOD="sam")
    assert daemon.wait_exit() == 2 and "Sam format is not supported" in daemon.output()
    assert not os.path.ismount(tmp_path / "mnt") and not os.path.ismount(tmp_path / "mnt2")


def test_stale_mount_after_crash(gc_volume: Path, keyfile: Path, plain: Path, tmp_path: Path) -> None:
    daemon = Daemon(gc_volume, tmp_path / "mnt", keyfile).wait_ready()
    daemon.proc.kill()
    daemon.proc.wait()
    with pytest.raises(OSError) as info:
        os.listdir(tmp_path / "mnt")
    assert info.value.errno == errno.ENOTCONN
    daemon = Daemon(gc_volume, tmp_path / "mnt", keyfile).wait_ready()
    try:
        assert (tmp_path / "mnt" / "one").read_bytes() == b"x"
        assert '"cachefs.stale_mount"' in daemon.output()
    finally:
        daemon.stop()
    assert not os.path.ismount(tmp_path / "mnt")


def test_manifest_and_strict(plain: Path, keyfile: Path, tmp_path: Path) -> None:
    from cachefs.encryptor import encrypt_directory

    cipher = tmp_path / "cipher"
    digest = encrypt_directory(plain, cipher, PASSWORD, scrypt_n=1 << 10, manifest=True).manifest_digest
    assert digest
    paths = _cipher_paths(cipher)
    # swap: twin-4096's ciphertext replaces size-4096's (same size, valid blocks, other file ID)
    a, b = cipher / paths["size-4096"], cipher / paths["twin-4096"]
    shutil.copyfile(b, a)
    # truncate big.bin at a block boundary (undetectable for gocryptfs)
    big = cipher / paths["big.bin"]
    os.truncate(big, HEADER_LEN + 10 * CIPHER_BLOCK)
    # zero block 1 of sparse.bin's ciphertext → a "hole" that gocryptfs accepts
    sp = cipher / paths["sparse.bin"]
    data = bytearray(sp.read_bytes())
    data[HEADER_LEN + CIPHER_BLOCK:HEADER_LEN + 2 * CIPHER_BLOCK] = bytes(CIPHER_BLOCK)
    sp.write_bytes(bytes(data))

    def reads(mnt: Path) -> dict[str, object]:
        out: dict[str, object] = {}
        for rel in ("size-4096", "big.bin", "sparse.bin", "one"):
            try:
                out[rel] = (mnt / rel).read_bytes()
            except OSError as exc:
                out[rel] = exc.errno
        return out

    with gocryptfs_mount(cipher, tmp_path / "gc", keyfile) as mnt:
        reference = reads(mnt)
    assert reference["size-4096"] == (plain / "twin-4096").read_bytes()  # gocryptfs cannot tell
    assert reference["sparse.bin"][PLAIN_BLOCK:2 * PLAIN_BLOCK] == bytes(PLAIN_BLOCK)  # type: ignore[index]

    results = {}
    for mode, env in {"off": {}, "manifest": {"CAI_CACHEFS_MANIFEST_DIGEST": digest},
                      "strict": {"CAI_CACHEFS_STRICT": "true"}}.items():
        daemon = Daemon(cipher, tmp_path / f"mnt-{mode}", keyfile, **env).wait_ready()
        try:
            results[mode] = reads(tmp_path / f"mnt-{mode}")
        finally:
            daemon.stop()
    assert results["off"] == reference  # default: gocryptfs-compatible
    assert results["manifest"] == {"size-4096": errno.EIO, "big.bin": errno.EIO, "sparse.bin": errno.EIO,
                                   "one": b"x"}
    assert results["strict"]["sparse.bin"] == errno.EIO and results["strict"]["one"] == b"x"
    assert results["strict"]["big.bin"] == reference["big.bin"]
