"""The native batch-decrypt engine (cachefs._accel) against the pure-Python engine and cryptography.

Both engines must agree on every input: valid blocks, tampered blocks (same failing index, that
block's plaintext wiped, later blocks untouched), malformed shapes (ValueError), and — through
ContentCipher — holes and strict mode. The native engine must be built here (the test extras
install compiles it), so its absence is a failure, not a skip.
"""

from __future__ import annotations

import os
import struct
import threading

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.errors import ConfigError
from cachefs import accel
from cachefs.accel import CIPHER_BLOCK, PLAIN_BLOCK, NativeBatch, PythonBatch, make_batch, resolve_engine
from cachefs.errors import BlockAuthError, CachefsError
from cachefs.gocryptfs.content import ContentCipher
from cachefs.reader import FileReader, PlainCache, ReadBuffers, ReaderStats
from cachefs.sources.local import LocalDirSource
from cachefs.volume import open_volume

KEY = bytes(range(100, 132))
SENTINEL = 0xA5


def encrypt(plain: bytes, first_block: int, file_id: bytes, key: bytes = KEY) -> bytes:
    """Reference ciphertext blocks written with cryptography (independent of both engines)."""
    aead = AESGCM(key)
    out = []
    for n, start in enumerate(range(0, len(plain), PLAIN_BLOCK)):
        nonce = os.urandom(16)
        aad = struct.pack(">Q", first_block + n) + file_id
        out.append(nonce + aead.encrypt(nonce, plain[start:start + PLAIN_BLOCK], aad))
    return b"".join(out)


def engines() -> list[accel.BatchDecryptor]:
    return [NativeBatch(KEY), PythonBatch(KEY)]


def run(engine: accel.BatchDecryptor, src: bytes, first: int, fid: bytes, size: int) -> tuple[int, bytes]:
    dst = bytearray([SENTINEL]) * size
    return engine.decrypt(src, dst, fid, first), bytes(dst)


def test_native_engine_is_built_and_default() -> None:
    assert accel.native_available(), accel.describe()
    assert resolve_engine(environ={}) == "native"
    assert make_batch(KEY, None).engine == "native"
    assert accel.describe()["openssl"].startswith("OpenSSL")


blocks_st = st.integers(0, 5)
tail_st = st.integers(0, PLAIN_BLOCK)
first_st = st.one_of(st.integers(0, 1000), st.just((1 << 64) - 6))


@given(blocks_st, tail_st, first_st, st.binary(min_size=16, max_size=16))
@settings(max_examples=60, deadline=None)
def test_engines_agree_on_valid_input(full: int, tail: int, first: int, fid: bytes) -> None:
    plain = os.urandom(full * PLAIN_BLOCK + tail)
    src = encrypt(plain, first, fid)
    results = [run(e, src, first, fid, len(plain) + 7) for e in engines()]
    assert results[0] == results[1]
    index, out = results[0]
    assert index == -1
    assert out[:len(plain)] == plain and out[len(plain):] == bytes([SENTINEL]) * 7


@given(st.integers(1, 5), tail_st, st.integers(0, 50), st.data())
@settings(max_examples=80, deadline=None)
def test_engines_agree_on_tampering(full: int, tail: int, first: int, data: st.DataObject) -> None:
    fid = os.urandom(16)
    plain = os.urandom(full * PLAIN_BLOCK + tail)
    src = bytearray(encrypt(plain, first, fid))
    pos = data.draw(st.integers(0, len(src) - 1), label="flipped byte")
    src[pos] ^= data.draw(st.integers(1, 255), label="mask")
    bad = pos // CIPHER_BLOCK
    results = [run(e, bytes(src), first, fid, len(plain)) for e in engines()]
    assert results[0] == results[1]
    index, out = results[0]
    assert index == bad
    assert out[:bad * PLAIN_BLOCK] == plain[:bad * PLAIN_BLOCK]  # authenticated prefix
    bad_len = min(PLAIN_BLOCK, len(plain) - bad * PLAIN_BLOCK)
    assert out[bad * PLAIN_BLOCK:bad * PLAIN_BLOCK + bad_len] == bytes(bad_len)  # wiped, never exposed
    assert out[bad * PLAIN_BLOCK + bad_len:] == bytes([SENTINEL]) * (len(plain) - bad * PLAIN_BLOCK - bad_len)


