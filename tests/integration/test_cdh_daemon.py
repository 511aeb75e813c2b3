"""``cai cdh`` as a real process against a real ``cai aa --allow-sample`` process and two stand-ins."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from agents.http import free_port, unix_session
from agents.supervisor import NotifyListener
from attestation_agent.kbs.dialect import Dialect
from trustee_standin.config import StandinConfig
from trustee_standin.server import StandinServer

MODEL = "default/aliyun/model-decryption-key"
ALT = "default/aliyun/crag-master-key"




@pytest.fixture
def tmpfs(tmp_path):
    mount_point = tmp_path / "run"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], check=True)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def repository(root: Path, items: dict[str, bytes]) -> Path:
    for path, value in items.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(value)
    return root


async def spawn(tmp_path: Path, name: str, argv: list[str], env: dict[str, str]):
    notify = NotifyListener(tmp_path / f"{name}-notify.sock")
    log = open(tmp_path / f"{name}.log", "wb")
    full_env = {**{k: v for k, v in os.environ.items() if not k.startswith(("CAI_", "TRUSTEE", "MODEL_", "ALT_"))},
                **env, "NOTIFY_SOCKET": str(notify.path)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "agents.cli", *argv, stdout=log, stderr=log,
                                                env=full_env)
    log.close()
    return proc, notify


async def stop(proc) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), 15)


async def start_aa(tmp_path: Path):
    sock = str(tmp_path / "aa.sock")
    proc, notify = await spawn(tmp_path, "aa", ["aa", "--allow-sample", "--socket", sock, "--rest-listen", "off"], {})
    await notify.wait_for("READY=1", proc=proc)
    return proc, sock


def cdh_argv(tmp_path: Path, resources: Path, aa_sock: str, *extra: str) -> list[str]:
    return ["cdh", "--resources-dir", str(resources), "--socket", str(tmp_path / "cdh.sock"), "--aa-socket", aa_sock,
            "--startup-retry-initial", "0.05", "--startup-retry-max", "0.3", "--kbs-timeout", "5", *extra]


async def test_daemon_materialises_refreshes_atomically_and_reattests(tmp_path, tmpfs):
    values = {MODEL: b"model-password-" + os.urandom(12).hex().encode(),
              ALT: b"crag-master-" + os.urandom(12).hex().encode()}
    repo_a = repository(tmp_path / "repo-a", {MODEL: values[MODEL]})
    repo_b = repository(tmp_path / "repo-b", {ALT: values[ALT]})
    rest_port = free_port()
    resources = tmpfs / "cai" / "resources"
    rotated: list[bytes] = []
    async with StandinServer(StandinConfig(dialect=Dialect.V0_1_0, repository=repo_a)) as a, \
            StandinServer(StandinConfig(dialect=Dialect.V0_4_0, repository=repo_b)) as b:
        aa, aa_sock = await start_aa(tmp_path)
        env = {"TRUSTEE_URL": a.api_url, "MODEL_KEY_ID": f"kbs:///{MODEL}",
               "ALT_TRUSTEE_URL": b.url, "ALT_KEY_ID": f"kbs:///{ALT}"}
        cdh, notify = await spawn(tmp_path, "cdh", cdh_argv(tmp_path, resources, aa_sock, "--refresh-interval", "0.2",
                                                           "--rest-listen", f"127.0.0.1:{rest_port}"), env)
        try:
            await notify.wait_for("READY=1", proc=cdh)
            assert (resources / "model-key").read_bytes() == values[MODEL]
            assert (resources / "alt-key").read_bytes() == values[ALT]
            assert stat.S_IMODE(os.stat(resources).st_mode) == 0o700
            assert {stat.S_IMODE(os.stat(resources / f).st_mode) for f in ("model-key", "alt-key")} == {0o400}
            assert (resources / ".ready").exists()
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{rest_port}/cdh/resource/{ALT}") as resp:
                    assert resp.status == 200 and await resp.read() == values[ALT]

            # Rotate the model key while a reader polls the file: it sees only whole values.
            bad: list[int] = []
            done = threading.Event()

            def reader() -> None:
                while not done.is_set():
                    data = (resources / "model-key").read_bytes()
                    if data != values[MODEL] and data not in rotated:
                        bad.append(len(data))

            thread = threading.Thread(target=reader)
            thread.start()
            try:
                attests_before = a.faults.counters["attest"]
                for i in range(3):
                    new = f"rotated-{i}-".encode() + os.urandom(16).hex().encode()
                    rotated.append(new)
                    (repo_a / MODEL).write_bytes(new)
                    if i == 1:
                        a.faults.inject("resource", "drop_sessions")  # a Trustee restart loses sessions
                    deadline = time.monotonic() + 15
                    while (resources / "model-key").read_bytes() != new:
                        assert time.monotonic() < deadline, "refresh did not replace the value"
                        await asyncio.sleep(0.05)
            finally:
                done.set()
                thread.join()
            assert bad == []
            assert a.faults.counters["attest"] == attests_before + 1  # re-attested once after the drop
            async with unix_session(str(tmp_path / "cdh.sock")) as http:
                async with http.get("http://localhost/cdh/status") as resp:
                    status = await resp.json()
                async with http.get("http://localhost/metrics") as resp:
                    metrics = await resp.text()
            model = next(r for r in status["resources"] if r["file"] == "model-key")
            assert model["present"] and model["changes"] >= 3 and model["last_refresh_error"] is None
            text = json.dumps(status) + metrics
        finally:
            code = await stop(cdh)
            await stop(aa)
        await notify.wait_for("STOPPING=1", 5)
    assert code == 0
    assert not (tmp_path / "cdh.sock").exists()
    log = (tmp_path / "cdh.log").read_text()
    assert '"cdh.ready"' in log and "Traceback" not in log
    for value in (values[MODEL], values[ALT], *rotated):
        assert value.decode() not in log and value.decode() not in text, "secret leaked"


async def test_trustee_down_at_start_not_ready_then_ready(tmp_path, tmpfs):
    value = b"late-model-key-" + os.urandom(8).hex().encode()
    repo = repository(tmp_path / "repo", {MODEL: value})
    port = free_port()
    aa, aa_sock = await start_aa(tmp_path)
    env = {"TRUSTEE_URL": f"http://127.0.0.1:{port}/api", "MODEL_KEY_ID": f"kbs:///{MODEL}"}
    cdh, notify = await spawn(tmp_path, "cdh", cdh_argv(tmp_path, tmpfs / "res", aa_sock), env)
    try:
        sock = str(tmp_path / "cdh.sock")
        deadline = time.monotonic() + 20
        while True:  # the API is up while the Trustee is down, and says why it is not ready
            assert cdh.returncode is None and time.monotonic() < deadline
            try:
                async with unix_session(sock) as http, http.get("http://localhost/readyz") as resp:
                    body = await resp.json()
                    if resp.status == 503 and "cannot reach KBS" in body["failing"].get("resource:model-key", ""):
                        break
            except (aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        notify.drain()
        assert "READY=1" not in notify.seen and cdh.returncode is None  # retrying, not exiting
        async with StandinServer(StandinConfig(dialect=Dialect.V0_1_0, repository=repo), port=port):
            await notify.wait_for("READY=1", proc=cdh)
            assert (tmpfs / "res" / "model-key").read_bytes() == value
    finally:
        assert await stop(cdh) == 0
        await stop(aa)


async def test_persistent_directory_refused_and_bad_uri_named(tmp_path):
    aa_sock = str(tmp_path / "no-aa.sock")
    env = {"TRUSTEE_URL": "http://127.0.0.1:9/api", "MODEL_KEY_ID": f"kbs:///{MODEL}"}
    cdh, notify = await spawn(tmp_path, "cdh", cdh_argv(tmp_path, tmp_path / "disk-resources", aa_sock), env)
    assert await asyncio.wait_for(cdh.wait(), 20) == 1
    notify.drain()
    assert "READY=1" not in notify.seen
    log = (tmp_path / "cdh.log").read_text()
    fatal = [json.loads(line) for line in log.splitlines() if '"fatal"' in line]
    assert len(fatal) == 1 and "refusing to write secrets" in fatal[0]["error"] and "Traceback" not in log
    assert not (tmp_path / "disk-resources" / "model-key").exists()

    bad = {**env, "MODEL_KEY_ID": "kbs:///default/../model-key"}
    cdh, _ = await spawn(tmp_path, "cdh2", cdh_argv(tmp_path, tmp_path / "x", aa_sock), bad)
    assert await asyncio.wait_for(cdh.wait(), 20) == 2
    log = (tmp_path / "cdh2.log").read_text()
    assert "kbs:///default/../model-key" in log and "Traceback" not in log


async def test_get_resource_cli(tmp_path, tmpfs):
    value = b"operator-fetch-" + os.urandom(8).hex().encode()
    repo = repository(tmp_path / "repo", {MODEL: value})
    async with StandinServer(StandinConfig(dialect=Dialect.V0_4_0, repository=repo)) as a:
        aa, aa_sock = await start_aa(tmp_path)
        try:
            out = tmpfs / "key"
            base = [sys.executable, "-m", "agents.cli", "get-resource", f"kbs:///{MODEL}", "--kbs-url", a.url,
                    "--aa-socket", aa_sock]
            proc = await asyncio.create_subprocess_exec(*base, "-o", str(out), stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE)
            stdout, stderr = await proc.communicate()
            assert proc.returncode == 0, stderr
            assert out.read_bytes() == value and stat.S_IMODE(os.stat(out).st_mode) == 0o400
            assert value not in stdout + stderr
            proc = await asyncio.create_subprocess_exec(*base, "-o", "-", stdout=asyncio.subprocess.PIPE)
            assert (await proc.communicate())[0] == value
            proc = await asyncio.create_subprocess_exec(*base, "-o", str(tmp_path / "disk-key"),
                                                        stderr=asyncio.subprocess.PIPE)
            _, stderr = await proc.communicate()
            assert proc.returncode == 1 and b"not on a memory filesystem" in stderr
            assert not (tmp_path / "disk-key").exists()
        finally:
            await stop(aa)


async def test_api_server_rest_port_serves_cdh_through_the_aa(tmp_path, tmpfs):
    """One loopback port (the AA's 8006 listener) serves /aa/* and /cdh/resource/* like api-server-rest."""
    value = b"crag-master-" + os.urandom(12).hex().encode()
    repo = repository(tmp_path / "repo", {ALT: value})
    port = free_port()
    aa_sock, cdh_sock = str(tmp_path / "aa.sock"), str(tmp_path / "cdh.sock")
    async with StandinServer(StandinConfig(dialect=Dialect.V0_4_0, repository=repo)) as trustee:
        aa, aa_notify = await spawn(tmp_path, "aa", ["aa", "--allow-sample", "--socket", aa_sock, "--rest-listen",
                                                      f"127.0.0.1:{port}", "--cdh-socket", cdh_sock], {})
        try:
            await aa_notify.wait_for("READY=1", proc=aa)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/cdh/resource/{ALT}") as resp:
                    assert resp.status == 503 and "cai cdh" in (await resp.json())["error"]
                cdh, notify = await spawn(tmp_path, "cdh", cdh_argv(tmp_path, tmpfs / "res", aa_sock),
                                          {"ALT_TRUSTEE_URL": trustee.url, "ALT_KEY_ID": f"kbs:///{ALT}"})
                try:
                    await notify.wait_for("READY=1", proc=cdh)
                    async with http.get(f"http://127.0.0.1:{port}/cdh/resource/{ALT}") as resp:
                        assert resp.status == 200 and await resp.read() == value
                    async with http.get(f"http://127.0.0.1:{port}/cdh/resource/default/aliyun/..") as resp:
                        assert resp.status in (400, 404)
                finally:
                    assert await stop(cdh) == 0
        finally:
            assert await stop(aa) == 0
    assert value.decode() not in (tmp_path / "aa.log").read_text()
