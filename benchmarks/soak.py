"""Soak: the whole chain under sustained mixed load for a bounded time; memory, descriptors, errors.

Run: ``.venv/bin/python benchmarks/soak.py [--duration 600] [--clients 4] [--readers 2] [--refresh 1]
[--gateway-mode rats-tls|multiplex|ohttp] [--model-source local|s3] [--report benchmarks/SOAK.md]``.
Exit status 0 only when every request succeeded, every byte read matched the plaintext and no
daemon shows unbounded growth (the criteria are printed with the table).

The chain is :class:`tests.chain.Chain` — the real ``cai`` daemons as subprocesses, two Trustee
stand-ins, a FUSE mount of an encrypted model, a rats-tls egress in front of a tiny app and a
verifying ingress proxy — with the data hub refreshing its resources every ``--refresh`` seconds.
``--gateway-mode`` chooses the ingress ↔ egress protocol (``rats-tls``: one attested TLS session per
connection, spliced; ``multiplex``: HTTP/2 CONNECT streams over a pooled attested session, relayed;
``ohttp``: HPKE-sealed requests over plain HTTP). ``--model-source s3`` puts the encrypted model in a
moto S3 bucket (behind the counting proxy of tests/s3server.py) instead of a local directory: cachefs
starts with a fresh ciphertext cache, downloads it in the background while the first reads fetch
ranges on demand, and then serves every read through the cache.
Load, all at once:

* gateway: ``--clients`` loops, each request on a new client session (so a new connection to the
  ingress proxy and a new attested rats-tls connection to the egress), every answer checked;
* model: ``--readers`` threads reading random ranges and whole files from the mount (the page cache
  of the file is dropped with ``posix_fadvise`` first so the daemon, not the kernel, serves the bytes),
  compared with the plaintext kept in memory;
* attestation agent: ``GET /aa/token`` and ``GET /aa/evidence`` over its Unix socket;
* data hub: its own refresh loop; the resource files are compared with the Trustees' values.

Why growth is judged the way it is: a leak grows with the work done, so linearly in time under a
steady load, while caches, allocator arenas and connection pools plateau. After a warm-up (the first
``--warmup`` fraction of the run, excluded) the load pauses until the chain is quiet, descriptors and
threads are sampled (baseline), and the load resumes; at the end it stops, the chain goes quiet and
they are sampled again. RSS is sampled throughout; the growth in the second half of the measured
window is compared with the first half (see :data:`CRITERIA`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.chain import DAEMONS, GATEWAY_MODES, Chain, ChainOptions, ProcStats  # noqa: E402

MIB = 1024 * 1024

#: Leak criteria, per daemon (printed with every report).
FD_GROWTH_MAX = 4  # quiet end - quiet baseline: a pooled keep-alive connection or two, not one per request
THREAD_GROWTH_MAX = 2  # a worker pool that grew once, not a thread per request
RSS_NOISE_KIB = 4 * 1024  # allocator/arena noise below which second-half growth is not judged
RSS_SECOND_HALF_RATIO = 0.5  # a linear leak has ratio ~1 (second half grows like the first), a plateau ~0
RSS_TOTAL_MAX_KIB = 32 * 1024  # measured-window growth of any daemon, whatever its shape

CRITERIA = (
    "every gateway request answered 200 with its own prompt echoed; every model read equal to the plaintext; "
    "every /aa/token and /aa/evidence answered 200; resource files equal to the Trustees' values; "
    "no daemon error metric increased; no daemon logged an error line; no daemon exited; "
    "no secret in any log or persistent file",
    f"per daemon: open fds (quiet end - quiet baseline) <= {FD_GROWTH_MAX}; "
    f"threads (quiet end - quiet baseline) <= {THREAD_GROWTH_MAX}",
    f"per daemon RSS over the measured window: second-half growth <= max({RSS_NOISE_KIB // 1024} MiB, "
    f"{RSS_SECOND_HALF_RATIO:g} x first-half growth) and total growth <= {RSS_TOTAL_MAX_KIB // 1024} MiB",
)

#: Metric samples that count failures; a result label other than these successes counts too.
_ERROR_NAME = re.compile(r"fail|error|refused|stall|retr|reject|mismatch", re.I)
_RESULT = re.compile(r'result="([^"]*)"')
_OK_RESULTS = {"ok", "verified", "certificate", "hit", "miss", "served"}


@dataclass
class SoakConfig:
    """How long and how hard; the defaults are the local 10-minute run."""

    duration: float = 600.0
    clients: int = 4
    readers: int = 2
    refresh: float = 1.0
    aa_interval: float = 0.5
    resource_interval: float = 2.0
    sample_interval: float = 2.0
    warmup: float = 0.1  # fraction of ``duration``
    #: > 0: end the load as soon as this many gateway requests succeeded after the baseline
    #: (``duration`` is then the cap) — CI asks for an amount of work, not an amount of time.
    target_requests: int = 0
    gateway_mode: str = "rats-tls"  # one of tests.chain.GATEWAY_MODES
    model_source: str = "local"  # "local" (cipher directory) or "s3" (moto S3 through the ciphertext cache)
    s3_extra_mib: int = 8  # s3: a random extra shard of this size, so the model spans several 4 MiB cache chunks


@dataclass
class Counts:
    """What the load did; every ``*_failed`` / ``*mismatch*`` must stay 0."""

    asks_ok: int = 0
    asks_failed: int = 0
    aa_ok: int = 0
    aa_failed: int = 0
    reads: int = 0
    whole_file_reads: int = 0
    bytes_read: int = 0
    read_mismatches: int = 0
    read_errors: int = 0
    resource_checks: int = 0
    resource_mismatches: int = 0
    errors: list[str] = field(default_factory=list)  # the first few, for the report

    def error(self, what: str) -> None:
        if len(self.errors) < 10:
            self.errors.append(what)


@dataclass
class Sample:
    t: float  # seconds since the load started
    phase: str  # "load", "baseline" (quiet, after warm-up), "end" (quiet, after the load)
    stats: dict[str, ProcStats]


@dataclass
class Growth:
    """One daemon's figures over the run (KiB for memory)."""

    rss_warm: int
    rss_mid: int
    rss_end: int
    rss_max: int
    fds_baseline: int
    fds_end: int
    fds_max: int
    threads_baseline: int
    threads_end: int

    @property
    def rss_growth(self) -> int:
        return self.rss_end - self.rss_warm

    @property
    def first_half(self) -> int:
        return self.rss_mid - self.rss_warm

    @property
    def second_half(self) -> int:
        return self.rss_end - self.rss_mid

    def problems(self, name: str) -> list[str]:
        out = []
        if self.fds_end - self.fds_baseline > FD_GROWTH_MAX:
            out.append(f"{name}: open fds grew {self.fds_baseline} -> {self.fds_end} (> {FD_GROWTH_MAX})")
        if self.threads_end - self.threads_baseline > THREAD_GROWTH_MAX:
            out.append(f"{name}: threads grew {self.threads_baseline} -> {self.threads_end}")
        if self.second_half > max(RSS_NOISE_KIB, RSS_SECOND_HALF_RATIO * self.first_half):
            out.append(f"{name}: RSS still growing in the second half ({self.second_half} KiB after "
                       f"{self.first_half} KiB in the first): growth looks linear, a leak")
        if self.rss_growth > RSS_TOTAL_MAX_KIB:
            out.append(f"{name}: RSS grew {self.rss_growth} KiB over the measured window (> {RSS_TOTAL_MAX_KIB})")
        return out


