"""``cai cachefs`` end to end over object storage: a real gocryptfs volume in a moto S3 bucket,
the daemon as a real subprocess behind the counting proxy (tests/s3server.py), real FUSE.

Ordering is asserted through the proxy (a parked request, request logs), never through timing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from agents.http import unix_session
from cachefs.sources.local import LocalDirSource
from cachefs.testing import make_gocryptfs_volume, make_plain_tree, tree_digest, unmount
from cachefs.volume import open_volume
from tests.s3server import MotoS3Server, ProxyRequest, S3Proxy

pytestmark = pytest.mark.timeout(240)
REPO = Path(__file__).resolve().parents[2]
PASSWORD = b"object storage password \xe2\x9c\x93"
BUCKET = "conf-ai"
ACCESS_KEY = "AKIDCACHEFSDAEMON"
SECRET_KEY = "cachefs-daemon-secret-KEY-0123456789abcdef"
SESSION_TOKEN = "cachefs-daemon-sts-token-ZYXWVUT-987654"
BIG_MIB = 24


# -- fixtures: one volume, uploaded once ---------------------------------------------------------------


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cachefs-daemon")


@pytest.fixture(scope="module")
def keyfile(work: Path) -> Path:
    path = work / "model-key"
    path.write_bytes(PASSWORD + b"\n")
    return path


@pytest.fixture(scope="module")
def plain(work: Path) -> Path:
    root = work / "plain"
    make_plain_tree(root, big_mib=BIG_MIB)
    return root


@pytest.fixture(scope="module")
def cipher(work: Path, plain: Path, keyfile: Path) -> Path:
    make_gocryptfs_volume(plain, work / "cipher", keyfile, work)
    return work / "cipher"


@pytest.fixture(scope="module")
def big_key(cipher: Path) -> str:
    """The ciphertext path of big.bin (through our own volume reader)."""
    volume = asyncio.run(open_volume(LocalDirSource(cipher), PASSWORD))
    (node,) = [n for n in volume.tree.nodes.values() if n.parent == 1 and n.name == b"big.bin"]
    return node.cipher_path


@pytest.fixture(scope="module")
def s3(cipher: Path) -> Iterator[MotoS3Server]:
    """moto with the cipher directory under ``conf-ai:/vol/`` (symlinks as cai-symlink-target objects)."""
    server = MotoS3Server().start()
    try:
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        for path in sorted(cipher.rglob("*")):
            key = f"vol/{path.relative_to(cipher)}"
            if path.is_symlink():
                client.put_object(Bucket=BUCKET, Key=key, Body=b"",
                                  Metadata={"cai-symlink-target": os.readlink(path)})
            elif path.is_file():
                client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
        yield server
    finally:
        server.stop()


@pytest.fixture
async def proxy(s3: MotoS3Server) -> AsyncIterator[S3Proxy]:
    async with S3Proxy(s3.url) as px:
        yield px


# -- the daemon ------------------------------------------------------------------------------------------


class Daemon:
    """``cai cachefs`` over object storage in a subprocess; talks to its health socket."""

    def __init__(self, proxy: S3Proxy, root: Path, keyfile: Path, **env: str) -> None:
        self.mnt = root / "mnt"
        self.socket = str(root / "cachefs.sock")
        self.log = root / f"cachefs-{len(list(root.glob('cachefs-*.log')))}.log"
        self.mnt.mkdir(parents=True, exist_ok=True)
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("CAI_", "MODEL_"))}
        environ.update({
            "MODEL_OSS_BUCKET_PATH": f"{BUCKET}:/vol/",
            "MODEL_OSS_ENDPOINT": proxy.url,
            "MODEL_OSS_ACCESS_KEY_ID": ACCESS_KEY,
            "MODEL_OSS_SECRET_ACCESS_KEY": SECRET_KEY,
            "MODEL_OSS_SESSION_TOKEN": SESSION_TOKEN,
            "MODEL_MOUNT_POINT": str(self.mnt),
            "CAI_CACHEFS_CACHE_DIR": str(root / "cache"),
            "CAI_CACHEFS_SOCKET": self.socket,
            "CAI_CACHEFS_KEY_WAIT_TIMEOUT": "30",
            "CAI_CACHEFS_ALLOW_OTHER": "false",
            **env,
        })
        self._log_handle = open(self.log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agents.cli", "cachefs", "--key-file", str(keyfile), "--log-format", "json",
             "--log-level", "debug"],
            cwd=REPO, env=environ, stdout=subprocess.DEVNULL, stderr=self._log_handle)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    async def get(self, path: str) -> tuple[int, str]:
        async with unix_session(self.socket) as session, session.get(f"http://cachefs{path}") as resp:
            return resp.status, await resp.text()

    async def wait_ready(self) -> Daemon:
        """Poll /readyz until it says ready (the daemon must not exit meanwhile)."""
        for _ in range(1200):
            if self.proc.poll() is not None:
                raise AssertionError(f"cachefs exited {self.proc.returncode}: {self.output()}")
            try:
                status, _ = await self.get("/readyz")
                if status == 200:
                    return self
            except (aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.05)
        raise AssertionError(f"cachefs not ready: {self.output()}")

    async def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = await asyncio.to_thread(self.proc.wait, 60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = await asyncio.to_thread(self.proc.wait)
        self._log_handle.close()
        await asyncio.to_thread(unmount, self.mnt)
        return code


def is_big_stream(cipher_key: str) -> object:
    """The background GET of the whole big object (demand reads always carry a Range)."""
    return lambda r: r.method == "GET" and r.path.endswith(cipher_key) and r.range is None


def object_gets(requests: list[ProxyRequest]) -> list[ProxyRequest]:
    return [r for r in requests if r.method == "GET" and "list-type" not in r.query]


def pread(path: Path, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not found")


# -- tests -------------------------------------------------------------------------------------------


async def test_lazy_mount_full_read_health_and_restart_reuses_the_cache(
    proxy: S3Proxy, big_key: str, plain: Path, keyfile: Path, tmp_path: Path
) -> None:
    big = (plain / "big.bin").read_bytes()
    hold = proxy.hold(is_big_stream(big_key))
    daemon = await Daemon(proxy, tmp_path, keyfile).wait_ready()
    try:
        # Lazy: mounted while the background stream of big.bin is parked at the proxy.
        await asyncio.wait_for(hold.held.wait(), 60)
        middle = len(big) // 2 + 12345
        got = await asyncio.to_thread(pread, daemon.mnt / "big.bin", middle, 65536)
        assert got == big[middle : middle + 65536]
        assert not hold.release.is_set() and hold.count == 1
        status, body = await daemon.get("/status")
        state = json.loads(body)
        assert status == 200 and state["mounted"] and state["ready"] and state["mode"] == "lazy"
        assert not state["download"]["complete"] and state["download"]["bytes_remaining"] > 0
        demand = [r for r in object_gets(proxy.requests) if r.path.endswith(big_key) and r.range]
        assert demand, "the middle read should have fetched its chunk on demand"

        hold.release.set()
        # Full read through the mount equals the plaintext tree (sha256 of every file, symlink targets).
        assert await asyncio.to_thread(tree_digest, daemon.mnt) == await asyncio.to_thread(tree_digest, plain)
        for _ in range(1200):
            state = json.loads((await daemon.get("/status"))[1])
            if state["download"]["complete"]:
                break
            await asyncio.sleep(0.05)
        assert state["download"] | {"running": False} == {
            "objects_total": state["download"]["objects_total"], "objects_done": state["download"]["objects_total"],
            "objects_remaining": 0, "bytes_total": state["download"]["bytes_total"],
            "bytes_done": state["download"]["bytes_total"], "bytes_remaining": 0, "percent": 100,
            "complete": True, "running": False, "cache_enabled": True, "errors": 0}
        # Status and metrics expose counts only: no plaintext (or ciphertext) names.
        assert "big.bin" not in body and big_key not in body
        status, text = await daemon.get("/metrics")
        assert status == 200
        assert metric(text, "cachefs_download_bytes_remaining") == 0
        assert metric(text, "cachefs_download_objects_remaining") == 0
        assert metric(text, "cachefs_cache_bytes") == state["download"]["bytes_total"]
        assert metric(text, 'cachefs_download_bytes_total{reason="demand"}') > 0
        assert (await daemon.get("/livez"))[0] == 200
    finally:
        assert await daemon.stop() == 0
    assert not os.path.exists(daemon.socket)  # the health socket is removed on shutdown

    # Restart: the ciphertext cache is reused, so reading everything makes no object GETs at all.
    proxy.requests.clear()
    again = await Daemon(proxy, tmp_path, keyfile).wait_ready()
    try:
        assert await asyncio.to_thread(tree_digest, again.mnt) == await asyncio.to_thread(tree_digest, plain)
        state = json.loads((await again.get("/status"))[1])
        assert state["download"]["complete"]
        assert object_gets(proxy.requests) == []
        assert any("list-type" in r.query for r in proxy.requests)  # it did list the bucket
    finally:
        assert await again.stop() == 0

    # Credentials and the password never reach the logs; requests were signed with them.
    logs = daemon.output() + again.output()
    assert '"cachefs.ready"' in logs and "ciphertext download complete" in logs
    for secret in (SECRET_KEY, SESSION_TOKEN, PASSWORD.decode()):
        assert secret not in logs
    signed = [r for r in proxy.requests if r.authorization]
    assert signed and all(f"Credential={ACCESS_KEY}/" in (r.authorization or "") for r in signed)


async def test_eager_mode_downloads_before_mounting(
    proxy: S3Proxy, big_key: str, plain: Path, keyfile: Path, tmp_path: Path
) -> None:
    hold = proxy.hold(is_big_stream(big_key))
    daemon = Daemon(proxy, tmp_path, keyfile, CAI_CACHEFS_DOWNLOAD_MODE="eager")
    try:
        await asyncio.wait_for(hold.held.wait(), 60)
        # Parked download: the daemon is alive but not ready, and nothing is mounted.
        status, body = await daemon.get("/readyz")
        assert status == 503 and "downloading" in body
        assert (await daemon.get("/livez"))[0] == 200
        assert not os.path.ismount(daemon.mnt)
        hold.release.set()
        await daemon.wait_ready()
        state = json.loads((await daemon.get("/status"))[1])
        assert state["mode"] == "eager" and state["download"]["complete"]
        before = len(object_gets(proxy.requests))
        assert await asyncio.to_thread(tree_digest, daemon.mnt) == await asyncio.to_thread(tree_digest, plain)
        assert len(object_gets(proxy.requests)) == before  # everything was already cached
        assert hashlib.sha256(await asyncio.to_thread((daemon.mnt / "one").read_bytes)).digest() == hashlib.sha256(
            b"x").digest()
    finally:
        assert await daemon.stop() == 0


async def test_health_on_loopback_tcp_and_unready_while_waiting_for_the_key(
    proxy: S3Proxy, keyfile: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "not-yet"
    daemon = Daemon(proxy, tmp_path, missing, CAI_CACHEFS_HEALTH_PORT="0")
    try:
        for _ in range(1200):
            try:
                status, body = await daemon.get("/readyz")
                break
            except (aiohttp.ClientError, OSError):
                assert daemon.proc.poll() is None, daemon.output()
                await asyncio.sleep(0.05)
        assert status == 503 and "waiting for the key file" in body
        (line,) = [json.loads(x) for x in daemon.output().splitlines() if '"cachefs.health_api"' in x]
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{line['port']}/livez") as resp:
                assert resp.status == 200
            missing.write_bytes(keyfile.read_bytes())
            await daemon.wait_ready()
            async with session.get(f"http://127.0.0.1:{line['port']}/readyz") as resp:
                assert resp.status == 200 and (await resp.json())["checks"]["mount"]["ok"]
    finally:
        assert await daemon.stop() == 0