def test_wrong_position_file_and_key_fail_on_both() -> None:
    fid = os.urandom(16)
    src = encrypt(os.urandom(3 * PLAIN_BLOCK), 10, fid)
    for engine in engines():
        assert run(engine, src, 11, fid, 3 * PLAIN_BLOCK)[0] == 0  # blocks bound to their number
        assert run(engine, src, 10, os.urandom(16), 3 * PLAIN_BLOCK)[0] == 0  # and to their file
        assert run(engine, src[CIPHER_BLOCK:], 11, fid, 2 * PLAIN_BLOCK)[0] == -1
    other = encrypt(b"x" * 10, 0, fid, key=os.urandom(32))
    assert [run(e, other, 0, fid, 10)[0] for e in engines()] == [0, 0]


@given(st.binary(max_size=3 * CIPHER_BLOCK), st.integers(0, 3), st.integers(0, 2 * PLAIN_BLOCK))
@settings(max_examples=100, deadline=None)
def test_engines_agree_on_garbage(src: bytes, first: int, dst_size: int) -> None:
    """Random bytes: the same failing index, or the same ValueError, never anything else."""
    outcomes = []
    for engine in engines():
        try:
            outcomes.append(("ok", *run(engine, src, first, b"F" * 16, dst_size)))
        except ValueError as exc:
            outcomes.append(("ValueError", str(exc)))
    assert outcomes[0] == outcomes[1]
    if outcomes[0][0] == "ok":
        _, index, out = outcomes[0]
        wiped = min(len(src), CIPHER_BLOCK) - 32 if src else 0
        assert index == (0 if src else -1)  # random bytes never authenticate
        assert out == bytes(wiped) + bytes([SENTINEL]) * (dst_size - wiped)