@dataclass
class SoakResult:
    config: SoakConfig
    daemons: tuple[str, ...]
    counts: Counts
    samples: list[Sample]
    growth: dict[str, Growth]
    metrics_before: dict[str, dict[str, float]]
    metrics_after: dict[str, dict[str, float]]
    connections: dict[str, float]  # cx_total per gateway over the run
    refreshes: int  # data hub refreshes of the model key over the run
    trustee_requests: dict[str, dict[str, int]]  # per stand-in route, over the run
    log_levels: dict[str, dict[str, int]]  # warning/error log lines per daemon
    persisted: list[str]
    secrets_in_logs: list[str]
    exited: dict[str, int | None]
    elapsed: float
    measured_requests: int = 0  # gateway requests (= new connections) in the measured window, after the baseline
    app_requests: int = 0  # requests that reached the app behind the egress over the run
    storage: dict[str, Any] = field(default_factory=dict)  # s3: object GETs, cache state (see _S3Model.summary)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# ---------------------------------------------------------------------------- load


class _Gate:
    """Pause/stop switch shared by the asyncio loops and the reader threads, with an in-flight count."""

    def __init__(self) -> None:
        self.running = threading.Event()
        self.running.set()
        self.stopped = threading.Event()
        self._lock = threading.Lock()
        self.in_flight = 0

    @contextlib.contextmanager
    def op(self) -> Any:
        with self._lock:
            self.in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self.in_flight -= 1

    async def wait(self) -> bool:
        """False once stopped; otherwise wait while paused."""
        while not self.running.is_set() and not self.stopped.is_set():
            await asyncio.sleep(0.05)
        return not self.stopped.is_set()


