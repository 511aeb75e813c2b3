"""Benchmark: time from ``cai cdh`` start to both resources ready, next to the bare attest time.

Starts two local Trustee stand-ins (protocol 0.1.0 and 0.4.0) and one ``cai aa --allow-sample``
process, then N times: start ``cai cdh`` on a fresh tmpfs directory and measure until sd_notify
READY=1 (model-key and alt-key written). The anchor, measured in the same run, is one in-process
RCAR handshake + resource fetch per stand-in with the sample attester (no AA, no process start).

    .venv/bin/python benchmarks/bench_cdh.py [-n 5]

Needs root (it mounts tmpfs). Numbers depend on machine load; compare the ratio, not the ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agents.logsetup import configure_logging
from attestation_agent.attesters.sample import SampleAttester
from attestation_agent.evidence import LocalEvidence
from attestation_agent.kbs.client import DialectMemory, KbsClient, KbsClientConfig
from attestation_agent.kbs.dialect import Dialect
from trustee_standin.config import StandinConfig
from trustee_standin.server import StandinServer

MODEL = "default/aliyun/model-decryption-key"
ALT = "default/aliyun/crag-master-key"


def notify_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    return sock


async def wait_ready(sock: socket.socket, proc: asyncio.subprocess.Process, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if "READY=1" in sock.recv(4096).decode().splitlines():
                return
            continue
        except BlockingIOError:
            pass
        if proc.returncode is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        await asyncio.sleep(0.005)
    raise TimeoutError("no READY=1")


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("CAI_", "TRUSTEE", "MODEL_", "ALT_"))}


async def run(n: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-cdh-"))
    run_dir = work / "run"
    run_dir.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(run_dir)], check=True)
    try:
        for root, path in ((work / "a", MODEL), (work / "b", ALT)):
            (root / path).parent.mkdir(parents=True)
            (root / path).write_bytes(os.urandom(32))
        async with StandinServer(StandinConfig(dialect=Dialect.V0_1_0, repository=work / "a")) as a, \
                StandinServer(StandinConfig(dialect=Dialect.V0_4_0, repository=work / "b")) as b:
            anchor: list[float] = []
            for _ in range(n):
                started = time.perf_counter()
                for url, path in ((a.api_url, MODEL), (b.url, ALT)):
                    async with KbsClient(KbsClientConfig(url=url), LocalEvidence(SampleAttester()),
                                         dialects=DialectMemory()) as client:
                        await client.get_resource(path)
                anchor.append(time.perf_counter() - started)

            startup: list[float] = []
            for _ in range(n):
                started = time.perf_counter()
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-c", "import data_hub.daemon", stdout=subprocess.DEVNULL)
                await proc.wait()
                startup.append(time.perf_counter() - started)

            aa_notify = notify_socket(work / "aa-notify.sock")
            aa_sock = str(work / "aa.sock")
            aa = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agents.cli", "aa", "--allow-sample", "--socket", aa_sock, "--rest-listen",
                "off", "--log-level", "warning", env={**clean_env(), "NOTIFY_SOCKET": str(work / "aa-notify.sock")},
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            await wait_ready(aa_notify, aa)
            env = {**clean_env(), "TRUSTEE_URL": a.api_url, "MODEL_KEY_ID": f"kbs:///{MODEL}",
                   "ALT_TRUSTEE_URL": b.url, "ALT_KEY_ID": f"kbs:///{ALT}"}
            daemon: list[float] = []
            try:
                for i in range(n):
                    notify_path = work / f"cdh-notify-{i}.sock"
                    sock = notify_socket(notify_path)
                    started = time.perf_counter()
                    cdh = await asyncio.create_subprocess_exec(
                        sys.executable, "-m", "agents.cli", "cdh", "--resources-dir", str(run_dir / f"res-{i}"),
                        "--socket", str(work / "cdh.sock"), "--aa-socket", aa_sock, "--log-level", "warning",
                        env={**env, "NOTIFY_SOCKET": str(notify_path)},
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    await wait_ready(sock, cdh)
                    daemon.append(time.perf_counter() - started)
                    cdh.send_signal(signal.SIGTERM)
                    await cdh.wait()
                    sock.close()
            finally:
                aa.send_signal(signal.SIGTERM)
                await aa.wait()
    finally:
        subprocess.run(["umount", "-l", str(run_dir)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    anchor_ms = statistics.median(anchor) * 1000
    daemon_ms = statistics.median(daemon) * 1000
    print(f"runs: {n}")
    print(f"stand-in only, attest + fetch from both Trustees in-process (median): {anchor_ms:8.1f} ms")
    print(f"cai cdh start -> model-key and alt-key ready, READY=1 (median):      {daemon_ms:8.1f} ms")
    print(f"python start + import data_hub.daemon (median):                     "
          f"{statistics.median(startup) * 1000:8.1f} ms")
    print(f"ratio daemon / anchor: {daemon_ms / anchor_ms:.2f}x "
          "(includes Python start-up and evidence over the AA socket)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=5, help="repetitions (median reported)")
    configure_logging(level="error", fmt="console")
    asyncio.run(run(parser.parse_args().n))


if __name__ == "__main__":
    main()
