"""Reader (lazy reads through the source interface, cache, bad blocks), tree building, local
source, manifest, and daemon settings — without FUSE."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.errors import ConfigError
from cachefs.daemon import SamUnsupportedError, load_settings, wait_for_key
from cachefs.encryptor import encrypt_directory
from cachefs.errors import BlockAuthError, CachefsError, ManifestError
from cachefs.gocryptfs.content import CIPHER_BLOCK, HEADER_LEN, PLAIN_BLOCK
from cachefs.manifest import ManifestEntry, build_manifest, manifest_digest, parse_manifest
from cachefs.reader import CHUNK_PLAIN, FileReader, PlainCache, ReadError, ReaderStats
from cachefs.sources.base import CiphertextSource, SourceEntry, SourceError
from cachefs.sources.local import LocalDirSource
from cachefs.volume import GocryptfsVolume, Node, open_volume, stable_inode

PW = b"pw-for-tests\n"


class CountingSource(CiphertextSource):
    """A remote-like source (no open_fd): records every ranged read."""

    def __init__(self, inner: LocalDirSource) -> None:
        self.inner = inner
        self.name = "counting"
        self.reads: list[tuple[str, int, int]] = []

    async def list_tree(self) -> list[SourceEntry]:
        return await self.inner.list_tree()

    async def read(self, path: str, offset: int, length: int) -> bytes:
        self.reads.append((path, offset, length))
        return await self.inner.read(path, offset, length)


@pytest.fixture(scope="module")
def volume_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("vol")
    plain = root / "plain"
    (plain / "sub").mkdir(parents=True)
    (plain / "big.bin").write_bytes(os.urandom(3 * CHUNK_PLAIN + 12345))
    (plain / "sub" / "small.txt").write_bytes(b"hello\n")
    (plain / "empty").write_bytes(b"")
    os.symlink("sub/small.txt", plain / "link")
    encrypt_directory(plain, root / "cipher", PW, scrypt_n=1 << 10, manifest=True)
    return plain, root / "cipher"


def _find(vol: GocryptfsVolume, name: bytes) -> Node:
    return next(n for n in vol.tree.nodes.values() if n.name == name)


async def test_tree_and_lazy_reads(volume_dir: tuple[Path, Path]) -> None:
    plain_dir, cipher_dir = volume_dir
    source = CountingSource(LocalDirSource(cipher_dir))
    vol = await open_volume(source, PW)
    names = {n.name for n in vol.tree.nodes.values()}
    assert {b"big.bin", b"sub", b"small.txt", b"empty", b"link"} <= names
    assert b"cai-manifest.json" not in names
    assert _find(vol, b"link").target == b"sub/small.txt"
    big = _find(vol, b"big.bin")
    plain = (plain_dir / "big.bin").read_bytes()
    assert big.size == len(plain)
    source.reads.clear()
    reader = FileReader(big, source, vol.cipher, PlainCache(64 << 20), ReaderStats(), prefetch_chunks=0)
    # A small read from the middle fetches only the header and the blocks it needs.
    off = 2 * CHUNK_PLAIN + 5000
    assert bytes(await reader.read(off, 100)) == plain[off:off + 100]
    assert [r[2] for r in source.reads] == [HEADER_LEN, CIPHER_BLOCK]
    # Odd offsets and sizes, across chunk boundaries and EOF.
    for o, s in [(0, 1), (4095, 2), (CHUNK_PLAIN - 7, 20000), (len(plain) - 10, 100), (len(plain), 10), (1, 1 << 20)]:
        assert bytes(await reader.read(o, s)) == plain[o:o + s]
    reader.close()


async def test_sequential_prefetch_and_cache(volume_dir: tuple[Path, Path]) -> None:
    plain_dir, cipher_dir = volume_dir
    source = CountingSource(LocalDirSource(cipher_dir))
    vol = await open_volume(source, PW)
    stats = ReaderStats()
    big = _find(vol, b"big.bin")
    reader = FileReader(big, source, vol.cipher, PlainCache(64 << 20), stats, prefetch_chunks=2)
    plain = (plain_dir / "big.bin").read_bytes()
    assert bytes(await reader.read(0, CHUNK_PLAIN)) == plain[:CHUNK_PLAIN]
    assert bytes(await reader.read(CHUNK_PLAIN, CHUNK_PLAIN)) == plain[CHUNK_PLAIN:2 * CHUNK_PLAIN]
    await asyncio.sleep(0.05)
    if reader._prefetch_task is not None:
        await reader._prefetch_task
    assert stats.prefetched >= 1
    before = stats.chunks_decrypted
    assert bytes(await reader.read(2 * CHUNK_PLAIN, CHUNK_PLAIN)) == plain[2 * CHUNK_PLAIN:3 * CHUNK_PLAIN]
    assert stats.chunks_decrypted == before and stats.cache_hits >= 1
    reader.close()


async def test_bad_block_fails_only_its_reads(volume_dir: tuple[Path, Path], tmp_path: Path) -> None:
    plain_dir, cipher_dir = volume_dir
    vol = await open_volume(LocalDirSource(cipher_dir), PW)
    big = _find(vol, b"big.bin")
    data = bytearray((cipher_dir / big.cipher_path).read_bytes())
    data[HEADER_LEN + 3 * CIPHER_BLOCK + 50] ^= 0x40  # block 3

    class Tampered(CountingSource):
        async def read(self, path: str, offset: int, length: int) -> bytes:
            return bytes(data[offset:offset + length])

    stats = ReaderStats()
    reader = FileReader(big, Tampered(LocalDirSource(cipher_dir)), vol.cipher, PlainCache(64 << 20), stats)
    plain = (plain_dir / "big.bin").read_bytes()
    with pytest.raises(BlockAuthError) as info:
        await reader.read(0, CHUNK_PLAIN)
    assert info.value.block == 3
    assert bytes(await reader.read(0, 3 * PLAIN_BLOCK)) == plain[:3 * PLAIN_BLOCK]  # blocks 0-2 fine
    start = 4 * PLAIN_BLOCK
    assert bytes(await reader.read(start, CHUNK_PLAIN)) == plain[start:start + CHUNK_PLAIN]
    with pytest.raises(BlockAuthError):
        await reader.read(3 * PLAIN_BLOCK + 10, 10)
    assert stats.bad_blocks >= 2


async def test_read_deadline_gives_clean_error_and_later_read_succeeds(volume_dir: tuple[Path, Path]) -> None:
    """A store that never answers costs the application ``read_timeout``, then EIO; not forever."""
    plain_dir, cipher_dir = volume_dir
    vol = await open_volume(LocalDirSource(cipher_dir), PW)
    big = _find(vol, b"big.bin")
    gate = asyncio.Event()

    class Silent(CountingSource):
        async def read(self, path: str, offset: int, length: int) -> bytes:
            await gate.wait()  # accepted, never answered (until the test opens the gate)
            return await super().read(path, offset, length)

    reader = FileReader(big, Silent(LocalDirSource(cipher_dir)), vol.cipher, PlainCache(64 << 20), ReaderStats(),
                        read_timeout=0.2)
    with pytest.raises(ReadError) as info:
        await reader.read(0, PLAIN_BLOCK)
    assert "within 0.2 s" in info.value.message and big.cipher_path in info.value.message
    assert "read_timeout" in (info.value.hint or "")
    gate.set()  # the store answers again: the same reader serves the same range, no restart
    plain = (plain_dir / "big.bin").read_bytes()
    assert bytes(await reader.read(0, PLAIN_BLOCK)) == plain[:PLAIN_BLOCK]


def test_plain_cache_is_bounded() -> None:
    cache = PlainCache(3 * 100)
    for i in range(10):
        cache.put((1, i), bytearray(100))
    assert cache.used <= 300 and cache.get((1, 9)) is not None and cache.get((1, 0)) is None
    cache.drop_inode(1)
    assert cache.used == 0


def test_stable_inodes() -> None:
    a = stable_inode("x/y", {})
    assert a == stable_inode("x/y", {}) and a > 1
    assert stable_inode("x/y", {a: None}) != a


async def test_wrong_password_no_tree(volume_dir: tuple[Path, Path]) -> None:
    with pytest.raises(CachefsError, match="wrong password"):
        await open_volume(LocalDirSource(volume_dir[1]), b"nope\n")


# -- local source ---------------------------------------------------------------------------------

async def test_local_source_reports_symlinks_and_stays_inside(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(b"0123456789")
    (tmp_path.parent / f"{tmp_path.name}-outside").write_bytes(b"secret")
    os.symlink(f"../{tmp_path.name}-outside", tmp_path / "escape")
    src = LocalDirSource(tmp_path)
    entries = {e.path: e for e in await src.list_tree()}
    assert entries["d"].kind == "dir" and entries["d/f"].size == 10 and entries["d/f"].etag
    assert entries["escape"].kind == "symlink" and entries["escape"].target == f"../{tmp_path.name}-outside"
    assert await src.read("d/f", 3, 4) == b"3456"
    assert await src.read("d/f", 8, 100) == b"89"
    assert await src.read_all("d/f") == b"0123456789"
    for bad in ("escape", "../x", "/etc/passwd", "d/../d/f", "", "missing"):
        with pytest.raises(SourceError):
            await src.read(bad, 0, 1)


# -- manifest -------------------------------------------------------------------------------------

def test_manifest_roundtrip_and_digest() -> None:
    entries = {"a": ManifestEntry(100, "11" * 16, "ab" * 32), "e": ManifestEntry(0, "", "cd" * 32)}
    data = build_manifest(entries)
    assert parse_manifest(data, manifest_digest(data)) == entries
    assert parse_manifest(data, None) == entries
    with pytest.raises(ManifestError, match="does not match"):
        parse_manifest(data.replace(b"100", b"101"), manifest_digest(data))


@given(st.binary(max_size=300))
@settings(max_examples=150)
def test_manifest_fuzz(data: bytes) -> None:
    try:
        parse_manifest(data, None)
    except ManifestError:
        pass


# -- daemon settings ------------------------------------------------------------------------------

def _args(**kw: object) -> argparse.Namespace:
    return argparse.Namespace(**kw)


def test_settings_sam_and_unknown_method() -> None:
    with pytest.raises(SamUnsupportedError, match="Sam format is not supported"):
        load_settings(_args(), {"MODEL_ENCRYPTION_METHOD": "sam", "MODEL_MOUNT_POINT": "/tmp/m"})
    with pytest.raises(ConfigError):
        load_settings(_args(), {"MODEL_ENCRYPTION_METHOD": "rot13", "MODEL_MOUNT_POINT": "/tmp/m"})
    with pytest.raises(ConfigError, match="mount point"):
        load_settings(_args(), {})
    settings_, _ = load_settings(_args(), {"MODEL_MOUNT_POINT": "/tmp/m", "CAI_CACHEFS_STRICT": "true"})
    assert settings_["mount_point"] == "/tmp/m" and settings_["strict"] is True
    with pytest.raises(ConfigError):
        load_settings(_args(), {"MODEL_MOUNT_POINT": "/tmp/m", "CAI_CACHEFS_MANIFEST_DIGEST": "md5:x"})


async def test_key_wait_fails_closed(tmp_path: Path) -> None:
    with pytest.raises(CachefsError, match="did not appear"):
        await wait_for_key(str(tmp_path / "missing"), 0.3, asyncio.Event())
    (tmp_path / "k").write_bytes(b"pw\n")
    assert await wait_for_key(str(tmp_path / "k"), 1, asyncio.Event()) == b"pw\n"


async def test_failing_files_expire_from_status(volume_dir: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """``/status`` "failing" means now: a good read clears a file, and so does FAILING_FOR without a new failure."""
    from cachefs import fs

    vol = await open_volume(LocalDirSource(volume_dir[1]), PW)
    ops = fs.CachefsOperations(vol, fs.FsOptions())
    big, small = _find(vol, b"big.bin"), next(n for n in vol.tree.nodes.values() if n.kind == "file"
                                              and n.name != b"big.bin")
    clock = [1000.0]
    monkeypatch.setattr(fs.time, "monotonic", lambda: clock[0])
    ops._read_failed(big.inode, CachefsError("no ciphertext from the store within 2 s"))
    clock[0] += fs.FAILING_FOR / 2
    ops._read_failed(small.inode, CachefsError("GET failed"))
    ops._read_failed(small.inode, CachefsError("GET failed again"))
    assert {(f.file, f.count, f.error) for f in ops.failing_now()} == {
        (big.cipher_path, 1, "no ciphertext from the store within 2 s"), (small.cipher_path, 2, "GET failed again")}
    clock[0] += fs.FAILING_FOR / 2 + 1  # big's failure is now older than FAILING_FOR; small's is not
    assert [f.file for f in ops.failing_now()] == [small.cipher_path]
    assert ops.read_errors == 3  # the total count is not forgotten


@pytest.mark.parametrize("key", ["read_timeout", "cache_recheck_interval"])
@pytest.mark.parametrize("bad", ["0", "-1", "3601"])
def test_duration_settings_are_bounded(key: str, bad: str) -> None:
    with pytest.raises(ConfigError, match=rf"invalid value for '{key}'.*within \(0, 3600\] seconds"):
        load_settings(_args(), environ={f"CAI_CACHEFS_{key.upper()}": bad, "MODEL_MOUNT_POINT": "/mnt/model"})
