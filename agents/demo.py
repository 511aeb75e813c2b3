"""``cai demo``: the chain on this machine with the sample TEE and local Trustee stand-ins.

Development only. Every step is timed and reported; secret values are never printed (sizes and
SHA-256 only). Everything started here is stopped on exit or Ctrl-C. Like ``agents.cli`` this is
a composition root, so it imports the daemon packages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MODEL_KEY = "default/aliyun/model-decryption-key"
ALT_KEY = "default/aliyun/crag-master-key"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs) after exit")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for each daemon")


@dataclass
class Report:
    steps: list[tuple[str, bool, float, str]] = field(default_factory=list)
    out: Any = sys.stdout

    async def step(self, title: str, action: Callable[[], Awaitable[str]]) -> bool:
        started = time.monotonic()
        try:
            detail = await action()
            ok = True
        except Exception as exc:  # the demo reports every failure and goes on to clean up
            detail, ok = f"{type(exc).__name__}: {exc}", False
        elapsed = (time.monotonic() - started) * 1000
        self.steps.append((title, ok, elapsed, detail))
        mark = "ok  " if ok else "FAIL"
        print(f"[{mark}] {title:<58} {elapsed:8.1f} ms  {detail}", file=self.out, flush=True)
        return ok

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _, _ in self.steps)


class NotifyListener:
    """A NOTIFY_SOCKET like systemd's, to see the daemons' READY=1 / STOPPING=1."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.extend(self.sock.recv(4096).decode(errors="replace").splitlines())
            except BlockingIOError:
                return self.messages

    async def wait_for(self, state: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while state not in self.drain():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {state} within {timeout:g} s")
            await asyncio.sleep(0.02)

    def close(self) -> None:
        self.sock.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def _process(argv: list[str], log_path: Path, env: dict[str, str]) -> AsyncIterator[asyncio.subprocess.Process]:
    with open(log_path, "ab") as log:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=log, env=env,
                                                    stdin=asyncio.subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _digest(value: bytes) -> str:
    return f"{len(value)} bytes, sha256 {hashlib.sha256(value).hexdigest()[:16]}…"


async def run_demo(args: argparse.Namespace, workdir: Path, report: Report) -> None:
    from attestation_agent.aa_client import AaClient
    from attestation_agent.kbs import token as token_codec
    from attestation_agent.kbs.client import KbsClient, KbsClientConfig
    from attestation_agent.kbs.dialect import Dialect
    from trustee_standin.config import StandinConfig
    from trustee_standin.server import StandinServer

    repo_a, repo_b = workdir / "trustee-a", workdir / "trustee-b"
    model_key, alt_key = os.urandom(32).hex().encode(), os.urandom(32).hex().encode()
    for repo, path, value in ((repo_a, MODEL_KEY, model_key), (repo_b, ALT_KEY, alt_key)):
        target = repo / path
        target.parent.mkdir(parents=True)
        target.write_bytes(value)

    async with contextlib.AsyncExitStack() as stack:
        trustees: dict[str, StandinServer] = {}

        async def start_trustees() -> str:
            trustees["a"] = await stack.enter_async_context(
                StandinServer(StandinConfig(dialect=Dialect.V0_1_0, repository=repo_a, fault_endpoint=False)))
            trustees["b"] = await stack.enter_async_context(
                StandinServer(StandinConfig(dialect=Dialect.V0_4_0, repository=repo_b, fault_endpoint=False)))
            return f"A {trustees['a'].api_url} (KBS 0.1.0, like Trustee 1.5), B {trustees['b'].url} (KBS 0.4.0)"

        if not await report.step("start local Trustee stand-ins A and B", start_trustees):
            return

        notify = NotifyListener(workdir / "notify.sock")
        stack.callback(notify.close)
        aa_socket, rest_port = workdir / "aa.sock", _free_port()
        env = {**os.environ, "NOTIFY_SOCKET": str(notify.path), "PYTHONUNBUFFERED": "1"}
        env.pop("TRUSTEE_URL", None)
        argv = [sys.executable, "-m", "agents.cli", "aa", "--socket", str(aa_socket),
                "--rest-listen", f"127.0.0.1:{rest_port}", "--kbs-url", trustees["a"].api_url]

        async def refuse_sample() -> str:
            proc = await asyncio.create_subprocess_exec(
                *argv, "--socket", str(workdir / "refused.sock"), "--rest-listen", "off",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
            _, err = await asyncio.wait_for(proc.communicate(), args.timeout)
            if proc.returncode == 0 or b"sample" not in err:
                raise RuntimeError("the attestation agent started without TEE hardware or --allow-sample")
            return f"refused without --allow-sample (exit {proc.returncode}): fail closed"

        await report.step("attestation agent refuses the sample TEE by default", refuse_sample)

        aa = await stack.enter_async_context(_process([*argv, "--allow-sample"], workdir / "aa.log", env))

        async def wait_ready() -> str:
            await notify.wait_for("READY=1", args.timeout)
            return f"READY=1 via sd_notify (pid {aa.pid}, socket {aa_socket})"

        if not await report.step("start `cai aa --allow-sample` (sample TEE)", wait_ready):
            return

        async def rest_token() -> str:
            import aiohttp
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{rest_port}/aa/token?token_type=kbs") as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")
            claims = token_codec.unverified_claims(json.loads(body)["token"])
            return (f"GET :{rest_port}/aa/token -> token iss={claims.get('iss')} tee={claims.get('tee')} "
                    f"valid {int(claims['exp'] - time.time())} s (token not shown)")

        await report.step("AA attests to Trustee A (api-server-rest /aa/token)", rest_token)

        aa_client = AaClient(str(aa_socket))
        stack.push_async_callback(aa_client.close)
        for label, path, expected, url in (
            ("model key from Trustee A (0.1.0, /api gateway)", MODEL_KEY, model_key, trustees["a"].api_url),
            ("RAG key from Trustee B (0.4.0, bare KBS)", ALT_KEY, alt_key, trustees["b"].url),
        ):
            async def fetch(url: str = url, path: str = path, expected: bytes = expected) -> str:
                async with KbsClient(KbsClientConfig(url=url), aa_client) as client:
                    value = await client.get_resource(path)
                    dialect = (await client.attestation()).dialect.value
                if value != expected:
                    raise RuntimeError("resource value differs from what the Trustee holds")
                return f"dialect {dialect} auto-detected; {_digest(value)} matches"

            await report.step(f"fetch {label}", fetch)

        async def stop_aa() -> str:
            aa.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(aa.wait(), args.timeout)
            await notify.wait_for("STOPPING=1", 2)
            if code != 0:
                raise RuntimeError(f"exit code {code}")
            return "SIGTERM -> STOPPING=1, exit 0"

        await report.step("stop the attestation agent", stop_aa)


def main(args: argparse.Namespace) -> int:
    from agents.logsetup import configure_logging

    workdir = Path(tempfile.mkdtemp(prefix="cai-demo-"))
    os.chmod(workdir, 0o700)
    log_file = open(workdir / "demo.log", "a")
    configure_logging(level="info", fmt="json", stream=log_file, service="demo")
    report = Report()
    print("cai demo — development only: sample TEE (no hardware root of trust), local Trustee stand-ins\n"
          f"work directory: {workdir}\n", flush=True)
    started = time.monotonic()
    try:
        asyncio.run(run_demo(args, workdir, report))
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        return 130
    finally:
        log_file.close()
        if not args.keep:
            import shutil
            shutil.rmtree(workdir, ignore_errors=True)
    total = (time.monotonic() - started) * 1000
    ok = report.ok and bool(report.steps)
    print(f"\n{'all steps succeeded' if ok else 'SOME STEPS FAILED'} in {total:.0f} ms"
          + ("" if ok or args.keep else " (re-run with --keep to inspect the logs)"), flush=True)
    return 0 if ok else 1