async def _client_loop(chain: Chain, gate: _Gate, counts: Counts, client: int) -> None:
    n = 0
    while await gate.wait():
        n += 1
        prompt = f"soak client {client} request {n} {os.urandom(4).hex()}"
        with gate.op():
            try:
                status, text = await chain.ask(prompt)
                answer = json.loads(text) if status == 200 else None
            except Exception as exc:
                counts.asks_failed += 1
                counts.error(f"gateway request: {type(exc).__name__}: {exc}")
                continue
        if isinstance(answer, dict) and answer.get("choices") == [{"text": f"echo: {prompt}"}]:
            counts.asks_ok += 1
        else:
            counts.asks_failed += 1
            counts.error(f"gateway request: HTTP {status}: {text[:200]!r}")


async def _aa_loop(chain: Chain, gate: _Gate, counts: Counts, interval: float) -> None:
    while await gate.wait():
        for path, params in (("/aa/token", {"token_type": "kbs"}),
                             ("/aa/evidence", {"runtime_data": f"soak-{os.urandom(8).hex()}"})):
            with gate.op():
                try:
                    status, body = await chain.api("aa", path, params=params)
                    good = status == 200 and len(body) > 0 and (path != "/aa/token" or "token" in json.loads(body))
                except Exception as exc:
                    counts.aa_failed += 1
                    counts.error(f"aa {path}: {type(exc).__name__}: {exc}")
                    continue
            if good:
                counts.aa_ok += 1
            else:
                counts.aa_failed += 1
                counts.error(f"aa {path}: HTTP {status}: {body[:200]!r}")
        await asyncio.sleep(interval)


