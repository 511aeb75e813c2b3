"""The whole chain as a test harness: real daemons in subprocesses, driven by fault and soak tests.

Two Trustee stand-ins (A: KBS 0.1.0 behind ``/api``, like Trustee 1.5; B: KBS 0.4.0), ``cai aa
--allow-sample``, ``cai cdh`` writing both keys to a tmpfs, ``cai cachefs`` mounting a model
encrypted with our gocryptfs-compatible encryptor, a tiny inference app behind a ``cai gateway``
rats-tls egress, and a verifying ``cai gateway`` ingress (HTTP proxy) on the client side — the
same wiring as ``cai demo`` and the production units, so a fault injected here is a fault the
user would meet.

Unlike :class:`agents.supervisor.DaemonSupervisor` (which starts each daemon once, in order,
and always waits for READY), the harness can start a daemon without waiting, kill it with any
signal and start it again; each incarnation gets its own notify socket and log file.

The Trustees run in the test's event loop on fixed loopback ports, so they can be started late
(``trustee_up=False``: unreachable at start) or restarted (:meth:`Chain.restart_trustee`: every
session lost, the token-signing CA kept, as with a real Trustee). Secrets are fresh random
values per chain; :meth:`Chain.persisted` scans every persistent file the chain wrote for them
and for plaintext model bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from agents.demo import ALT_KEY, MODEL_KEY, _example_model, _memory_dir, start_example_app
from agents.http import free_port, unix_session
from agents.supervisor import NotifyListener, child_process
from attestation_agent.kbs.dialect import Dialect
from trustee_standin import ca
from trustee_standin.config import StandinConfig
from trustee_standin.server import StandinServer

DAEMONS = ("aa", "cdh", "cachefs", "gateway", "ingress")
GATEWAY_MODES = ("rats-tls", "multiplex", "ohttp")
#: Environment prefixes of the developer's shell that must not leak into the daemons.
_FOREIGN_ENV = ("CAI_", "TRUSTEE_", "MODEL_", "ALT_", "NOTIFY_SOCKET")


@dataclass
class ChainOptions:
    """What to run. Per-daemon ``args``/``env`` are appended to / override the defaults."""

    daemons: tuple[str, ...] = DAEMONS
    trustee_up: bool = True
    cdh_refresh: float = 0.0
    args: Mapping[str, list[str]] = field(default_factory=dict)
    env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    #: cachefs reads the encrypted model from this local directory; False: the test supplies an
    #: object-storage source through ``env["cachefs"]`` (MODEL_OSS_*) instead.
    local_model: bool = True
    #: Extra members of the egress's ``attest`` block, e.g. ``{"refresh_interval": 10}``.
    egress_attest: Mapping[str, Any] = field(default_factory=dict)
    #: Wire protocol between ingress and egress (both sides configured alike): ``rats-tls`` (TNG >= 2.7,
    #: one TLS session per connection), ``multiplex`` (``rats_tls.multiplex``: HTTP/2 CONNECT streams over
    #: pooled sessions) or ``ohttp`` (TNG >= 2.2.6 OHTTP: HPKE-sealed requests over plain HTTP).
    gateway_mode: str = "rats-tls"
    timeout: float = 30.0


@dataclass
class ProcStats:
    """What a soak watches per daemon: resident memory, open descriptors, threads."""

    rss_kb: int
    fds: int
    threads: int


@dataclass
class _Spec:
    argv: list[str]
    env: dict[str, str]
    socket: str | None


class Chain:
    """Async context manager running the chain below ``root`` (a per-test directory)."""

    def __init__(self, root: Path, options: ChainOptions | None = None) -> None:
        self.root = root
        self.options = options or ChainOptions()
        self.model_key = os.urandom(24).hex().encode() + b"\n"  # a gocryptfs passfile
        self.alt_key = os.urandom(32).hex().encode()
        self.plain = root / "model-plain"
        self.cipher = root / "model-cipher"
        self.mount_point = root / "model"
        self.logs = root / "logs"
        self.digests: dict[str, str] = {}
        self.trustees: dict[str, StandinServer] = {}
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.incarnations: dict[str, int] = {}
        self.app_port = self.egress_port = self.proxy_port = self.rest_port = 0
        self.control_ports: dict[str, int] = {}
        self.app_requests = 0
        self._notify: dict[str, NotifyListener] = {}
        self._specs: dict[str, _Spec] = {}
        self._stack = contextlib.AsyncExitStack()
        self.resources = Path()

    # ------------------------------------------------------------------ set-up

    async def __aenter__(self) -> Chain:
        try:
            await self._setup()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _setup(self) -> None:
        for directory in (self.plain, self.cipher, self.mount_point, self.logs):
            directory.mkdir(parents=True, exist_ok=True)
        memory, on_tmpfs = _memory_dir("cai-chain-")
        self._stack.callback(shutil.rmtree, memory, ignore_errors=True)
        self.resources = memory / "resources"
        self._on_tmpfs = on_tmpfs
        for name, dialect, value, path in (("a", Dialect.V0_1_0, self.model_key, MODEL_KEY),
                                           ("b", Dialect.V0_4_0, self.alt_key, ALT_KEY)):
            repo = self.root / f"trustee-{name}"
            ca.load_or_create(self.root / f"ca-{name}")  # the ingress trusts it even before the Trustee runs
            (repo / path).parent.mkdir(parents=True)
            (repo / path).write_bytes(value)
            server = StandinServer(StandinConfig(dialect=dialect, repository=repo, ca_dir=self.root / f"ca-{name}"),
                                   port=free_port())
            server.port = server._requested_port  # known before it listens: daemons may start first
            self.trustees[name] = server
            self._stack.push_async_callback(server.stop)
            if self.options.trustee_up:
                await server.start()
        if self.options.local_model:
            from cachefs.encryptor import encrypt_directory

            self.digests.update(_example_model(self.plain))
            await asyncio.to_thread(encrypt_directory, self.plain, self.cipher, self.model_key)
        await self._start_app()
        self._define_daemons()
        self._stack.push_async_callback(self.stop_all)
        for name in self.options.daemons:
            await self.start(name)

    async def make_model(self, extra_mib: int = 0) -> None:
        """Write and encrypt the example model into ``plain``/``cipher`` (what ``local_model`` does at set-up).

        For ``local_model=False`` chains that upload ``cipher`` to object storage before starting
        cachefs. ``extra_mib`` adds a random second shard of that size (for faults that need
        several cache chunks of 4 MiB).
        """
        from cachefs.encryptor import encrypt_directory

        self.digests.update(_example_model(self.plain))
        if extra_mib:
            data = os.urandom(extra_mib << 20)
            (self.plain / "model-extra.safetensors").write_bytes(data)
            self.digests["model-extra.safetensors"] = hashlib.sha256(data).hexdigest()
        await asyncio.to_thread(encrypt_directory, self.plain, self.cipher, self.model_key)

    async def _start_app(self) -> None:
        """A tiny OpenAI-style app (stand-in for vLLM); counts the requests that reach it."""

        def count() -> None:
            self.app_requests += 1

        self.app_port = free_port()
        self._app_runner: Any = await start_example_app(self.app_port, count)
        self._stack.push_async_callback(self.stop_app)

    async def stop_app(self) -> None:
        """Stop the inference app (the gateway's backend); its port stays reserved for :meth:`start_app`."""
        runner, self._app_runner = self._app_runner, None
        if runner is not None:
            await runner.cleanup()

    async def start_app(self) -> None:
        """Start the inference app again on the same port (after :meth:`stop_app`)."""
        if self._app_runner is not None:
            raise RuntimeError(f"the app is already running on port {self.app_port}")

        def count() -> None:
            self.app_requests += 1

        self._app_runner = await start_example_app(self.app_port, count)

    def _define_daemons(self) -> None:
        opts, root = self.options, self.root
        self.aa_socket, self.cdh_socket = str(root / "aa.sock"), str(root / "cdh.sock")
        self.cachefs_socket = str(root / "cachefs.sock")
        self.rest_port, self.egress_port, self.proxy_port = free_port(), free_port(), free_port()
        self.control_ports = {"gateway": free_port(), "ingress": free_port()}
        a, b = self.trustees["a"], self.trustees["b"]
        specs = {
            "aa": _Spec(["aa", "--allow-sample", "--socket", self.aa_socket, "--rest-listen",
                         f"127.0.0.1:{self.rest_port}", "--cdh-socket", self.cdh_socket, "--kbs-url", a.api_url],
                        {}, self.aa_socket),
            "cdh": _Spec(["cdh", "--resources-dir", str(self.resources), "--socket", self.cdh_socket,
                          "--aa-socket", self.aa_socket, "--refresh-interval", str(opts.cdh_refresh),
                          *([] if self._on_tmpfs else ["--allow-persistent-storage"])],
                         {"TRUSTEE_URL": a.api_url, "MODEL_KEY_ID": f"kbs:///{MODEL_KEY}",
                          "ALT_TRUSTEE_URL": b.url, "ALT_KEY_ID": f"kbs:///{ALT_KEY}"}, self.cdh_socket),
            "cachefs": _Spec(["cachefs", "--mount-point", str(self.mount_point), "--key-file",
                              str(self.resources / "model-key"),
                              *(["--cipher-dir", str(self.cipher)] if opts.local_model else [])],
                             {"CAI_CACHEFS_SOCKET": self.cachefs_socket, "CAI_CACHEFS_CACHE_DIR": str(root / "cache"),
                              "CAI_CACHEFS_KEY_WAIT_TIMEOUT": str(opts.timeout)}, self.cachefs_socket),
            "gateway": _Spec(["gateway", "--config", str(self._gateway_config("egress")), "--control-listen",
                              f"127.0.0.1:{self.control_ports['gateway']}"], {}, None),
            "ingress": _Spec(["gateway", "--config", str(self._gateway_config("ingress")), "--control-listen",
                              f"127.0.0.1:{self.control_ports['ingress']}"], {}, None),
        }
        for name, spec in specs.items():
            spec.argv += list(opts.args.get(name, ()))
            spec.env.update(opts.env.get(name, {}))
        self._specs = specs

    def _gateway_config(self, kind: str) -> Path:
        path = self.root / f"gateway-{kind}.json"
        mode = self.options.gateway_mode
        if mode not in GATEWAY_MODES:
            raise ValueError(f"ChainOptions.gateway_mode {mode!r} is not one of {', '.join(GATEWAY_MODES)}")
        protocol: dict[str, Any] = {"multiplex": {"rats_tls": {"multiplex": True}},
                                    "ohttp": {"ohttp": {}}}.get(mode, {})
        if kind == "egress":
            config: dict[str, Any] = {"add_egress": [{
                "mapping": {"in": {"host": "127.0.0.1", "port": self.egress_port},
                            "out": {"host": "127.0.0.1", "port": self.app_port}},
                "attest": {"aa_addr": f"unix://{self.aa_socket}", **self.options.egress_attest}, **protocol}]}
        else:
            a = self.trustees["a"]
            config = {"add_ingress": [{
                "http_proxy": {"proxy_listen": {"host": "127.0.0.1", "port": self.proxy_port}},
                "verify": {"as_addr": a.as_url, "policy_ids": ["default"],
                           "trusted_certs_paths": [str(self.root / "ca-a" / ca.ROOT_CERT)]}, **protocol}]}
        path.write_text(json.dumps(config))
        return path

    # ------------------------------------------------------------------ daemons

    def log_path(self, name: str, incarnation: int | None = None) -> Path:
        n = self.incarnations.get(name, 1) if incarnation is None else incarnation
        return self.logs / f"{name}-{n}.log"

    def log(self, name: str) -> str:
        """Everything every incarnation of ``name`` logged, oldest first."""
        return "".join(self.log_path(name, n).read_text(errors="replace")
                       for n in range(1, self.incarnations.get(name, 0) + 1) if self.log_path(name, n).exists())

    def log_events(self, name: str) -> list[dict[str, Any]]:
        """The daemon's JSON log lines, parsed (non-JSON lines are skipped)."""
        events = []
        for line in self.log(name).splitlines():
            with contextlib.suppress(ValueError):
                event = json.loads(line)
                if isinstance(event, dict):
                    events.append(event)
        return events

    def events(self, name: str, event: str, **match: Any) -> list[dict[str, Any]]:
        """``name``'s log lines for ``event`` whose fields equal ``match``."""
        return [e for e in self.log_events(name) if e.get("event") == event
                and all(e.get(k) == v for k, v in match.items())]

    def assert_files(self) -> None:
        """The data hub's resource files hold exactly the Trustees' values (read as the app would)."""
        assert (self.resources / "model-key").read_bytes() == self.model_key
        assert (self.resources / "alt-key").read_bytes() == self.alt_key

    def leaks(self, names: Iterable[str], extra_secrets: Iterable[bytes] = (),
              extra_dirs: Iterable[Path] = ()) -> list[str]:
        """Every secret found where it must never be: persistent files (:meth:`persisted`) and the logs of ``names``.

        ``extra_secrets`` adds values the chain does not know (e.g. object-storage credentials).
        """
        secrets = [*self.secrets(), *extra_secrets]
        found = self.persisted(extra_dirs)
        for name in names:
            log = self.log(name).encode()
            found += [f"{name} log: secret #{i}" for i, secret in enumerate(secrets) if secret in log]
        return found

    async def start(self, name: str, *, wait_ready: bool = True) -> asyncio.subprocess.Process:
        """Start (another incarnation of) ``name``; by default wait for its READY=1."""
        if name in self.procs and self.procs[name].returncode is None:
            raise RuntimeError(f"{name} is already running (pid {self.procs[name].pid})")
        spec = self._specs[name]
        n = self.incarnations[name] = self.incarnations.get(name, 0) + 1
        notify = NotifyListener(self.root / f"{name}-{n}.notify")
        self._stack.callback(notify.close)
        self._notify[name] = notify
        env = {k: v for k, v in os.environ.items() if not k.startswith(_FOREIGN_ENV)}
        env.update(spec.env, NOTIFY_SOCKET=str(notify.path), PYTHONUNBUFFERED="1")
        proc = await self._stack.enter_async_context(child_process(
            [sys.executable, "-m", "agents.cli", *spec.argv], self.log_path(name, n), env))
        self.procs[name] = proc
        if wait_ready:
            await self.wait_ready(name)
        return proc

    async def wait_ready(self, name: str, timeout: float | None = None) -> None:
        """Wait for READY=1 of the current incarnation; fails with the daemon's last log lines."""
        proc, notify = self.procs[name], self._notify[name]
        deadline = time.monotonic() + (timeout or self.options.timeout)
        while "READY=1" not in notify.seen:
            if proc.returncode is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}: {self.tail(name)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name} not ready: {self.tail(name)}")
            await asyncio.sleep(0.02)

    def notified(self, name: str) -> list[str]:
        """Every sd_notify message the current incarnation of ``name`` sent so far."""
        return list(self._notify[name].seen)

    def tail(self, name: str, lines: int = 8) -> str:
        return "\n".join(self.log(name).splitlines()[-lines:])

    async def kill(self, name: str, sig: int = signal.SIGKILL) -> int:
        """Send ``sig`` and wait for the exit; returns the exit status (negative: killed)."""
        proc = self.procs[name]
        if proc.returncode is None:
            proc.send_signal(sig)
        return await asyncio.wait_for(proc.wait(), self.options.timeout)

    async def stop(self, name: str) -> int:
        return await self.kill(name, signal.SIGTERM)

    async def restart(self, name: str, *, sig: int = signal.SIGTERM, wait_ready: bool = True) -> int:
        """Stop ``name`` with ``sig`` (SIGKILL: a crash) and start it again; returns the old exit code."""
        code = await self.kill(name, sig)
        await self.start(name, wait_ready=wait_ready)
        return code

    async def stop_all(self) -> dict[str, int]:
        codes = {}
        for name in reversed(list(self.procs)):
            with contextlib.suppress(TimeoutError):
                codes[name] = await self.stop(name)
        return codes

    # ------------------------------------------------------------------ trustees

    async def start_trustee(self, name: str = "a") -> None:
        await self.trustees[name].start()

    async def stop_trustee(self, name: str = "a") -> None:
        await self.trustees[name].stop()

    async def restart_trustee(self, name: str = "a") -> None:
        await self.trustees[name].restart()

    # ------------------------------------------------------------------ observation

    async def api(self, name: str, path: str, method: str = "GET", **kwargs: Any) -> tuple[int, bytes]:
        """One request to ``name``'s Unix-socket API (aa, cdh, cachefs) or control port (gateways)."""
        timeout = aiohttp.ClientTimeout(total=self.options.timeout)
        socket = self._specs[name].socket
        if socket is None:
            session = aiohttp.ClientSession(timeout=timeout)
            url = f"http://127.0.0.1:{self.control_ports[name]}{path}"
        else:
            session, url = unix_session(socket, timeout=timeout), f"http://{name}{path}"
        async with session, session.request(method, url, **kwargs) as resp:
            return resp.status, await resp.read()

    async def metrics(self, name: str) -> dict[str, float]:
        """``name``'s /metrics as {sample name with labels: value}."""
        status, body = await self.api(name, "/metrics")
        if status != 200:
            raise AssertionError(f"{name} /metrics answered {status}")
        return parse_metrics(body.decode())

    async def ask(self, prompt: str = "hello TEE") -> tuple[int, str]:
        """A client request through the verifying ingress to the protected port; (status, text)."""
        timeout = aiohttp.ClientTimeout(total=self.options.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http, http.post(
                f"http://127.0.0.1:{self.egress_port}/v1/completions", json={"prompt": prompt},
                proxy=f"http://127.0.0.1:{self.proxy_port}") as resp:
            return resp.status, await resp.text()

    def read_model(self) -> dict[str, str]:
        """sha256 of every file visible in the mount (blocking: call via ``asyncio.to_thread``)."""
        return {str(p.relative_to(self.mount_point)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(self.mount_point.rglob("*")) if p.is_file()}

    def stats(self, name: str) -> ProcStats:
        pid = self.procs[name].pid
        status = Path(f"/proc/{pid}/status").read_text()
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        return ProcStats(rss_kb=int(fields["VmRSS"].split()[0]), fds=len(os.listdir(f"/proc/{pid}/fd")),
                         threads=int(fields["Threads"]))

    def secrets(self) -> list[bytes]:
        """The values that must never reach persistent storage: both keys, and model plaintext."""
        needles = [self.model_key.strip(), self.alt_key]
        for path in sorted(self.plain.rglob("*")):
            if path.is_file() and path.stat().st_size >= 64:
                data = path.read_bytes()
                needles += [data[:64], data[len(data) // 2:len(data) // 2 + 64]]
        return needles

    def persisted(self, extra: Iterable[Path] = ()) -> list[str]:
        """Persistent files under the chain's directory (and ``extra``) that contain a secret.

        The plaintext model source (the test's own input) and the Trustees' repositories are
        excluded; the tmpfs resources directory is not under ``root``.
        """
        needles = self.secrets()
        excluded = (self.plain, self.root / "trustee-a", self.root / "trustee-b", self.mount_point)
        hits = []
        for base in (self.root, *extra):
            for path in base.rglob("*"):
                if any(path == e or e in path.parents for e in excluded) or not path.is_file():
                    continue
                with contextlib.suppress(OSError):
                    data = path.read_bytes()
                    hits += [f"{path}: secret #{i}" for i, needle in enumerate(needles) if needle in data]
        return hits


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format → {name{labels}: value}; comments skipped."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        with contextlib.suppress(ValueError):
            out[name] = float(value)
    return out


async def eventually(check: Any, timeout: float = 30.0, interval: float = 0.1, what: str = "condition") -> Any:
    """Poll the (async or sync) ``check`` until it returns a truthy value; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if asyncio.iscoroutine(last):
                last = await last
        except (OSError, aiohttp.ClientError, AssertionError) as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout:g} s (last: {last!r})")
        await asyncio.sleep(interval)
