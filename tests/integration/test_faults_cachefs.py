"""Whole-chain faults of ``cai cachefs`` itself (issue 8): SIGKILL with the model mounted, SIGKILL
mid-download, and a full ciphertext-cache disk.

The chain (tests/chain.py) runs ``cai aa``, ``cai cdh`` and ``cai cachefs`` as real subprocesses;
the object-storage cases reuse the moto bucket and proxy set-up of test_faults_objstore.py. What
operators see is written down in docs/operations-faults.md ("Model storage (cachefs)"):

* killed with the model mounted: every open/read/stat of the app fails with ``ENOTCONN``/``EIO``
  (an fd held across the kill too) and never returns bytes; ``cai cachefs`` started again clears
  the stale mount (log ``cachefs.stale_mount`` then ``cachefs.stale_mount_recovered``, ``/status``
  ``stale_mount_recovered``, metric ``cachefs_stale_mounts_recovered_total``), is READY and serves
  the exact plaintext.
* killed mid-download: the chunks already recorded are reused; only the missing ranges are fetched.
* cache disk full: reads stay exact (pass-through), one error line, ``cache_enabled`` false with the
  reason in ``/status``, ``cachefs_cache_enabled 0``; once the disk has room, caching resumes without a restart.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import subprocess
from pathlib import Path

import pytest

from cachefs.cache import ChunkLayout, decode_record
from tests.chain import Chain, ChainOptions, eventually
from tests.integration.test_faults_objstore import (  # noqa: F401 - moto is a fixture
    ObjstoreChain,
    assert_nothing_leaked,
    moto,
    objstore_chain,
)
from tests.s3server import Fault, MotoS3Server

pytestmark = pytest.mark.timeout(120)

SHARD = "model-00001-of-00001.safetensors"
DEAD = (errno.ENOTCONN, errno.EIO, errno.ECONNABORTED)


async def _status(chain: Chain) -> dict:
    code, body = await chain.api("cachefs", "/status")
    assert code == 200, body
    return json.loads(body)


@pytest.fixture(autouse=True)
def _no_stale_mount_left(tmp_path: Path) -> object:
    """A test that fails between a kill and the restart must not leave a dead mount behind."""
    yield
    subprocess.run(["fusermount3", "-uz", str(tmp_path / "model")], capture_output=True, check=False)


async def test_sigkill_with_the_model_mounted_never_serves_bytes_and_restart_recovers(tmp_path: Path) -> None:
    async with Chain(tmp_path, ChainOptions(daemons=("aa", "cdh", "cachefs"))) as chain:
        mnt = chain.mount_point
        shard = mnt / SHARD
        assert await asyncio.to_thread((mnt / "config.json").read_bytes) == (chain.plain / "config.json").read_bytes()
        # Opened, never read: none of it is in the page cache, so a read must go to the (dead) daemon.
        held = await asyncio.to_thread(os.open, shard, os.O_RDONLY)
        try:
            assert await chain.kill("cachefs") == -9

            def attempts() -> list[tuple[str, object]]:
                out: list[tuple[str, object]] = []
                for what, op in (("open", lambda: open(shard, "rb").read(16)), ("listdir", lambda: os.listdir(mnt)),
                                 ("held fd", lambda: os.pread(held, 4096, 1 << 20))):
                    try:
                        out.append((what, op()))
                    except OSError as exc:
                        out.append((what, exc.errno))
                return out

            for what, result in await asyncio.to_thread(attempts):
                assert result in DEAD, f"{what} on the dead mount returned {result!r:.80}"
            # stat may still answer from the kernel's attribute cache (metadata only, never content).
            try:
                st = await asyncio.to_thread(os.stat, shard)
            except OSError as exc:
                assert exc.errno in DEAD
            else:
                assert st.st_size == (chain.plain / SHARD).stat().st_size
            with pytest.raises(OSError):  # nobody answers the health API of a killed daemon
                await chain.api("cachefs", "/readyz")

            await chain.start("cachefs")
            assert len(chain.events("cachefs", "cachefs.stale_mount")) == 1
            (recovered,) = chain.events("cachefs", "cachefs.stale_mount_recovered")
            assert recovered["mount_point"] == str(mnt)
            assert await asyncio.to_thread(chain.read_model) == chain.digests
            # The fd of the old mount still fails (it belongs to the dead connection); never bytes.
            with pytest.raises(OSError) as caught:
                await asyncio.to_thread(os.pread, held, 4096, 1 << 20)
            assert caught.value.errno in DEAD
        finally:
            await asyncio.to_thread(os.close, held)
        state = await _status(chain)
        assert state["mounted"] and state["ready"] and state["stale_mount_recovered"] and state["read_errors"] == 0
        metrics = await chain.metrics("cachefs")
        assert metrics["cachefs_mounted"] == 1 and metrics["cachefs_stale_mounts_recovered_total"] == 1
        assert (await chain.api("cachefs", "/readyz"))[0] == 200
        assert chain.leaks(["cachefs"]) == []


def _recorded_chunks(cache_dir: Path, key: str) -> frozenset[int]:
    for path in cache_dir.rglob("*.json"):
        try:
            record = decode_record(path.read_bytes())
        except Exception:  # a record being replaced right now
            continue
        if record.path == key:
            return record.present
    return frozenset()


def _range_start(value: str | None) -> int:
    assert value is not None and value.startswith("bytes=")
    return int(value[6:].split("-")[0])


async def test_sigkill_mid_download_reuses_the_partial_cache(tmp_path: Path, moto: MotoS3Server) -> None:  # noqa: F811
    async with objstore_chain(tmp_path, moto, extra_mib=12) as oc:
        chain, proxy = oc.chain, oc.proxy
        key = oc.keys["model-extra.safetensors"]
        size = (chain.cipher / key).stat().st_size
        chunk0_end = ChunkLayout().span(0, size)[1]
        assert ChunkLayout().count(size) >= 3
        pause = Fault(oc.is_object("model-extra.safetensors", ranged=False), "pause",
                      keep=chunk0_end + (2 << 20) + 100_000)
        proxy.inject(pause)
        await chain.start("cachefs")
        await asyncio.wait_for(pause.reached.wait(), 30)
        # Chunk 0 arrived and was recorded (within persist_delay); the rest of the object is in flight
        # (2 MiB more than chunk 0 were sent: obstore hands over pieces of at least 1 MiB).
        await eventually(lambda: _recorded_chunks(oc.cache_dir, key) == {0}, what="chunk 0 recorded")
        assert await chain.kill("cachefs") == -9
        pause.resume.set()

        proxy.requests.clear()
        await chain.start("cachefs")
        (state,) = chain.events("cachefs", "ciphertext cache state")[-1:]
        assert state["bytes_cached"] >= chunk0_end
        assert await asyncio.to_thread(chain.read_model) == chain.digests  # never corrupt
        gets = oc.gets("model-extra.safetensors")
        assert gets and all(r.range is not None for r in gets), "the whole object was fetched again"
        assert min(_range_start(r.range) for r in gets) >= chunk0_end, [r.range for r in gets]
        assert len(chain.events("cachefs", "cachefs.stale_mount_recovered")) == 1
        assert_nothing_leaked(oc)


async def test_cache_disk_full_passes_reads_through_and_resumes_when_there_is_room(
        tmp_path: Path, moto: MotoS3Server) -> None:  # noqa: F811
    small = tmp_path / "small-cache"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(small)], check=True)
    try:
        env = {"CAI_CACHEFS_CACHE_DIR": str(small), "CAI_CACHEFS_CACHE_RECHECK_INTERVAL": "0.5"}
        async with objstore_chain(tmp_path, moto, env=env) as oc:
            chain = oc.chain
            assert (chain.cipher / oc.keys[SHARD]).stat().st_size > 1 << 20  # the model does not fit
            await chain.start("cachefs")
            for _ in range(2):  # pass-through reads are exact, again and again
                assert await asyncio.to_thread(chain.read_model) == chain.digests
            state = await eventually(lambda: _full(chain), what="cache reported full")
            assert state["mounted"] and state["read_errors"] == 0 and str(small) in state["cache_problem"]
            full = [e for e in chain.log_events("cachefs")
                    if e.get("event", "").startswith("ciphertext cache disabled")]
            assert len(full) == 1 and full[0]["reason"] == "disk full" and full[0]["level"] == "error"
            metrics = await chain.metrics("cachefs")
            assert metrics["cachefs_cache_enabled"] == 0
            assert metrics['cachefs_cache_errors_total{kind="disk_full"}'] == 1
            assert metrics['cachefs_read_bytes_total{origin="network"}'] > 0

            # Room again (the operator grows the volume): caching resumes by itself, no restart.
            subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
            state = await eventually(lambda: _complete(chain), what="download complete after the disk grew")
            assert state["download"]["cache_enabled"] and state["cache_problem"] is None
            assert chain.incarnations["cachefs"] == 1
            assert chain.events("cachefs", "ciphertext cache re-enabled")
            assert await asyncio.to_thread(chain.read_model) == chain.digests
            assert (await chain.metrics("cachefs"))["cachefs_cache_enabled"] == 1
            assert_nothing_leaked(oc)  # oc.cache_dir is the small tmpfs
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)


async def _full(chain: Chain) -> dict | None:
    state = await _status(chain)
    return state if not state["download"]["cache_enabled"] else None


async def _complete(chain: Chain) -> dict | None:
    state = await _status(chain)
    return state if state["download"]["complete"] else None


__all__ = ["ObjstoreChain"]