async def _resource_loop(chain: Chain, gate: _Gate, counts: Counts, interval: float) -> None:
    expected = {"model-key": chain.model_key, "alt-key": chain.alt_key}
    while await gate.wait():
        for name, value in expected.items():
            counts.resource_checks += 1
            try:
                good = (chain.resources / name).read_bytes() == value
            except OSError as exc:  # replaced atomically by rename, so never absent
                good = False
                counts.error(f"resource {name}: {exc}")
            if not good:
                counts.resource_mismatches += 1
                counts.error(f"resource {name}: content differs from the Trustee's value")
        await asyncio.sleep(interval)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _reader(mount: Path, plain: dict[str, bytes], gate: _Gate, counts: Counts, lock: threading.Lock,
            seed: int) -> None:
    """Random ranges (and every 8th operation a whole file) from the mount, compared with the plaintext."""
    rng = random.Random(seed)
    names = sorted(plain)
    weights = [max(1, len(plain[n]) // 4096) for n in names]
    op = 0
    while not gate.stopped.is_set():
        if not gate.running.is_set():
            time.sleep(0.05)
            continue
        op += 1
        name = rng.choices(names, weights)[0]
        data = plain[name]
        whole = op % 8 == 0 or len(data) < 4096
        with gate.op():
            try:
                fd = os.open(mount / name, os.O_RDONLY)
                try:
                    if whole or rng.random() < 0.5:
                        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)  # make the daemon serve it
                    if whole:
                        start, got = 0, _read_all(fd)
                        want = data
                    else:
                        start = rng.randrange(len(data))
                        length = rng.randint(1, 256 * 1024)
                        got, want = os.pread(fd, length, start), data[start:start + length]
                finally:
                    os.close(fd)
            except OSError as exc:
                with lock:
                    counts.read_errors += 1
                    counts.error(f"model read {name}: {exc}")
                continue
        with lock:
            counts.reads += 1
            counts.whole_file_reads += whole
            counts.bytes_read += len(got)
            if got != want:
                counts.read_mismatches += 1
                counts.error(f"model read {name}@{start}+{len(want)}: {len(got)} bytes differ from the plaintext")


# ---------------------------------------------------------------------------- observation


def _sample(chain: Chain, daemons: tuple[str, ...], t: float, phase: str) -> Sample:
    return Sample(t, phase, {name: chain.stats(name) for name in daemons})


async def _metrics(chain: Chain, daemons: tuple[str, ...]) -> dict[str, dict[str, float]]:
    out = {}
    for name in daemons:
        raw = await chain.metrics(name)
        out[name] = {k: v for k, v in raw.items()
                     if not k.startswith(("python_", "process_")) and "_created" not in k and "_bucket" not in k}
    return out


def error_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """The samples of one daemon's metrics that count failures (by name, or by a non-success result label)."""
    out = {}
    for key, value in metrics.items():
        name = key.split("{", 1)[0]
        result = _RESULT.search(key)
        if _ERROR_NAME.search(name) or (result and result.group(1) not in _OK_RESULTS):
            out[key] = value
    return out


async def _quiesce(chain: Chain, gate: _Gate, gateways: list[str], timeout: float = 30.0) -> None:
    """Wait until no load operation is in flight and the gateways hold no connection, then settle."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        active = 0.0
        for name in gateways:
            metrics = await chain.metrics(name)
            active += sum(v for k, v in metrics.items() if k.startswith("cx_active"))
        if gate.in_flight == 0 and active == 0:
            break
        await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)  # closed connections' descriptors and tasks are released asynchronously


def _growth(samples: list[Sample], name: str) -> Growth:
    load = [s.stats[name] for s in samples if s.phase == "load"]
    baseline = next(s.stats[name] for s in samples if s.phase == "baseline")
    end = next(s.stats[name] for s in samples if s.phase == "end")
    rss = [st.rss_kb for st in load] or [baseline.rss_kb]
    n = len(rss)
    w = max(1, n // 10)  # medians over a tenth of the window smooth out requests in flight
    mid = n // 2
    return Growth(
        rss_warm=int(statistics.median(rss[:w])),
        rss_mid=int(statistics.median(rss[max(0, mid - w // 2):mid + w // 2 + 1])),
        rss_end=int(statistics.median(rss[-w:])),
        rss_max=max(rss),
        fds_baseline=baseline.fds,
        fds_end=end.fds,
        fds_max=max([st.fds for st in load] + [baseline.fds, end.fds]),
        threads_baseline=baseline.threads,
        threads_end=end.threads,
    )


def _model_key_refreshes(status: dict[str, Any]) -> int:
    return min(int(r.get("refreshes", 0)) for r in status["resources"])


# ---------------------------------------------------------------------------- the model's storage

S3_BUCKET = "cai-soak"
S3_PREFIX = "model/"


class _S3Model:
    """The encrypted model in a moto S3 bucket, reached by cachefs through the counting proxy of tests/s3server.py.

    The credentials are fresh random values per run, so the log scan can look for them like for the keys.
    """

    def __init__(self, proxy: Any) -> None:
        self.proxy = proxy
        self.access_key = f"AKIDSOAK{os.urandom(6).hex().upper()}"
        self.secret_key = f"soak-s3-secret-{os.urandom(16).hex()}"
        self.session_token = f"soak-s3-token-{os.urandom(16).hex()}"
        self.gets_at_baseline = 0

    def env(self, cache_dir: Path) -> dict[str, str]:
        """cai.env object-storage variables for ``cai cachefs`` (a fresh cache: the download path runs)."""
        return {"MODEL_OSS_BUCKET_PATH": f"{S3_BUCKET}:/{S3_PREFIX}", "MODEL_OSS_ENDPOINT": self.proxy.url,
                "MODEL_OSS_ACCESS_KEY_ID": self.access_key, "MODEL_OSS_SECRET_ACCESS_KEY": self.secret_key,
                "MODEL_OSS_SESSION_TOKEN": self.session_token, "CAI_CACHEFS_CACHE_DIR": str(cache_dir)}

    def secrets(self) -> list[bytes]:
        return [self.secret_key.encode(), self.session_token.encode()]

    def mark_baseline(self) -> None:
        self.gets_at_baseline = len(self.proxy.gets())

    async def summary(self, chain: Chain) -> dict[str, Any]:
        """Object GETs over the run and after the baseline, and cachefs's view of its download."""
        _, body = await chain.api("cachefs", "/status")
        state = json.loads(body)
        gets = len(self.proxy.gets())
        return {"gets": gets, "gets_measured": gets - self.gets_at_baseline, "download": state.get("download", {}),
                "failing": state.get("failing", []), "read_errors": state.get("read_errors", 0)}


@contextlib.asynccontextmanager
async def _soak_chain(root: Path, config: SoakConfig, daemons: tuple[str, ...]
                      ) -> AsyncIterator[tuple[Chain, _S3Model | None]]:
    """The chain for ``config``; with ``model_source="s3"`` also moto S3, the proxy, the uploaded model."""
    if config.gateway_mode not in GATEWAY_MODES:
        raise ValueError(f"gateway mode {config.gateway_mode!r} is not one of {', '.join(GATEWAY_MODES)}")
    options: dict[str, Any] = {"daemons": daemons, "cdh_refresh": config.refresh, "gateway_mode": config.gateway_mode}
    if config.model_source == "local":
        async with Chain(root, ChainOptions(**options)) as chain:
            yield chain, None
        return
    if config.model_source != "s3":
        raise ValueError(f"model source {config.model_source!r} is not 'local' or 's3'")
    from tests.s3server import MotoS3Server, S3Proxy, upload_tree

    moto = await asyncio.to_thread(MotoS3Server().start)
    try:
        await asyncio.to_thread(moto.client().create_bucket, Bucket=S3_BUCKET)
        async with S3Proxy(moto.url) as proxy:
            s3 = _S3Model(proxy)
            options.update(daemons=tuple(d for d in daemons if d != "cachefs"), local_model=False,
                           env={"cachefs": s3.env(root / "cache")})
            async with Chain(root, ChainOptions(**options)) as chain:
                await chain.make_model(config.s3_extra_mib)
                await asyncio.to_thread(upload_tree, moto.client(), S3_BUCKET, S3_PREFIX, chain.cipher)
                if "cachefs" in daemons:
                    await chain.start("cachefs")
                yield chain, s3
    finally:
        await asyncio.to_thread(moto.stop)


# ---------------------------------------------------------------------------- the run


async def run_soak(root: Path, config: SoakConfig, *, progress: Callable[[str], None] | None = None) -> SoakResult:
    """Start the whole chain below ``root``, load it for ``config.duration`` seconds, and judge the result."""
    say, daemons = progress or (lambda _msg: None), DAEMONS
    counts, samples, gate = Counts(), [], _Gate()
    gateways = [d for d in daemons if d in ("gateway", "ingress")]
    # A multiplexing egress keeps its pooled session open when quiet: only the ingress's connections must end.
    quiet = [g for g in gateways if not (config.gateway_mode == "multiplex" and g == "gateway")]
    say(f"starting the chain in {root} (gateway mode {config.gateway_mode}, model from {config.model_source})")
    async with _soak_chain(root, config, daemons) as (chain, s3):
        plain = {str(p.relative_to(chain.plain)): p.read_bytes() for p in chain.plain.rglob("*") if p.is_file()}
        app_requests_before = chain.app_requests
        metrics_before = await _metrics(chain, daemons)
        trustees_before = {n: dict(t.faults.counters) for n, t in chain.trustees.items()}
        _, body = await chain.api("cdh", "/cdh/status")
        refreshes_before = _model_key_refreshes(json.loads(body))
        lock = threading.Lock()
        started = time.monotonic()
        tasks = [asyncio.create_task(_client_loop(chain, gate, counts, i)) for i in range(config.clients)]
        tasks += [asyncio.create_task(_aa_loop(chain, gate, counts, config.aa_interval)),
                  asyncio.create_task(_resource_loop(chain, gate, counts, config.resource_interval))]
        readers = [threading.Thread(target=_reader, args=(chain.mount_point, plain, gate, counts, lock, i),
                                    name=f"soak-reader-{i}", daemon=True) for i in range(config.readers)]
        for thread in readers:
            thread.start()
        warmup_end = started + config.warmup * config.duration
        end = started + config.duration
        baseline_taken, asks_at_baseline = False, 0
        try:
            while time.monotonic() < end:
                measured = counts.asks_ok + counts.asks_failed - asks_at_baseline
                if baseline_taken and 0 < config.target_requests <= measured:
                    break
                if not baseline_taken and time.monotonic() >= warmup_end:
                    paused = time.monotonic()
                    gate.running.clear()
                    await _quiesce(chain, gate, quiet)
                    samples.append(_sample(chain, daemons, time.monotonic() - started, "baseline"))
                    if s3 is not None:
                        s3.mark_baseline()
                    say(f"warm-up done after {time.monotonic() - started:.0f} s; quiet baseline "
                        + ", ".join(f"{n}={s.rss_kb // 1024} MiB/{s.fds} fds" for n, s in samples[-1].stats.items()))
                    baseline_taken, asks_at_baseline = True, counts.asks_ok + counts.asks_failed
                    gate.running.set()
                    end += time.monotonic() - paused  # the pause is not load time
                elif baseline_taken:
                    samples.append(_sample(chain, daemons, time.monotonic() - started, "load"))
                for task in tasks:
                    if task.done() and task.exception() is not None:
                        raise task.exception()  # type: ignore[misc]
                if any(p.returncode is not None for p in chain.procs.values()):
                    break
                if len(samples) % 15 == 1:
                    say(f"t={time.monotonic() - started:5.0f} s  gateway ok={counts.asks_ok} failed="
                        f"{counts.asks_failed}  reads={counts.reads} ({counts.bytes_read // MIB} MiB, "
                        f"mismatches {counts.read_mismatches})  aa ok={counts.aa_ok}")
                await asyncio.sleep(config.sample_interval)
        finally:
            gate.stopped.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            for thread in readers:
                await asyncio.to_thread(thread.join, 30)
        elapsed = time.monotonic() - started
        exited = {n: p.returncode for n, p in chain.procs.items()}
        storage: dict[str, Any] = {}
        if all(code is None for code in exited.values()):
            await _quiesce(chain, gate, quiet)
            samples.append(_sample(chain, daemons, time.monotonic() - started, "end"))
            metrics_after = await _metrics(chain, daemons)
            _, body = await chain.api("cdh", "/cdh/status")
            refreshes = _model_key_refreshes(json.loads(body)) - refreshes_before
            if s3 is not None:
                storage = await s3.summary(chain)
        else:
            metrics_after, refreshes = {}, 0
        trustee_requests = {n: {route: c - trustees_before[n].get(route, 0) for route, c in t.faults.counters.items()}
                            for n, t in chain.trustees.items()}
        secrets = chain.secrets() + (s3.secrets() if s3 is not None else [])
        logs = {name: b"".join(p.read_bytes() for p in sorted(chain.logs.glob(f"{name}-*.log"))) for name in daemons}
        secrets_in_logs = [f"{name}: secret #{i}" for name in daemons for i, s in enumerate(secrets) if s in logs[name]]
        log_levels = {name: {lvl: sum(1 for e in chain.log_events(name) if e.get("level") == lvl)
                             for lvl in ("warning", "error", "critical")} for name in daemons}
        persisted = chain.persisted()
        app_requests = chain.app_requests - app_requests_before
    result = SoakResult(
        config=config, daemons=daemons, counts=counts, samples=samples, growth={},
        metrics_before=metrics_before, metrics_after=metrics_after,
        connections={g: metrics_after.get(g, {}).get(_cx_total_key(metrics_after.get(g, {})), 0.0)
                     - metrics_before[g].get(_cx_total_key(metrics_before[g]), 0.0) for g in gateways},
        refreshes=refreshes, trustee_requests=trustee_requests, log_levels=log_levels, persisted=persisted,
        secrets_in_logs=secrets_in_logs, exited=exited, elapsed=elapsed,
        measured_requests=counts.asks_ok + counts.asks_failed - asks_at_baseline, app_requests=app_requests,
        storage=storage)
    result.problems = judge(result)
    return result


def _cx_total_key(metrics: dict[str, float]) -> str:
    return next((k for k in metrics if k.startswith("cx_total{")), "cx_total")


def judge(result: SoakResult) -> list[str]:
    """Every criterion of :data:`CRITERIA` that failed, in words."""
    c, problems = result.counts, []
    for label, value in (("gateway requests failed", c.asks_failed), ("/aa requests failed", c.aa_failed),
                         ("model reads failed", c.read_errors), ("model reads returned wrong bytes", c.read_mismatches),
                         ("resource files differed from the Trustee", c.resource_mismatches)):
        if value:
            problems.append(f"{value} {label}")
    if c.asks_ok == 0 or c.reads == 0 or c.aa_ok == 0:
        problems.append("a load generator did no work (gateway/model/aa ok counts include 0)")
    problems += [f"{name} exited with {code}" for name, code in result.exited.items() if code is not None]
    problems += [f"{name} logged {levels['error'] + levels['critical']} error lines"
                 for name, levels in result.log_levels.items() if levels.get("error") or levels.get("critical")]
    problems += [f"persistent file holds a secret: {hit}" for hit in result.persisted]
    problems += [f"log holds a secret: {hit}" for hit in result.secrets_in_logs]
    if result.config.model_source == "s3" and result.storage:
        download = result.storage.get("download", {})
        if not download.get("complete") or download.get("errors") or not download.get("cache_enabled"):
            problems.append(f"cachefs download from object storage did not complete cleanly: {download}")
        if result.storage.get("failing") or result.storage.get("read_errors"):
            problems.append(f"cachefs reports failing objects/read errors: {result.storage.get('failing')}")
    for name in result.daemons:
        before = error_metrics(result.metrics_before.get(name, {}))
        for key, value in error_metrics(result.metrics_after.get(name, {})).items():
            if value > before.get(key, 0.0):
                problems.append(f"{name}: error metric {key} rose {before.get(key, 0.0):g} -> {value:g}")
    if any(s.phase == "end" for s in result.samples) and any(s.phase == "baseline" for s in result.samples):
        for name in result.daemons:
            result.growth[name] = _growth(result.samples, name)
            problems += result.growth[name].problems(name)
    else:
        problems.append("no quiet baseline/end sample: the run was too short or a daemon exited")
    return problems


# ---------------------------------------------------------------------------- report


def _mib(kib: float) -> str:
    return f"{kib / 1024:+.1f}" if kib < 0 or kib > 0 else "0.0"


def render(result: SoakResult, *, title: str = "Soak run") -> str:
    """The report as Markdown (also readable as plain text)."""
    c, cfg = result.counts, result.config
    source = {"local": "a local ciphertext directory",
              "s3": "moto S3 through the ciphertext cache (fresh at start)"}.get(cfg.model_source, cfg.model_source)
    lines = [f"## {title}", "",
             f"Gateway mode `{cfg.gateway_mode}`; model read from {source}.", "",
             f"{result.elapsed:.0f} s of load, the first {cfg.warmup * cfg.duration:g} s of it warm-up (excluded from "
             f"growth): {cfg.clients} gateway clients, {cfg.readers} model readers, /aa every {cfg.aa_interval:g} s, "
             f"data hub refresh every {cfg.refresh:g} s; {len([s for s in result.samples if s.phase == 'load'])} "
             f"samples every {cfg.sample_interval:g} s.", "",
             "| daemon | RSS after warm-up | RSS at end | growth | 1st half | 2nd half | RSS max | fds base/end/max "
             "| threads base/end |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, g in result.growth.items():
        lines.append(f"| {name} | {g.rss_warm / 1024:.1f} MiB | {g.rss_end / 1024:.1f} MiB | {_mib(g.rss_growth)} MiB "
                     f"| {_mib(g.first_half)} MiB | {_mib(g.second_half)} MiB | {g.rss_max / 1024:.1f} MiB "
                     f"| {g.fds_baseline}/{g.fds_end}/{g.fds_max} | {g.threads_baseline}/{g.threads_end} |")
    conns = ", ".join(f"{g} {int(v)}" for g, v in result.connections.items())
    trustee = "; ".join(f"{n}: " + ", ".join(f"{r} {v}" for r, v in sorted(routes.items()) if v)
                        for n, routes in result.trustee_requests.items())
    lines += ["", "| load | count |", "| --- | --- |",
              f"| gateway requests ok / failed | {c.asks_ok} / {c.asks_failed} |",
              f"| gateway connections accepted (cx_total) | {conns} |",
              f"| requests that reached the app behind the egress | {result.app_requests} |",
              f"| model reads (whole files) / errors / wrong bytes | {c.reads} ({c.whole_file_reads}) / {c.read_errors}"
              f" / {c.read_mismatches} |",
              f"| model bytes read | {c.bytes_read / MIB:.0f} MiB |",
              f"| /aa/token + /aa/evidence ok / failed | {c.aa_ok} / {c.aa_failed} |",
              f"| data hub refreshes (model key) | {result.refreshes} |",
              f"| resource file checks / mismatches | {c.resource_checks} / {c.resource_mismatches} |",
              f"| Trustee requests (re-attestations = auth/attest) | {trustee} |",
              *([f"| object storage GETs: whole run / after the baseline | {result.storage.get('gets')} / "
                 f"{result.storage.get('gets_measured')} |",
                 f"| cachefs download at end (objects, bytes, complete, errors) | "
                 f"{result.storage.get('download', {}).get('objects_done')}, "
                 f"{result.storage.get('download', {}).get('bytes_done')}, "
                 f"{result.storage.get('download', {}).get('complete')}, "
                 f"{result.storage.get('download', {}).get('errors')} |"] if result.storage else []),
              "", "Daemon error metrics (start of load → end), warnings/errors logged:", ""]
    for name in result.daemons:
        before, after = error_metrics(result.metrics_before.get(name, {})), error_metrics(
            result.metrics_after.get(name, {}))
        shown = ", ".join(f"`{k}` {before.get(k, 0):g}→{v:g}" for k, v in sorted(after.items())) or "none exported"
        levels = result.log_levels.get(name, {})
        lines.append(f"- {name}: {shown}; log warning/error lines: {levels.get('warning', 0)}/"
                     f"{levels.get('error', 0) + levels.get('critical', 0)}")
    lines += ["", f"Persistent files holding a secret: {len(result.persisted)}; logs holding a secret: "
              f"{len(result.secrets_in_logs)}.", "", "Criteria:", ""]
    lines += [f"- {text}" for text in CRITERIA]
    lines += ["", f"**Verdict: {'PASS' if result.ok else 'FAIL'}**"]
    lines += [f"- {p}" for p in result.problems]
    if c.errors:
        lines += ["", "First errors:", ""] + [f"- `{e}`" for e in c.errors]
    return "\n".join(lines) + "\n"


def series(result: SoakResult) -> str:
    """RSS/fds per daemon every ~10 % of the run, so the shape (plateau or line) is visible."""
    load = [s for s in result.samples if s.phase == "load"]
    if not load:
        return ""
    step = max(1, len(load) // 10)
    picked = load[::step] + ([load[-1]] if (len(load) - 1) % step else [])
    lines = ["| t (s) | " + " | ".join(f"{n} RSS MiB / fds" for n in result.daemons) + " |",
             "| --- |" + " --- |" * len(result.daemons)]
    for s in picked:
        lines.append(f"| {s.t:.0f} | " + " | ".join(f"{s.stats[n].rss_kb / 1024:.1f} / {s.stats[n].fds}"
                                                   for n in result.daemons) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent gateway client loops")
    parser.add_argument("--readers", type=int, default=2, help="model reader threads")
    parser.add_argument("--refresh", type=float, default=1.0, help="data hub refresh interval, seconds")
    parser.add_argument("--warmup", type=float, default=0.1, help="fraction of the run excluded from growth")
    parser.add_argument("--sample", type=float, default=2.0, help="seconds between samples")
    parser.add_argument("--target-requests", type=int, default=0,
                        help="end the load after this many gateway requests past the warm-up (duration is the cap)")
    parser.add_argument("--gateway-mode", choices=GATEWAY_MODES, default="rats-tls",
                        help="ingress <-> egress protocol (default rats-tls)")
    parser.add_argument("--model-source", choices=("local", "s3"), default="local",
                        help="where cachefs reads the encrypted model: a local directory or moto S3 (default local)")
    parser.add_argument("--report", type=Path, help="write the Markdown report here")
    parser.add_argument("--samples", type=Path, help="write every sample (RSS, fds, threads per daemon) as JSON here")
    parser.add_argument("--workdir", type=Path, help="directory for the chain (default: a temporary one)")
    args = parser.parse_args(argv)
    from agents.logsetup import configure_logging

    configure_logging(level="warning", fmt="console")  # the in-process Trustees log every release at info
    config = SoakConfig(duration=args.duration, clients=args.clients, readers=args.readers, refresh=args.refresh,
                        warmup=args.warmup, sample_interval=args.sample, target_requests=args.target_requests,
                        gateway_mode=args.gateway_mode, model_source=args.model_source)
    with contextlib.ExitStack() as stack:
        root = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cai-soak-")))
        result = asyncio.run(run_soak(root, config, progress=lambda msg: print(msg, flush=True)))
    text = render(result) + "\n" + series(result)
    print(text)
    if args.report:
        header = (f"Machine: {platform.node()} — {os.cpu_count()} cores, Python {platform.python_version()}, "
                  f"{platform.platform()}; run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.\n\n")
        args.report.write_text(header + text)
        print(f"report written to {args.report}")
    if args.samples:
        args.samples.write_text(json.dumps({"config": asdict(config), "samples": [asdict(s) for s in result.samples]}))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
