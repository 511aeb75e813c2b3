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
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.http import free_port
from agents.supervisor import DaemonSupervisor

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


def _digest(value: bytes) -> str:
    return f"{len(value)} bytes, sha256 {hashlib.sha256(value).hexdigest()[:16]}…"


def _memory_dir(prefix: str) -> tuple[Path, bool]:
    """A private directory on tmpfs for the secrets (the data hub refuses persistent disk)."""
    shm = Path("/dev/shm")  # noqa: S108 - a private mkdtemp below it, mode 0700
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix=prefix, dir=shm)), True
    return Path(tempfile.mkdtemp(prefix=prefix)), False


def _example_model(root: Path) -> dict[str, str]:
    """A tiny stand-in for a model directory (what vLLM would load); returns sha256 per file."""
    files = {
        "config.json": json.dumps({"architectures": ["DemoForCausalLM"], "hidden_size": 64}).encode(),
        "tokenizer/tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "BPE"}}).encode(),
        "model-00001-of-00001.safetensors": os.urandom(3 * 1024 * 1024 + 4097),
        "README with spaces and ünïcode.md": b"demo model weights, encrypted with gocryptfs\n",
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}


async def start_example_app(port: int, on_request: Callable[[], None] | None = None) -> Any:
    """A tiny OpenAI-style completions app on 127.0.0.1:``port`` (stand-in for vLLM); returns its runner."""
    from aiohttp import web

    async def completions(request: web.Request) -> web.Response:
        if on_request is not None:
            on_request()
        body = await request.json()
        return web.json_response({"model": "demo", "choices": [{"text": f"echo: {body.get('prompt')}"}]})

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def run_demo(args: argparse.Namespace, workdir: Path, report: Report) -> None:
    import aiohttp

    from attestation_agent.kbs import token as token_codec
    from attestation_agent.kbs.dialect import Dialect
    from cachefs.encryptor import encrypt_directory
    from trustee_standin.config import StandinConfig
    from trustee_standin.server import StandinServer

    repo_a, repo_b = workdir / "trustee-a", workdir / "trustee-b"
    model_key = os.urandom(24).hex().encode() + b"\n"  # a gocryptfs passfile: the first line is the password
    alt_key = os.urandom(32).hex().encode()
    for repo, path, value in ((repo_a, MODEL_KEY, model_key), (repo_b, ALT_KEY, alt_key)):
        (repo / path).parent.mkdir(parents=True)
        (repo / path).write_bytes(value)
    plain, cipher, mount_point = workdir / "model-plain", workdir / "model-cipher", workdir / "model"
    for directory in (plain, cipher, mount_point):
        directory.mkdir()
    resources_parent, on_tmpfs = _memory_dir("cai-demo-run-")
    resources = resources_parent / "resources"

    async with contextlib.AsyncExitStack() as stack:
        stack.callback(lambda: __import__("shutil").rmtree(resources_parent, ignore_errors=True))
        daemons = DaemonSupervisor(stack, workdir, args.timeout, base_env={
            k: v for k, v in os.environ.items() if not k.startswith(("CAI_", "TRUSTEE_", "MODEL_", "ALT_"))})
        trustees: dict[str, StandinServer] = {}
        digests: dict[str, str] = {}

        async def start_trustees() -> str:
            trustees["a"] = await stack.enter_async_context(
                StandinServer(StandinConfig(dialect=Dialect.V0_1_0, repository=repo_a, fault_endpoint=False)))
            trustees["b"] = await stack.enter_async_context(
                StandinServer(StandinConfig(dialect=Dialect.V0_4_0, repository=repo_b, fault_endpoint=False)))
            return f"A {trustees['a'].api_url} (KBS 0.1.0, like Trustee 1.5), B {trustees['b'].url} (KBS 0.4.0)"

        if not await report.step("start local Trustee stand-ins A (model key) and B (RAG key)", start_trustees):
            return

        async def encrypt_model() -> str:
            digests.update(_example_model(plain))
            result = await asyncio.to_thread(encrypt_directory, plain, cipher, model_key)
            return (f"{result.files} files, {result.plain_bytes} bytes -> {cipher.name}/ with our "
                    "gocryptfs-compatible encryptor")

        if not await report.step("encrypt an example model directory (gocryptfs format)", encrypt_model):
            return

        aa_socket, rest_port = workdir / "aa.sock", free_port()
        aa_argv = ["aa", "--socket", str(aa_socket), "--rest-listen", f"127.0.0.1:{rest_port}",
                   "--cdh-socket", str(workdir / "cdh.sock"), "--kbs-url", trustees["a"].api_url]

        async def refuse_sample() -> str:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agents.cli", *aa_argv[:1], "--socket", str(workdir / "refused.sock"),
                "--rest-listen", "off", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            _, err = await asyncio.wait_for(proc.communicate(), args.timeout)
            if proc.returncode == 0 or b"sample" not in err:
                raise RuntimeError("the attestation agent started without TEE hardware or --allow-sample")
            return f"refused without --allow-sample (exit {proc.returncode}): fail closed"

        await report.step("attestation agent refuses the sample TEE by default", refuse_sample)
        if not await report.step("start `cai aa --allow-sample` (sample TEE)",
                                 lambda: daemons.start("aa", [*aa_argv, "--allow-sample"], {})):
            return

        async def rest_token() -> str:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{rest_port}/aa/token?token_type=kbs") as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")
            claims = token_codec.unverified_claims(json.loads(body)["token"])
            return (f"GET :{rest_port}/aa/token -> token iss={claims.get('iss')} tee={claims.get('tee')} "
                    f"valid {int(claims['exp'] - time.time())} s (token not shown)")

        await report.step("AA attests to Trustee A (api-server-rest /aa/token)", rest_token)

        cdh_env = {"TRUSTEE_URL": trustees["a"].api_url, "MODEL_KEY_ID": f"kbs:///{MODEL_KEY}",
                   "ALT_TRUSTEE_URL": trustees["b"].url, "ALT_KEY_ID": f"kbs:///{ALT_KEY}"}
        cdh_argv = ["cdh", "--resources-dir", str(resources), "--socket", str(workdir / "cdh.sock"),
                    "--aa-socket", str(aa_socket)]
        if not on_tmpfs:
            cdh_argv.append("--allow-persistent-storage")

        async def start_cdh() -> str:
            ready = await daemons.start("cdh", cdh_argv, cdh_env)
            return f"{ready}; resources in {resources}{'' if on_tmpfs else ' (NOT tmpfs: override used)'}"

        if not await report.step("start `cai cdh` (data hub, two Trustees)", start_cdh):
            return

        async def check_resources() -> str:
            out = []
            for name, expected in (("model-key", model_key), ("alt-key", alt_key)):
                path = resources / name
                if path.read_bytes() != expected:
                    raise RuntimeError(f"{path} differs from what the Trustee holds")
                out.append(f"{name} {oct(path.stat().st_mode & 0o777)} {_digest(expected)}")
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{rest_port}/cdh/resource/{ALT_KEY}") as resp:
                    if resp.status != 200 or await resp.read() != alt_key:
                        raise RuntimeError(f"GET :{rest_port}/cdh/resource answered {resp.status}")
            return "; ".join(out) + f"; also served at :{rest_port}/cdh/resource/…"

        await report.step("resources materialised (0.1.0 and 0.4.0 auto-detected)", check_resources)

        async def start_cachefs() -> str:
            ready = await daemons.start("cachefs", ["cachefs", "--mount-point", str(mount_point), "--cipher-dir",
                                                    str(cipher), "--key-file", str(resources / "model-key")], {})
            return f"{ready}; plaintext at {mount_point}"

        if await report.step("start `cai cachefs` (FUSE mount of the encrypted model)", start_cachefs):
            async def read_model() -> str:
                def compare() -> int:
                    seen = {str(p.relative_to(mount_point)): hashlib.sha256(p.read_bytes()).hexdigest()
                            for p in mount_point.rglob("*") if p.is_file()}
                    if seen != digests:
                        raise RuntimeError(f"mount shows {sorted(seen)} with different bytes than the model")
                    return sum(p.stat().st_size for p in mount_point.rglob("*") if p.is_file())

                size = await asyncio.to_thread(compare)
                return f"{len(digests)} files, {size} bytes, byte-identical to the plaintext (sha256)"

            await report.step("vLLM's view: read the model through the mount", read_model)

        app_port, egress_port, proxy_port = free_port(), free_port(), free_port()
        app_runner: list[Any] = []

        async def start_app() -> str:
            runner = await start_example_app(app_port)
            app_runner.append(runner)
            stack.push_async_callback(runner.cleanup)
            return f"a tiny OpenAI-style app on 127.0.0.1:{app_port} (plaintext, inside the TEE)"

        await report.step("start the inference app (stand-in for vLLM)", start_app)

        egress_config = workdir / "gateway-egress.json"
        egress_config.write_text(json.dumps({"add_egress": [{
            "mapping": {"in": {"host": "127.0.0.1", "port": egress_port},
                        "out": {"host": "127.0.0.1", "port": app_port}},
            "attest": {"aa_addr": f"unix://{aa_socket}"}}]}))
        ingress_config = workdir / "gateway-ingress.json"
        ingress_config.write_text(json.dumps({"add_ingress": [{
            "http_proxy": {"proxy_listen": {"host": "127.0.0.1", "port": proxy_port}},
            "verify": {"as_addr": trustees["a"].as_url, "policy_ids": ["default"],
                       "trusted_certs_paths": [str(trustees["a"].ca_cert_path)]}}]}))

        async def start_egress() -> str:
            ready = await daemons.start("gateway", ["gateway", "--config", str(egress_config)], {})
            return f"{ready}; rats-tls on :{egress_port} -> app :{app_port}, evidence from the AA"

        gateway_up = await report.step("start `cai gateway` (attested rats-tls egress)", start_egress)

        async def start_ingress() -> str:
            ready = await daemons.start("ingress", ["gateway", "--config", str(ingress_config)], {})
            return f"{ready}; client-side HTTP proxy on :{proxy_port}, verifies via Trustee A's AS"

        if gateway_up and await report.step("start the verifying client proxy (`cai gateway` ingress)",
                                            start_ingress):
            async def request_through() -> str:
                async with aiohttp.ClientSession() as http:
                    async with http.post(f"http://127.0.0.1:{egress_port}/v1/completions",
                                         json={"prompt": "hello TEE"},
                                         proxy=f"http://127.0.0.1:{proxy_port}") as resp:
                        body = await resp.json(content_type=None)
                        if resp.status != 200:
                            raise RuntimeError(f"HTTP {resp.status}: {body}")
                return f"TEE verified, then answered over rats-tls: {body['choices'][0]['text']!r}"

            await report.step("client request through the proxy (attested, encrypted)", request_through)

            async def plain_refused() -> str:
                async with aiohttp.ClientSession() as http:
                    try:
                        async with http.post(f"http://127.0.0.1:{egress_port}/v1/completions",
                                             json={"prompt": "plain"}) as resp:
                            raise RuntimeError(f"a plaintext client got HTTP {resp.status} from the protected port")
                    except aiohttp.ClientError as exc:
                        return f"plaintext client refused at :{egress_port} ({type(exc).__name__})"

            await report.step("a plaintext client cannot use the protected port", plain_refused)

        async def stop_all() -> str:
            codes = await daemons.stop_all()
            if any(codes.values()):
                raise RuntimeError(f"exit codes {codes}")
            if os.path.ismount(mount_point):
                raise RuntimeError(f"{mount_point} is still mounted")
            return "SIGTERM -> STOPPING=1, exit 0 for " + ", ".join(codes) + "; mount removed"

        await report.step("stop the daemons", stop_all)


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
