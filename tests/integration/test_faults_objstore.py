"""Whole-chain faults of object storage under ``cai cachefs`` (issue 8): drops, truncation, 503s, an outage.

The chain (tests/chain.py) runs ``cai aa`` and ``cai cdh`` against the Trustee stand-ins; the test
encrypts the example model with the chain's key, uploads the ciphertext to a moto S3 bucket and
starts ``cai cachefs`` with the cai.env object-storage variables pointing at the fault-injecting
proxy of tests/s3server.py. Reads go through the real FUSE mount from worker threads (the proxy
runs on this event loop). What operators see is written down in docs/operations-faults.md
("Model storage (cachefs)"); these tests hold the daemon to it:

* dropped connections, a body shorter than promised and 503s are retried; the app's reads are
  byte-identical; ``cachefs_download_retries_total`` counts the retries and each retry is a log
  line naming the object key (never a credential); the cache holds ciphertext only.
* storage unreachable for longer than the retry budget during a lazy read: the app gets ``EIO``
  within a bound (not a hang, never other bytes), ``/status`` names the failing object and the
  cause, and the next read after the storage is back succeeds without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cachefs.sources.local import LocalDirSource
from cachefs.volume import open_volume
from tests.chain import Chain, ChainOptions, eventually
from tests.s3server import Fault, MotoS3Server, ProxyRequest, S3Proxy, upload_tree

pytestmark = pytest.mark.timeout(120)

BUCKET = "conf-ai"
ACCESS_KEY = "AKIDFAULTSOBJSTORE"
SECRET_KEY = "faults-objstore-secret-KEY-0123456789abcdef"
SESSION_TOKEN = "faults-objstore-sts-token-ZYXWVUT-987654"
SHARD = "model-00001-of-00001.safetensors"
#: Upper bound of one lazy read while object storage is unreachable (documented in
#: docs/operations-faults.md): 5 cache attempts, each with obstore's own 3 retries, plus backoff.
EIO_BOUND_S = 60.0


@pytest.fixture(scope="module")
def moto() -> Iterator[MotoS3Server]:
    server = MotoS3Server().start()
    try:
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        server.stop()


@dataclass
class ObjstoreChain:
    chain: Chain
    proxy: S3Proxy
    keys: dict[str, str]  # plaintext file name -> ciphertext path in the volume (the object key below the prefix)
    cache_dir: Path

    def is_object(self, name: str, *, ranged: bool | None = None) -> object:
        key = self.keys[name]

        def match(r: ProxyRequest) -> bool:
            return (r.method == "GET" and r.path.endswith("/" + key)
                    and (ranged is None or (r.range is not None) == ranged))
        return match

    def gets(self, name: str) -> list[ProxyRequest]:
        return self.proxy.gets("/" + self.keys[name])

    async def status(self) -> dict:
        code, body = await self.chain.api("cachefs", "/status")
        assert code == 200, body
        return json.loads(body)


@contextlib.asynccontextmanager
async def objstore_chain(tmp_path: Path, moto: MotoS3Server, *, extra_mib: int = 0,
                         env: dict[str, str] | None = None) -> AsyncIterator[ObjstoreChain]:
    """aa + cdh running, the model encrypted and uploaded under a per-test prefix; cachefs not started yet."""
    prefix = f"{tmp_path.name}/"
    async with S3Proxy(moto.url) as proxy:
        cache_dir = Path((env or {}).get("CAI_CACHEFS_CACHE_DIR", tmp_path / "cache"))
        cachefs_env = {"MODEL_OSS_BUCKET_PATH": f"{BUCKET}:/{prefix}", "MODEL_OSS_ENDPOINT": proxy.url,
                       "MODEL_OSS_ACCESS_KEY_ID": ACCESS_KEY, "MODEL_OSS_SECRET_ACCESS_KEY": SECRET_KEY,
                       "MODEL_OSS_SESSION_TOKEN": SESSION_TOKEN, "CAI_CACHEFS_CACHE_DIR": str(cache_dir),
                       **(env or {})}
        options = ChainOptions(daemons=("aa", "cdh"), local_model=False, env={"cachefs": cachefs_env})
        async with Chain(tmp_path, options) as chain:
            await chain.make_model(extra_mib)
            await asyncio.to_thread(upload_tree, moto.client(), BUCKET, prefix, chain.cipher)
            volume = await open_volume(LocalDirSource(chain.cipher), chain.model_key)
            keys = {}
            for node in volume.tree.nodes.values():
                if node.kind == "file" and node.parent == 1:
                    keys[node.name.decode()] = node.cipher_path
            yield ObjstoreChain(chain, proxy, keys, cache_dir)


def pread(path: Path, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def assert_nothing_leaked(oc: ObjstoreChain, names: tuple[str, ...] = ("aa", "cdh", "cachefs")) -> None:
    """No key, plaintext or storage credential in the logs or any persistent file (the cache included)."""
    assert oc.chain.leaks(names, (SECRET_KEY.encode(), SESSION_TOKEN.encode()), [oc.cache_dir]) == []


async def test_drops_truncation_and_503s_are_retried_and_reads_stay_exact(tmp_path: Path, moto: MotoS3Server
                                                                           ) -> None:
    async with objstore_chain(tmp_path, moto) as oc:
        chain, proxy = oc.chain, oc.proxy
        shard = oc.is_object(SHARD)
        # In order, for the shard's GETs: a connection dropped mid-body, a body shorter than its
        # Content-Length promised... (a consistent liar), then two 503s.
        for fault in (Fault(shard, "drop", keep=100_000), Fault(shard, "short", keep=200_000),
                      Fault(shard, "status", status=503, times=2)):
            proxy.inject(fault)
        await chain.start("cachefs")
        assert await asyncio.to_thread(chain.read_model) == chain.digests
        assert all(f.times == 0 for f in proxy.faults), "every injected fault was met"

        state = await eventually(lambda: _complete(oc), what="download complete")
        assert state["download"]["errors"] == 0 and state["download"]["cache_enabled"]
        assert state["read_errors"] == 0 and state["failing"] == []
        # obstore resumes a dropped body itself (a ranged GET from the byte where it broke) and
        # retries 503s itself; a short body is only seen by the cache, which retries and counts it.
        gets = oc.gets(SHARD)
        assert len(gets) >= 5 and any(r.range and r.range.startswith("bytes=100000-") for r in gets)
        metrics = await chain.metrics("cachefs")
        assert metrics["cachefs_download_retries_total"] >= 1
        assert metrics.get("cachefs_read_errors_total", 0) == 0

        retries = [e for e in chain.log_events("cachefs") if "failed; re" in e.get("event", "")]
        assert len(retries) >= 1 and all(e["path"] == oc.keys[SHARD] for e in retries)
        assert any("got 100000..300000" in e["error"] for e in retries)
        assert {e["level"] for e in retries} == {"warning"}
        # Ciphertext only in the cache (and nowhere else persistent); no credential in any log.
        cached = b"".join(p.read_bytes() for p in oc.cache_dir.rglob("*.data"))
        assert hashlib.sha256(chain.cipher.joinpath(oc.keys[SHARD]).read_bytes()).digest() in {
            hashlib.sha256(p.read_bytes()).digest() for p in oc.cache_dir.rglob("*.data")} and cached
        assert_nothing_leaked(oc)


async def _complete(oc: ObjstoreChain) -> dict | None:
    state = await oc.status()
    return state if state["download"]["complete"] else None


async def test_storage_unreachable_beyond_the_retry_budget_is_eio_then_recovers(tmp_path: Path,
                                                                                moto: MotoS3Server) -> None:
    async with objstore_chain(tmp_path, moto) as oc:
        chain, proxy = oc.chain, oc.proxy
        hold = proxy.hold(oc.is_object(SHARD, ranged=False))  # the background stream of the shard never arrives
        await chain.start("cachefs")
        await asyncio.wait_for(hold.held.wait(), 30)
        shard = chain.mount_point / SHARD
        plain = (chain.plain / SHARD).read_bytes()
        offset = len(plain) // 2

        proxy.unreachable = True  # every connection to object storage is dropped from now on
        with pytest.raises(OSError) as caught:
            await asyncio.wait_for(asyncio.to_thread(pread, shard, offset, 65536), EIO_BOUND_S)
        assert caught.value.errno == errno.EIO
        state = await oc.status()
        assert state["mounted"] and state["read_errors"] >= 1
        (failing,) = [f for f in state["failing"] if f["object"] == oc.keys[SHARD]]
        assert f"s3://{BUCKET}/{tmp_path.name}" in failing["error"] and oc.keys[SHARD] in failing["error"]
        lines = chain.events("cachefs", "cachefs.read_failed")
        assert lines and lines[0]["file"] == oc.keys[SHARD] and lines[0]["level"] == "error"
        metrics = await chain.metrics("cachefs")
        assert metrics["cachefs_read_errors_total"] >= 1 and metrics["cachefs_mounted"] == 1
        assert (await chain.api("cachefs", "/livez"))[0] == 200

        proxy.unreachable = False  # storage is back: the same read succeeds, with no restart
        got = await asyncio.wait_for(asyncio.to_thread(pread, shard, offset, 65536), EIO_BOUND_S)
        assert got == plain[offset:offset + 65536]
        state = await oc.status()
        assert state["failing"] == [] and chain.incarnations["cachefs"] == 1
        assert chain.events("cachefs", "cachefs.read_recovered")
        hold.release.set()
        assert await asyncio.to_thread(chain.read_model) == chain.digests
        assert_nothing_leaked(oc)


async def test_storage_that_never_answers_costs_a_read_only_read_timeout(tmp_path: Path, moto: MotoS3Server) -> None:
    """Accepted connections, no answer: the app gets EIO after ``read_timeout``, then reads once storage answers."""
    async with objstore_chain(tmp_path, moto, env={"CAI_CACHEFS_READ_TIMEOUT": "2"}) as oc:
        chain = oc.chain
        hold = oc.proxy.hold(oc.is_object(SHARD))  # every GET of the shard is parked: a silent server
        await chain.start("cachefs")
        shard = chain.mount_point / SHARD
        plain = (chain.plain / SHARD).read_bytes()
        offset = len(plain) // 2
        with pytest.raises(OSError) as caught:  # bounded by the test, not by obstore's minutes of retries
            await asyncio.wait_for(asyncio.to_thread(pread, shard, offset, 65536), 30)
        assert caught.value.errno == errno.EIO
        (failing,) = [f for f in (await oc.status())["failing"] if f["object"] == oc.keys[SHARD]]
        assert "within 2 s" in failing["error"]
        assert (await chain.metrics("cachefs"))["cachefs_read_errors_total"] >= 1
        hold.release.set()  # the server answers again
        got = await asyncio.wait_for(asyncio.to_thread(pread, shard, offset, 65536), 30)
        assert got == plain[offset:offset + 65536]
        assert chain.incarnations["cachefs"] == 1
        assert_nothing_leaked(oc)
