"""``cai up`` starts the chain from a cai.env in order; ``cai status`` reports it; failures fail closed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agents.supervisor import NotifyListener
from attestation_agent.kbs.dialect import Dialect
from trustee_standin.config import StandinConfig
from trustee_standin.server import StandinServer

ALT = "default/aliyun/crag-master-key"


@pytest.fixture
def tmpfs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(run)], check=True)
    yield run
    subprocess.run(["umount", "-l", str(run)], check=False)


def status(run_dir: Path) -> tuple[int, list[dict]]:
    out = subprocess.run([sys.executable, "-m", "agents.cli", "status", "--run-dir", str(run_dir), "--json",
                          "--gateway", "127.0.0.1:9"], capture_output=True, text=True, timeout=30)
    return out.returncode, json.loads(out.stdout)


async def test_up_starts_in_order_status_reports_and_a_dying_daemon_stops_all(tmp_path, tmpfs):
    value = b"crag-" + os.urandom(12).hex().encode()
    (tmp_path / "repo" / ALT).parent.mkdir(parents=True)
    (tmp_path / "repo" / ALT).write_bytes(value)
    async with StandinServer(StandinConfig(dialect=Dialect.V0_4_0, repository=tmp_path / "repo")) as trustee:
        env_file = tmp_path / "cai.env"
        env_file.write_text(f"ALT_TRUSTEE_URL={trustee.url}\nALT_KEY_ID=kbs:///{ALT}\n")
        notify = NotifyListener(tmp_path / "up.notify")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CAI_", "TRUSTEE_", "MODEL_", "ALT_"))}
        env.update(NOTIFY_SOCKET=str(notify.path), CAI_AA_ALLOW_SAMPLE="true", CAI_AA_REST_LISTEN="off")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agents.cli", "up", "--env-file", str(env_file), "--run-dir", str(tmpfs),
            "--log-dir", str(tmp_path / "logs"), "--timeout", "60", env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            await notify.wait_for("READY=1", 60)
            assert (tmpfs / "resources" / "alt-key").read_bytes() == value
            code, rows = await asyncio.to_thread(status, tmpfs)
            by_name = {row["daemon"]: row for row in rows}
            assert code == 0, rows
            assert by_name["attestation-agent"]["state"] == "ready"
            assert "tee=sample" in by_name["attestation-agent"]["detail"]
            assert by_name["data-hub"]["state"] == "ready" and "alt-key" in by_name["data-hub"]["detail"]
            assert by_name["cachefs"]["state"] == "not running"  # cai.env asks for no model mount
            assert value.decode() not in json.dumps(rows)
            # Kill the agent: cai up must stop the data hub too and exit 1 (fail closed).
            aa_pid = _pid_of(f"-m agents.cli aa --env-file {env_file}")
            assert aa_pid > 1, "the attestation agent process was not found"
            os.kill(aa_pid, signal.SIGKILL)
            code = await asyncio.wait_for(proc.wait(), 30)
            assert code == 1
            output = (await proc.stdout.read()).decode()
            assert '"up.daemon_exited"' in output and '"daemon": "aa"' in output
            deadline = time.monotonic() + 10
            while _pid_of(f"-m agents.cli cdh --env-file {env_file}"):
                assert time.monotonic() < deadline, "the data hub outlived cai up"
                await asyncio.sleep(0.1)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                await proc.wait()
            notify.close()
    code, rows = await asyncio.to_thread(status, tmpfs)
    assert code == 3 and all(row["state"] == "not running" for row in rows)


def _pid_of(fragment: str) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if fragment in cmdline:
                return int(entry.name)
    return 0


def test_up_refuses_a_mount_without_a_key(tmp_path):
    env_file = tmp_path / "cai.env"
    env_file.write_text("MODEL_MOUNT_POINT=/tmp/model\n")
    out = subprocess.run([sys.executable, "-m", "agents.cli", "up", "--env-file", str(env_file), "--run-dir",
                          str(tmp_path / "run")], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "MODEL_KEY_ID" in out.stderr and "Traceback" not in out.stderr
