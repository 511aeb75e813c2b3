"""Security properties of running daemons: non-dumpable, no core files, socket/file modes, nothing secret in argv/env.

Real ``cai aa`` and ``cai cdh`` processes against a stand-in Trustee; the values checked for
are fresh random secrets, so a leak cannot pass by accident.
"""

from __future__ import annotations

import asyncio
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.http import free_port
from agents.supervisor import NotifyListener
from attestation_agent.kbs.dialect import Dialect
from trustee_standin.config import StandinConfig
from trustee_standin.server import StandinServer

NOBODY = 65534
MODEL = "default/aliyun/model-decryption-key"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged daemon can use (pytest's tmp_path is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="cai-sec-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "run"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], check=True)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CAI_", "TRUSTEE", "MODEL_"))}
    env.update(extra)
    return env


async def stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), 15)


def allow_cores() -> None:
    """preexec_fn: start with core files allowed, so a zero soft limit later proves the daemon set it."""
    hard = resource.getrlimit(resource.RLIMIT_CORE)[1]
    resource.setrlimit(resource.RLIMIT_CORE, (hard, hard))


def core_limit(pid: int) -> str:
    """The soft RLIMIT_CORE of ``pid`` as /proc shows it ("0", "unlimited", ...)."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            return line.split()[4]
    raise AssertionError(f"no core limit line in /proc/{pid}/limits")


async def test_unprivileged_aa_is_not_dumpable_and_its_socket_is_0660(shared_dir: Path) -> None:
    """With PR_SET_DUMPABLE 0 the kernel hands /proc/<pid>/* to root, so a same-uid neighbour cannot read memory."""
    setpriv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    control = await asyncio.create_subprocess_exec(*setpriv, sys.executable, "-c", "import time; time.sleep(30)",
                                                   preexec_fn=allow_cores)
    notify = NotifyListener(shared_dir / "notify.sock")
    os.chmod(notify.path, 0o777)
    log = open(shared_dir / "aa.log", "wb")
    aa = await asyncio.create_subprocess_exec(
        *setpriv, sys.executable, "-m", "agents.cli", "aa", "--allow-sample", "--socket", str(shared_dir / "aa.sock"),
        "--rest-listen", "off", stdout=log, stderr=log, env=clean_env(NOTIFY_SOCKET=str(notify.path)),
        preexec_fn=allow_cores)
    log.close()
    try:
        await notify.wait_for("READY=1", proc=aa, log=shared_dir / "aa.log")
        # Control: an ordinary process of the same user owns its /proc entries (so the check can fail).
        assert os.stat(f"/proc/{control.pid}/status").st_uid == NOBODY
        assert core_limit(control.pid) != "0", "control: core files allowed for an ordinary process"
        status = Path(f"/proc/{aa.pid}/status").read_text()
        assert f"Uid:\t{NOBODY}" in status, "the daemon should run as the unprivileged user"
        assert os.stat(f"/proc/{aa.pid}/status").st_uid == 0, "cai aa is still dumpable"
        assert os.stat(f"/proc/{aa.pid}/mem").st_uid == 0
        assert core_limit(aa.pid) == "0"
        assert stat.S_IMODE(os.stat(shared_dir / "aa.sock").st_mode) == 0o660
    finally:
        control.kill()
        await control.wait()
        assert await stop(aa) == 0
        notify.close()


async def test_cdh_keeps_keys_out_of_argv_env_and_has_tight_modes(tmp_path: Path, tmpfs: Path, secret: bytes,
                                                                  repository: Path) -> None:
    notify_aa = NotifyListener(tmp_path / "aa-notify.sock")
    notify_cdh = NotifyListener(tmp_path / "cdh-notify.sock")
    aa_sock, cdh_sock = tmp_path / "aa.sock", tmp_path / "cdh.sock"
    resources = tmpfs / "cai" / "resources"
    with open(tmp_path / "aa.log", "wb") as log:
        aa = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agents.cli", "aa", "--allow-sample", "--socket", str(aa_sock), "--rest-listen",
            "off", stdout=log, stderr=log, env=clean_env(NOTIFY_SOCKET=str(notify_aa.path)),
            preexec_fn=allow_cores)
    cdh = None
    try:
        await notify_aa.wait_for("READY=1", proc=aa, log=tmp_path / "aa.log")
        async with StandinServer(StandinConfig(dialect=Dialect.V0_4_0, repository=repository)) as trustee:
            with open(tmp_path / "cdh.log", "wb") as log:
                cdh = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "agents.cli", "cdh", "--resources-dir", str(resources), "--socket",
                    str(cdh_sock), "--aa-socket", str(aa_sock), "--rest-listen", "off", stdout=log, stderr=log,
                    env=clean_env(NOTIFY_SOCKET=str(notify_cdh.path), TRUSTEE_URL=trustee.url,
                                  MODEL_KEY_ID=f"kbs:///{MODEL}"), preexec_fn=allow_cores)
            await notify_cdh.wait_for("READY=1", proc=cdh, log=tmp_path / "cdh.log")
            assert (resources / "model-key").read_bytes() == secret, "control: the daemon really holds the secret"
            for proc in (aa, cdh):
                for name in ("cmdline", "environ"):
                    text = Path(f"/proc/{proc.pid}/{name}").read_bytes()
                    assert secret not in text, f"secret in /proc/<pid>/{name}"
                assert core_limit(proc.pid) == "0"
            assert stat.S_IMODE(os.stat(cdh_sock).st_mode) == 0o660
            assert stat.S_IMODE(os.stat(aa_sock).st_mode) == 0o660
            assert stat.S_IMODE(os.stat(resources).st_mode) == 0o700
            assert stat.S_IMODE(os.stat(resources / "model-key").st_mode) == 0o400
            assert await stop(cdh) == 0
    finally:
        if cdh is not None and cdh.returncode is None:
            await stop(cdh)
        assert await stop(aa) == 0
        notify_aa.close()
        notify_cdh.close()
    for name in ("aa.log", "cdh.log"):
        assert secret.decode() not in (tmp_path / name).read_text()


async def test_unprivileged_cachefs_and_gateway_are_not_dumpable(shared_dir: Path) -> None:
    """The two daemons the first tests do not spawn: cachefs (holds the volume key) and the gateway (TLS keys)."""
    from cachefs.encryptor import encrypt_directory
    from trustee_standin import ca

    setpriv = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    plain, cipher, mnt = shared_dir / "plain", shared_dir / "cipher", shared_dir / "model"
    for directory in (plain, cipher, mnt):
        directory.mkdir()
    (plain / "weights.bin").write_bytes(os.urandom(10000))
    password = os.urandom(16).hex().encode() + b"\n"
    encrypt_directory(plain, cipher, password)
    key = shared_dir / "model-key"
    key.write_bytes(password)
    key.chmod(0o400)
    ca.load_or_create(shared_dir / "ca")
    ingress = shared_dir / "ingress.json"
    ingress.write_text(json.dumps({"add_ingress": [{
        "http_proxy": {"proxy_listen": {"host": "127.0.0.1", "port": free_port()}},
        "verify": {"as_addr": "http://127.0.0.1:9/", "policy_ids": ["default"],
                   "trusted_certs_paths": [str(shared_dir / "ca" / ca.ROOT_CERT)]}}]}))
    subprocess.run(["chown", "-R", f"{NOBODY}:{NOBODY}", str(shared_dir)], check=True)
    argvs = {
        "cachefs": ["cachefs", "--mount-point", str(mnt), "--cipher-dir", str(cipher), "--key-file", str(key)],
        "gateway": ["gateway", "--config", str(ingress)],
    }
    env = {"cachefs": {"CAI_CACHEFS_SOCKET": str(shared_dir / "cachefs.sock"), "CAI_CACHEFS_ALLOW_OTHER": "false"},
           "gateway": {}}
    procs: dict[str, asyncio.subprocess.Process] = {}
    notifies: list[NotifyListener] = []
    try:
        for name, argv in argvs.items():
            notify = NotifyListener(shared_dir / f"{name}-notify.sock")
            notifies.append(notify)
            os.chmod(notify.path, 0o777)
            with open(shared_dir / f"{name}.log", "wb") as log:
                procs[name] = await asyncio.create_subprocess_exec(
                    *setpriv, sys.executable, "-m", "agents.cli", *argv, stdout=log, stderr=log,
                    env=clean_env(NOTIFY_SOCKET=str(notify.path), **env[name]), preexec_fn=allow_cores)
            await notify.wait_for("READY=1", proc=procs[name], log=shared_dir / f"{name}.log")
        for name, proc in procs.items():
            assert f"Uid:\t{NOBODY}" in Path(f"/proc/{proc.pid}/status").read_text(), name
            assert os.stat(f"/proc/{proc.pid}/status").st_uid == 0, f"cai {name} is still dumpable"
            assert os.stat(f"/proc/{proc.pid}/mem").st_uid == 0
            assert core_limit(proc.pid) == "0"
            assert password.strip() not in Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
        assert str(mnt) in mounts, "control: cachefs really mounted the volume as nobody"
        assert stat.S_IMODE(os.stat(shared_dir / "cachefs.sock").st_mode) == 0o660
    finally:
        for proc in reversed(procs.values()):
            assert await stop(proc) == 0
        for notify in notifies:
            notify.close()
        subprocess.run(["umount", "-l", str(mnt)], check=False, capture_output=True)