@pytest.mark.parametrize("engine", engines(), ids=lambda e: e.engine)
def test_argument_validation(engine: accel.BatchDecryptor) -> None:
    src = encrypt(b"a" * 5000, 0, b"F" * 16)
    with pytest.raises(ValueError, match="file_id"):
        engine.decrypt(src, bytearray(5000), b"short", 0)
    with pytest.raises(ValueError, match="dst is smaller"):
        engine.decrypt(src, bytearray(4999), b"F" * 16, 0)
    with pytest.raises(ValueError, match="holds no data"):
        engine.decrypt(src[:CIPHER_BLOCK + 32], bytearray(5000), b"F" * 16, 0)
    for first in (-1, 1 << 64):
        with pytest.raises(ValueError, match="first_block"):
            engine.decrypt(src, bytearray(5000), b"F" * 16, first)
    with pytest.raises(ValueError, match="overflows"):
        engine.decrypt(src, bytearray(5000), b"F" * 16, (1 << 64) - 1)
    with pytest.raises(TypeError):
        engine.decrypt(src, bytes(5000), b"F" * 16, 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        type(engine)(b"short key")


def test_native_refuses_overlapping_buffers() -> None:
    buf = bytearray(encrypt(b"z" * 4096, 0, b"F" * 16)) + bytearray(4096)
    view = memoryview(buf)
    with pytest.raises(ValueError, match="overlap"):
        NativeBatch(KEY).decrypt(view[:CIPHER_BLOCK], view[100:], b"F" * 16, 0)


def test_native_is_thread_safe() -> None:
    """Concurrent calls on one object (the second one gets a private context) stay correct."""
    fid = os.urandom(16)
    plain = os.urandom(64 * PLAIN_BLOCK)
    src = encrypt(plain, 0, fid)
    engine = NativeBatch(KEY)
    failures: list[str] = []

    def work() -> None:
        out = bytearray(len(plain))
        for _ in range(30):
            if engine.decrypt(src, out, fid, 0) != -1 or out != plain:
                failures.append("wrong result")

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


@given(st.lists(st.sampled_from(["ok", "hole", "flip"]), min_size=1, max_size=6), st.booleans())
@settings(max_examples=60, deadline=None)
def test_content_cipher_holes_and_strict_identical(kinds: list[str], strict: bool) -> None:
    """Hole/strict policy is shared: both engines give the same bytes or the same error."""
    fid = os.urandom(16)
    plain = bytearray(os.urandom(len(kinds) * PLAIN_BLOCK))
    src = bytearray(encrypt(bytes(plain), 0, fid))
    for n, kind in enumerate(kinds):
        if kind == "hole":
            src[n * CIPHER_BLOCK:(n + 1) * CIPHER_BLOCK] = bytes(CIPHER_BLOCK)
            plain[n * PLAIN_BLOCK:(n + 1) * PLAIN_BLOCK] = bytes(PLAIN_BLOCK)
        elif kind == "flip":
            src[n * CIPHER_BLOCK + 40] ^= 1
    outcomes = []
    for engine in ("native", "python"):
        cipher = ContentCipher(KEY, engine=engine)
        assert cipher.engine == engine
        try:
            outcomes.append(("ok", bytes(cipher.decrypt_blocks(src, 0, fid, strict=strict, where="f"))))
        except BlockAuthError as exc:
            outcomes.append(("error", exc.block, str(exc)))
    assert outcomes[0] == outcomes[1]
    bad = [n for n, k in enumerate(kinds) if k == "flip" or (k == "hole" and strict)]
    if bad:
        assert outcomes[0][:2] == ("error", bad[0])
    else:
        assert outcomes[0] == ("ok", bytes(plain))


def test_short_zero_block_is_not_a_hole() -> None:
    fid = os.urandom(16)
    for engine in ("native", "python"):
        with pytest.raises(BlockAuthError, match="block 3 failed authentication"):
            ContentCipher(KEY, engine=engine).decrypt_blocks(bytes(100), 3, fid)


def test_out_buffer_never_holds_unauthenticated_bytes() -> None:
    fid = os.urandom(16)
    plain = os.urandom(4 * PLAIN_BLOCK)
    src = bytearray(encrypt(plain, 0, fid))
    src[2 * CIPHER_BLOCK + 100] ^= 8
    for engine in ("native", "python"):
        out = bytearray(b"\xff") * len(plain)
        with pytest.raises(BlockAuthError):
            ContentCipher(KEY, engine=engine).decrypt_blocks(src, 0, fid, out=out)
        assert out[:2 * PLAIN_BLOCK] == plain[:2 * PLAIN_BLOCK]
        assert out[2 * PLAIN_BLOCK:3 * PLAIN_BLOCK] == bytes(PLAIN_BLOCK)
        assert out[3 * PLAIN_BLOCK:] == b"\xff" * PLAIN_BLOCK


def test_engine_selection() -> None:
    env = accel.ENGINE_ENV
    assert resolve_engine(environ={env: "python"}) == "python"
    assert resolve_engine(environ={env: " Native "}) == "native"
    assert resolve_engine("python", environ={env: "native"}) == "python"  # the setting wins
    assert resolve_engine(environ={env: "auto"}) == "native"
    with pytest.raises(ConfigError, match="unknown decryption engine 'gpu'"):
        resolve_engine(environ={env: "gpu"})
    assert ContentCipher(KEY, engine="python").engine == "python"


def test_native_requested_but_missing_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(accel, "_NATIVE_PROBLEM", "not built (test)")
    assert resolve_engine(environ={}) == "python"  # auto falls back
    assert make_batch(KEY).engine == "python"
    with pytest.raises(ConfigError, match="requested but is unusable: not built"):
        resolve_engine("native", environ={})


async def test_reader_reads_identically_on_both_engines(tmp_path: os.PathLike[str]) -> None:
    """Local reads go through preadv + the shared scratch buffers; both engines give the plaintext."""
    from pathlib import Path

    from cachefs.encryptor import encrypt_directory

    root = Path(tmp_path)
    (root / "plain").mkdir()
    data = os.urandom(600 * PLAIN_BLOCK + 77)
    (root / "plain" / "f.bin").write_bytes(data)
    encrypt_directory(root / "plain", root / "cipher", b"pw\n", scrypt_n=1 << 10)
    vol = await open_volume(LocalDirSource(root / "cipher"), b"pw\n")
    node = next(n for n in vol.tree.nodes.values() if n.name == b"f.bin")
    buffers = ReadBuffers(blocks=4)  # forces growth for the 1 MiB reads
    for engine in ("native", "python"):
        cipher = ContentCipher(vol.keys.content, engine=engine)
        reader = FileReader(node, vol.source, cipher, PlainCache(1 << 20), ReaderStats(), buffers=buffers)
        try:
            for off, size in [(0, 1 << 20), (1 << 20, 1 << 20), (4095, 3), (len(data) - 100, 4096),
                              (123456, 200000), (len(data), 10), (7, 1)]:
                assert bytes(await reader.read(off, size)) == data[off:off + size], (engine, off, size)
        finally:
            reader.close()


async def test_reader_tampered_local_block_is_eio_only_there(tmp_path: os.PathLike[str]) -> None:
    from pathlib import Path

    from cachefs.encryptor import encrypt_directory

    root = Path(tmp_path)
    (root / "plain").mkdir()
    data = os.urandom(20 * PLAIN_BLOCK)
    (root / "plain" / "f.bin").write_bytes(data)
    encrypt_directory(root / "plain", root / "cipher", b"pw\n", scrypt_n=1 << 10)
    vol = await open_volume(LocalDirSource(root / "cipher"), b"pw\n")
    node = next(n for n in vol.tree.nodes.values() if n.name == b"f.bin")
    path = root / "cipher" / node.cipher_path
    raw = bytearray(path.read_bytes())
    raw[18 + 5 * CIPHER_BLOCK + 99] ^= 1
    path.write_bytes(raw)
    for engine in ("native", "python"):
        stats = ReaderStats()
        reader = FileReader(node, vol.source, ContentCipher(vol.keys.content, engine=engine), PlainCache(1 << 20),
                            stats)
        try:
            with pytest.raises(CachefsError, match="block 5"):
                await reader.read(0, 1 << 20)
            assert bytes(await reader.read(0, 5 * PLAIN_BLOCK)) == data[:5 * PLAIN_BLOCK]
            assert bytes(await reader.read(6 * PLAIN_BLOCK, 1 << 20)) == data[6 * PLAIN_BLOCK:]
            assert stats.bad_blocks == 1
        finally:
            reader.close()


async def test_fast_fuse_wait_returns_at_once_when_readable_and_waits_otherwise() -> None:
    """mount._wait_fuse_readable: poll(0) fast path, else pyfuse3's own asyncio wait."""
    import asyncio

    import pyfuse3.asyncio

    from cachefs import mount

    mount.enable_asyncio()
    assert pyfuse3.asyncio.wait_readable is mount._wait_fuse_readable
    r, w = os.pipe()
    try:
        os.write(w, b"x")
        await asyncio.wait_for(mount._wait_fuse_readable(r), 1)  # already readable
        os.read(r, 1)
        waiter = asyncio.ensure_future(mount._wait_fuse_readable(r))
        await asyncio.sleep(0.05)
        assert not waiter.done()  # nothing queued: it really waits
        os.write(w, b"y")
        await asyncio.wait_for(waiter, 5)
    finally:
        mount._pollers.pop(r, None)
        os.close(r)
        os.close(w)
