"""cachefs ciphertext from a real S3-API server (moto, server mode) on loopback, through the cache.

A counting proxy (tests/s3server.py) sits in front of moto so the tests can assert how many GETs
were made, hold a background request to order events without timing, and cut connections.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from agents.health import Metrics
from agents.logsetup import configure_logging, reset_logging
from agents.redaction import clear_secrets
from agents.retry import Backoff
from cachefs.cache import CachedSource, ChunkLayout
from cachefs.sources.base import SourceError
from cachefs.sources.object_store import ObjectStoreConfig, ObjectStoreError, ObjectStoreSource
from tests.s3server import Fault, MotoS3Server, ProxyRequest, S3Proxy

BUCKET = "conf-ai"
PUBLIC = "public-models"
BIG = 64 << 20
LAYOUT = ChunkLayout()  # gocryptfs-aligned 4 227 072-byte chunks: 16 of them for BIG
SYMLINK_TARGET = "dGFyZ2V0LWNpcGhlcnRleHQtbmFtZQ"

pytestmark = pytest.mark.timeout(120)


def volume() -> dict[str, bytes]:
    rng = os.urandom
    return {
        "gocryptfs.conf": b'{"Version":2,"FeatureFlags":["HKDF","GCMIV128","DirIV","EMENames","LongNames","Raw64"]}',
        "gocryptfs.diriv": rng(16),
        "Dn1ZmlsZXM/gocryptfs.diriv": rng(16),
        "Dn1ZmlsZXM/F1aGVsbG8": rng(5000),
        "Dn1ZmlsZXM/RW1wdHk": b"",
        "YmlnLW1vZGVs": rng(BIG),
    }


@pytest.fixture(scope="module")
def s3() -> Iterator[tuple[MotoS3Server, dict[str, bytes]]]:
    server = MotoS3Server().start()
    try:
        client = server.client()
        files = volume()
        client.create_bucket(Bucket=BUCKET)
        for key, body in files.items():
            client.put_object(Bucket=BUCKET, Key=f"vol/{key}", Body=body)
        client.put_object(Bucket=BUCKET, Key="vol/TG5r", Body=b"", Metadata={"cai-symlink-target": SYMLINK_TARGET})
        client.put_object(Bucket=BUCKET, Key="other/not-in-volume", Body=b"x")
        client.create_bucket(Bucket=PUBLIC)
        for key in ("gocryptfs.conf", "Dn1ZmlsZXM/F1aGVsbG8"):
            client.put_object(Bucket=PUBLIC, Key=f"vol/{key}", Body=files[key], ACL="public-read")
        yield server, files
    finally:
        server.stop()


@pytest.fixture
async def proxy(s3: tuple[MotoS3Server, dict[str, bytes]]) -> AsyncIterator[S3Proxy]:
    async with S3Proxy(s3[0].url) as px:
        yield px


def source(proxy: S3Proxy, **kw: object) -> ObjectStoreSource:
    config = ObjectStoreConfig(
        bucket=BUCKET, prefix="vol", endpoint=proxy.url, access_key_id="test-access-key",
        secret_access_key="test-secret-key", **kw,  # type: ignore[arg-type]
    )
    return ObjectStoreSource(config)


def cached(proxy: S3Proxy, cache_dir: Path, metrics: Metrics | None = None, **kw: object) -> CachedSource:
    src_kw = {k: kw.pop(k) for k in ("max_retries",) if k in kw}
    return CachedSource(
        source(proxy, **src_kw), cache_dir, metrics=metrics or Metrics(), layout=LAYOUT,
        backoff=Backoff(initial=0.01, maximum=0.05, attempts=5), max_fetch_bytes=4 * LAYOUT.chunk_bytes,
        **kw,  # type: ignore[arg-type]
    )


def metric(metrics: Metrics, line_start: str) -> float:
    for line in metrics.render()[0].decode().splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {line_start} not found")


def ranges(requests: list[ProxyRequest]) -> list[tuple[int, int]]:
    out = []
    for r in requests:
        assert r.range is not None and r.range.startswith("bytes=")
        lo, hi = r.range[6:].split("-")
        out.append((int(lo), int(hi) + 1))
    return out


async def test_tree_and_full_read(proxy: S3Proxy, s3: tuple[MotoS3Server, dict[str, bytes]], tmp_path: Path) -> None:
    _, files = s3
    metrics = Metrics()
    cache = cached(proxy, tmp_path / "cache", metrics)
    entries = {e.path: e for e in await cache.list_tree()}
    assert {p for p, e in entries.items() if e.kind == "dir"} == {"Dn1ZmlsZXM"}
    assert {p: e.size for p, e in entries.items() if e.kind == "file"} == {p: len(b) for p, b in files.items()}
    assert entries["TG5r"].kind == "symlink" and entries["TG5r"].target == SYMLINK_TARGET
    assert all(e.etag for e in entries.values() if e.kind == "file")

    await cache.download_all()
    for path, body in files.items():
        assert await cache.read_all(path) == body
    assert await cache.read("YmlnLW1vZGVs", BIG - 10, 100) == files["YmlnLW1vZGVs"][-10:]
    with pytest.raises(SourceError, match="symlink"):
        await cache.read("TG5r", 0, 1)
    assert cache.complete
    assert metric(metrics, "cachefs_download_objects_remaining") == 0
    assert metric(metrics, "cachefs_download_bytes_remaining") == 0
    assert metric(metrics, 'cachefs_download_bytes_total{reason="background"}') == sum(map(len, files.values()))
    await cache.close()


async def test_lazy_read_is_served_before_the_background_download(
    proxy: S3Proxy, s3: tuple[MotoS3Server, dict[str, bytes]], tmp_path: Path
) -> None:
    _, files = s3
    big = files["YmlnLW1vZGVs"]
    # Park the background download's first request for the big object (its run starts at byte 0).
    hold = proxy.hold(lambda r: r.path.endswith("YmlnLW1vZGVs") and (r.range or "").startswith("bytes=0-"))
    cache = cached(proxy, tmp_path / "cache", download_concurrency=1)
    await cache.list_tree()
    download = cache.start_download()
    await hold.held.wait()

    middle = BIG // 2 + 12345
    assert await cache.read("YmlnLW1vZGVs", middle, 70_000) == big[middle : middle + 70_000]
    assert not download.done() and not cache.complete
    assert cache.progress.present_bytes < cache.progress.total_bytes

    hold.release.set()
    await download
    assert cache.complete and await cache.read_all("YmlnLW1vZGVs") == big
    # Every byte of the big object crossed the network exactly once (demand chunk not re-fetched).
    fetched = sorted(ranges(proxy.gets("YmlnLW1vZGVs")))
    assert sum(hi - lo for lo, hi in fetched) == BIG
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(fetched))
    await cache.close()


async def test_reader_is_served_from_the_stream_before_its_chunk_is_on_disk(
    proxy: S3Proxy, s3: tuple[MotoS3Server, dict[str, bytes]], tmp_path: Path
) -> None:
    _, files = s3
    big = files["YmlnLW1vZGVs"]
    c1_start = LAYOUT.span(1, BIG)[0]
    # The background GET delivers chunk 0 and 1.5 MB of chunk 1, then stalls mid-body.
    keep = c1_start + 1_500_000
    pause = Fault(lambda r: r.path.endswith("YmlnLW1vZGVs") and (r.range or "").startswith("bytes=0-"),
                  "pause", keep=keep)
    proxy.inject(pause)
    metrics = Metrics()
    # Patience far beyond any scheduling delay: the read below must wait for the stream, not refetch.
    cache = cached(proxy, tmp_path / "cache", metrics, download_concurrency=1, stream_piece_bytes=64 << 10,
                   stream_patience=60.0)
    await cache.list_tree()
    download = cache.start_download()
    await pause.reached.wait()

    # Odd offsets and sizes: inside chunk 1 (not yet complete, so not on disk) and across the
    # chunk 0/1 boundary. Ranges end a piece short of the pause (obstore keeps a partial piece).
    got = 0
    for offset, length in ((c1_start + 7, 4129), (c1_start - 12_345, 100_001), (c1_start + 1_000_003, 333_333)):
        assert await cache.read("YmlnLW1vZGVs", offset, length) == big[offset : offset + length]
        got += length
    others = sum(len(body) for key, body in files.items() if key != "YmlnLW1vZGVs")
    assert cache.progress.present_bytes <= others + c1_start  # chunk 1 of the big object is not marked present
    assert len(proxy.gets("YmlnLW1vZGVs")) == 1  # no demand GET: the bytes came from the stream
    assert metric(metrics, 'cachefs_read_bytes_total{origin="stream"}') == got

    pause.resume.set()
    await download
    assert cache.complete and await cache.read_all("YmlnLW1vZGVs") == big
    assert sum(hi - lo for lo, hi in ranges(proxy.gets("YmlnLW1vZGVs"))) == BIG
    await cache.close()
    # What reached the disk is the full ciphertext, reusable after a restart.
    again = cached(proxy, tmp_path / "cache")
    await again.list_tree()
    assert again.complete
    await again.close()


async def test_restart_reuses_the_cache(
    proxy: S3Proxy, s3: tuple[MotoS3Server, dict[str, bytes]], tmp_path: Path
) -> None:
    server, files = s3
    first = cached(proxy, tmp_path / "cache")
    await first.list_tree()
    await first.download_all()
    await first.close()

    proxy.requests.clear()
    second = cached(proxy, tmp_path / "cache")
    await second.list_tree()
    for path, body in files.items():
        assert await second.read_all(path) == body
    assert proxy.gets() == []  # only the listing (and HEADs of empty objects) went to the server
    await second.close()

    # Replace one object: only that object is discarded and fetched again.
    changed = os.urandom(5000)
    server.client().put_object(Bucket=BUCKET, Key="vol/Dn1ZmlsZXM/F1aGVsbG8", Body=changed)
    try:
        proxy.requests.clear()
        metrics = Metrics()
        third = cached(proxy, tmp_path / "cache", metrics)
        await third.list_tree()
        assert await third.read_all("Dn1ZmlsZXM/F1aGVsbG8") == changed
        assert await third.read_all("YmlnLW1vZGVs") == files["YmlnLW1vZGVs"]
        assert {r.path.rsplit("/", 1)[1] for r in proxy.gets()} == {"F1aGVsbG8"}
        assert metric(metrics, "cachefs_cache_discarded_objects_total") == 1
        await third.close()
    finally:
        server.client().put_object(Bucket=BUCKET, Key="vol/Dn1ZmlsZXM/F1aGVsbG8", Body=files["Dn1ZmlsZXM/F1aGVsbG8"])


async def test_dropped_and_truncated_transfers_are_retried(
    proxy: S3Proxy, s3: tuple[MotoS3Server, dict[str, bytes]], tmp_path: Path
) -> None:
    _, files = s3
    big = files["YmlnLW1vZGVs"]

    def is_big(r: ProxyRequest) -> bool:
        return r.method == "GET" and r.path.endswith("YmlnLW1vZGVs")

    # A stream cut after 1.5 chunks, then a body that lies about its length, then a 503.
    proxy.inject(Fault(is_big, "drop", keep=LAYOUT.chunk_bytes * 3 // 2))
    proxy.inject(Fault(is_big, "short", keep=1000))
    proxy.inject(Fault(is_big, "status", status=503))
    metrics = Metrics()
    cache = cached(proxy, tmp_path / "cache", metrics, max_retries=0, download_concurrency=1)
    await cache.list_tree()
    await cache.download_all()
    assert await cache.read_all("YmlnLW1vZGVs") == big
    assert metric(metrics, "cachefs_download_retries_total") >= 3
    assert all(f.times == 0 for f in proxy.faults)
    await cache.close()
    # The cache on disk holds exactly the object (no partial chunk was ever marked present).
    (data_file,) = [p for p in (tmp_path / "cache").glob("*/*.data") if p.stat().st_size == BIG]
    assert data_file.read_bytes() == big


async def test_demand_read_retries_a_cut_connection(
    proxy: S3Proxy, s3: tuple[MotoS3Server, dict[str, bytes]], tmp_path: Path
) -> None:
    _, files = s3
    proxy.inject(Fault(lambda r: r.path.endswith("YmlnLW1vZGVs"), "drop", keep=100))
    cache = cached(proxy, tmp_path / "cache", max_retries=0)
    await cache.list_tree()
    offset = 5 * LAYOUT.chunk_bytes
    assert await cache.read("YmlnLW1vZGVs", offset, 10) == files["YmlnLW1vZGVs"][offset : offset + 10]
    assert len(proxy.gets("YmlnLW1vZGVs")) == 2
    await cache.close()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


async def test_disk_full_falls_back_to_the_network(
    proxy: S3Proxy, s3: tuple[MotoS3Server, dict[str, bytes]], tiny_disk: Path
) -> None:
    _, files = s3
    big = files["YmlnLW1vZGVs"]
    metrics = Metrics()
    stream = io.StringIO()
    configure_logging(stream=stream, level="info")
    try:
        cache = cached(proxy, tiny_disk / "cache", metrics, recheck_interval=0.1)
        await cache.list_tree()
        await cache.download_all()
        assert cache.passthrough_reason is not None and "disk full" in cache.passthrough_reason
        assert metric(metrics, 'cachefs_cache_errors_total{kind="disk_full"}') == 1
        assert metric(metrics, "cachefs_cache_enabled") == 0
        # Reads keep working: what is cached comes from disk, the rest straight from the server.
        for path, body in files.items():
            assert await cache.read_all(path) == body
        assert await cache.read("YmlnLW1vZGVs", BIG // 3, 4096) == big[BIG // 3 : BIG // 3 + 4096]
        # Still too small: several rechecks pass and the cache stays off (no flapping).
        await asyncio.sleep(0.5)
        assert cache.passthrough_reason is not None and metric(metrics, "cachefs_cache_enabled") == 0
        # The operator grows the disk: caching resumes by itself and the download completes.
        subprocess.run(["mount", "-o", "remount,size=256m", str(tiny_disk)], check=True)  # BIG fits now
        for _ in range(200):
            if cache.passthrough_reason is None:
                break
            await asyncio.sleep(0.05)
        assert cache.passthrough_reason is None and metric(metrics, "cachefs_cache_enabled") == 1
        await cache.start_download()
        assert cache.complete and not cache.download_errors
        before = len(proxy.requests)
        for path, body in files.items():  # served from the cache now: no request reaches the server
            assert await cache.read_all(path) == body
        assert len(proxy.requests) == before
        await cache.close()
    finally:
        reset_logging()
    logs = stream.getvalue()
    assert logs.count("ciphertext cache disabled") == 1 and "ciphertext cache re-enabled" in logs


async def test_anonymous_access_to_a_public_read_bucket(
    proxy: S3Proxy, s3: tuple[MotoS3Server, dict[str, bytes]]
) -> None:
    _, files = s3
    public = ObjectStoreSource.from_cai_env(
        {"MODEL_OSS_BUCKET_PATH": f"{PUBLIC}:/vol/", "MODEL_OSS_ENDPOINT": proxy.url}
    )
    assert public.config.anonymous
    paths = {e.path for e in await public.list_tree() if e.kind == "file"}
    assert paths == {"gocryptfs.conf", "Dn1ZmlsZXM/F1aGVsbG8"}
    assert await public.read_all("Dn1ZmlsZXM/F1aGVsbG8") == files["Dn1ZmlsZXM/F1aGVsbG8"]
    assert proxy.requests and all(r.authorization is None for r in proxy.requests)

    # The same anonymous client against the private bucket is refused with a clear error.
    private = ObjectStoreSource.from_cai_env(
        {"MODEL_OSS_BUCKET_PATH": f"{BUCKET}:/vol/", "MODEL_OSS_ENDPOINT": proxy.url}
    )
    with pytest.raises(ObjectStoreError, match="access denied"):
        await private.read("gocryptfs.conf", 0, 10)


async def test_credentials_are_sent_and_never_logged(
    proxy: S3Proxy, s3: tuple[MotoS3Server, dict[str, bytes]], tmp_path: Path
) -> None:
    _, files = s3
    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
    token = "FwoGZXIvYXdzEXAMPLE-session-token-value-123"
    env = {
        "MODEL_OSS_BUCKET_PATH": f"{BUCKET}:/vol/",
        "MODEL_OSS_ENDPOINT": proxy.url,
        "MODEL_OSS_ACCESS_KEY_ID": "AKIDCAITESTKEY",
        "MODEL_OSS_SECRET_ACCESS_KEY": secret,
        "MODEL_OSS_SESSION_TOKEN": token,
    }
    stream = io.StringIO()
    configure_logging(stream=stream, level="debug")
    try:
        cache = CachedSource(ObjectStoreSource.from_cai_env(env), tmp_path / "cache", layout=LAYOUT)
        await cache.list_tree()
        assert await cache.read_all("gocryptfs.conf") == files["gocryptfs.conf"]
        with pytest.raises(SourceError) as missing:
            await cache.read("no-such-object", 0, 1)
        proxy.inject(Fault(lambda r: r.method == "GET", "status", status=403))
        with pytest.raises(ObjectStoreError) as denied:
            await cache.read("Dn1ZmlsZXM/F1aGVsbG8", 0, 10)
        await cache.close()
    finally:
        reset_logging()
        clear_secrets()
    signed = [r for r in proxy.requests if r.authorization]
    assert signed and all("Credential=AKIDCAITESTKEY/" in (r.authorization or "") for r in signed)
    assert all(r.security_token == token for r in signed)
    text = stream.getvalue() + str(missing.value) + str(denied.value) + repr(cache._source)
    assert "object store configured" in text
    assert secret not in text and token not in text


async def test_virtual_hosted_style_requests(proxy: S3Proxy, s3: tuple[MotoS3Server, dict[str, bytes]]) -> None:
    server, files = s3
    # OSS only accepts <bucket>.<endpoint> host names; the proxy forwards them to moto, which
    # resolves the bucket from the Host header (the name need not resolve in DNS).
    config = ObjectStoreConfig(
        bucket=BUCKET, prefix="vol", endpoint=f"http://s3.cai-test.example:{server.port}", addressing="virtual",
        allow_http=True, proxy_url=proxy.url, access_key_id="test-access-key", secret_access_key="test-secret-key",
    )
    src = ObjectStoreSource(config)
    assert {e.path for e in await src.list_tree()} >= {"gocryptfs.conf", "Dn1ZmlsZXM"}
    assert await src.read_all("Dn1ZmlsZXM/F1aGVsbG8") == files["Dn1ZmlsZXM/F1aGVsbG8"]
    hosts = {r.host for r in proxy.requests}
    assert hosts == {f"{BUCKET}.s3.cai-test.example:{server.port}"}
    assert all(not r.path.startswith(f"/{BUCKET}/") for r in proxy.requests)
