"""``cai cachefs``: mount the decrypted model read-only at MODEL_MOUNT_POINT; ``cai cachefs encrypt``.

Start-up is fail-closed: no key file within the timeout, a wrong password, a malformed volume or
a manifest mismatch ends the process with one error line and nothing mounted. Ready (sd_notify,
``/readyz``) is reported only after a ``stat`` of the mount root has gone through the kernel and back.

Object storage goes through the on-disk ciphertext cache (``cachefs/cache.py``). In the default
**lazy** mode the volume is mounted as soon as its metadata is read and the rest is downloaded in
the background (reads of missing ranges fetch them first); **eager** mode downloads everything
before mounting. The health API (``cachefs/api.py``) listens on a Unix socket from the start, so
"waiting for the key" and download progress are visible before the mount exists.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import sys
import time
from pathlib import Path
from typing import Any

from agents import peercred, validators
from agents.config import load_cai_env
from agents.errors import ConfigError
from agents.health import HealthState, Metrics
from agents.lifecycle import Lifecycle, run
from agents.logsetup import configure_logging, get_logger, register_secret
from agents.sections import load_section
from agents.settings import Setting
from cachefs.errors import CachefsError
from cachefs.fs import CachefsOperations, FsOptions
from cachefs.manifest import MANIFEST_NAME, check_digest, parse_manifest
from cachefs.sources.base import CiphertextSource

log = get_logger("cachefs")

DEFAULT_KEY_FILE = "/run/cai/resources/model-key"
DEFAULT_SOCKET = "/run/cai/cachefs.sock"
DEFAULT_CACHE_DIR = "/var/cache/cai/cachefs"
MAX_KEY_BYTES = 64 * 1024
PROBE_TIMEOUT = 10.0


def _digest(value: str) -> str:
    return check_digest(value)


CACHEFS_SETTINGS: tuple[Setting, ...] = (
    Setting("mount_point", str, doc="Where the plaintext appears; default MODEL_MOUNT_POINT from cai.env.",
            validator=validators.absolute_path),
    Setting("cipher_dir", str, doc="Local gocryptfs cipher directory (PVC/host path). Unset: object storage "
            "from MODEL_OSS_BUCKET_PATH / MODEL_OSS_ENDPOINT.", validator=validators.absolute_path),
    Setting("key_file", str, default=DEFAULT_KEY_FILE, doc="File holding the volume password (written by the "
            "data hub); the first line is the password, as with gocryptfs -passfile.",
            validator=validators.absolute_path),
    Setting("key_wait_timeout", float, default=300.0, doc="Seconds to wait for the key file before failing closed."),
    Setting("plaintext_cache_mb", int, default=256, doc="Bound of the in-memory decrypted-chunk cache (MiB). "
            "Plaintext is never written to disk."),
    Setting("decrypt_engine", str, default="auto", choices=("auto", "native", "python"),
            doc="Block decryption: auto (the native OpenSSL batch accelerator when it is built and passes its "
            "self-test, else pure Python), native (fail if unavailable) or python."),
    Setting("strict", bool, default=False, doc="Refuse all-zero ciphertext blocks (gocryptfs treats them as holes, "
            "which lets whoever holds the ciphertext zero 4 KiB of the model silently)."),
    Setting("manifest_digest", str, doc="sha256:<hex> of the volume's cai-manifest.json (from the encryptor); "
            "when set, files that do not match the manifest are refused.", validator=_digest),
    Setting("manifest_digest_file", str, doc="File holding the manifest digest (e.g. a second resource from the "
            "data hub); used when manifest_digest is unset.", validator=validators.absolute_path),
    Setting("read_timeout", float, default=60.0, doc="Seconds a read may wait for ciphertext from object storage "
            "before the application gets EIO (the fetch goes on in the background; a retried read can succeed).",
            validator=validators.seconds_up_to(3600)),
    Setting("read_ahead_kb", int, default=1024, doc="Kernel read-ahead of the mount in KiB (0 = leave default)."),
    Setting("prefetch_chunks", int, default=8, doc="1 MiB chunks fetched and decrypted ahead of sequential "
            "readers on remote sources (0 = off)."),
    Setting("allow_other", bool, default=True, doc="Let other users (the inference server) see the mount."),
    Setting("cache_dir", str, default=DEFAULT_CACHE_DIR, doc="On-disk ciphertext cache for object storage "
            "(ciphertext only; a restart reuses it instead of downloading again).",
            validator=validators.absolute_path),
    Setting("cache_recheck_interval", float, default=30.0, doc="After the cache disk filled up: seconds between "
            "checks whether the rest of the volume fits again; caching then resumes without a restart.",
            validator=validators.seconds_up_to(3600)),
    Setting("download_mode", str, default="lazy", choices=("lazy", "eager"), doc="Object storage: 'lazy' mounts "
            "once the volume's metadata is read and downloads the rest in the background (reads of missing "
            "ranges are fetched first); 'eager' downloads the whole volume before mounting."),
    Setting("download_concurrency", int, default=4, doc="Objects downloaded in parallel in the background."),
    Setting("download_run_mb", int, default=0, doc="Split objects larger than this into parallel ranged GETs "
            "(MiB; 0 = one streamed GET per object, fastest unless one connection is slower than the link)."),
    Setting("oss_addressing", str, default="auto", choices=("auto", "virtual", "path"), doc="Bucket addressing: "
            "virtual-hosted (OSS, AWS), path style (MinIO, loopback servers) or auto (by endpoint name)."),
    Setting("oss_region", str, doc="SigV4 region; default: inferred from the OSS/AWS endpoint, else us-east-1."),
    Setting("oss_allow_http", bool, doc="Allow a plain-http endpoint that is not loopback (credentials and "
            "listings would travel unencrypted)."),
    Setting("socket", str, default=DEFAULT_SOCKET, doc="Unix socket of the health API (/healthz /livez /readyz "
            "/metrics /status); empty = off.", validator=lambda v: v if not v else validators.absolute_path(v)),
    Setting("socket_mode", str, default="0660", doc="Permissions of the health API socket (octal)."),
    Setting(peercred.SETTING, list, None, peercred.SETTING_DOC, validator=peercred.validate_allowed_peers),
    Setting("health_port", int, doc="Also serve the health API on 127.0.0.1:<port> (unset = off)."),
    Setting("log_level", str, default="info", doc="Log level.", choices=("debug", "info", "warning", "error")),
    Setting("log_format", str, default="json", doc="Log format.", choices=("json", "console")),
)


class SamUnsupportedError(ConfigError):
    """MODEL_ENCRYPTION_METHOD=sam."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    enc = sub.add_parser("encrypt", help="encrypt a directory into a gocryptfs-compatible volume",
                         description="Write a gocryptfs v2 volume (default flags) that real gocryptfs mounts.")
    enc.add_argument("src", help="plaintext directory")
    enc.add_argument("dst", help="new or empty cipher directory")
    enc.add_argument("--passfile", required=True, help="file whose first line is the password")
    enc.add_argument("--scryptn", type=int, default=16, help="log2 of scrypt N (default 16, as gocryptfs)")
    enc.add_argument("--manifest", action="store_true",
                     help=f"also write {MANIFEST_NAME} and print its digest (store it in Trustee)")
    parser.add_argument("--config", metavar="FILE", help="TOML/JSON config file with a [cachefs] section")
    parser.add_argument("--env-file", metavar="FILE", help="cai.env file")
    parser.add_argument("--mount-point", help="mount point (default MODEL_MOUNT_POINT)")
    parser.add_argument("--cipher-dir", help="local cipher directory instead of object storage")
    parser.add_argument("--key-file", help=f"password file (default {DEFAULT_KEY_FILE})")
    parser.add_argument("--strict", action="store_true", default=None, help="refuse all-zero (hole) blocks")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--log-format", choices=("json", "console"))


def load_settings(args: argparse.Namespace, environ: dict[str, str] | None = None) -> tuple[dict[str, Any], dict]:
    env = load_cai_env(environ=environ, env_file=getattr(args, "env_file", None))
    if env.get("MODEL_ENCRYPTION_METHOD") == "sam":
        raise SamUnsupportedError("MODEL_ENCRYPTION_METHOD=sam: the Sam format is not supported (not public)",
                                  hint="encrypt the model with gocryptfs (or cai cachefs encrypt) and set "
                                       "MODEL_ENCRYPTION_METHOD=gocryptfs")
    overrides = {"mount_point": getattr(args, "mount_point", None), "cipher_dir": getattr(args, "cipher_dir", None),
                 "key_file": getattr(args, "key_file", None), "strict": getattr(args, "strict", None),
                 "log_level": getattr(args, "log_level", None), "log_format": getattr(args, "log_format", None)}
    settings = load_section("cachefs", CACHEFS_SETTINGS, config_file=getattr(args, "config", None),
                            environ=environ, overrides=overrides)
    if not settings["mount_point"]:
        settings["mount_point"] = env.get("MODEL_MOUNT_POINT")
    if not settings["mount_point"]:
        raise ConfigError("no mount point: set MODEL_MOUNT_POINT in cai.env or mount_point in [cachefs]")
    if settings["plaintext_cache_mb"] < 1 or settings["read_ahead_kb"] < 0 or settings["prefetch_chunks"] < 0:
        raise ConfigError("[cachefs] plaintext_cache_mb must be >= 1, read_ahead_kb and prefetch_chunks >= 0")
    if not 1 <= settings["download_concurrency"] <= 64 or settings["download_run_mb"] < 0:
        raise ConfigError("[cachefs] download_concurrency must be within 1..64 and download_run_mb >= 0")
    if settings["health_port"] is not None and not 0 <= settings["health_port"] <= 65535:
        raise ConfigError(f"[cachefs] health_port {settings['health_port']} is not a TCP port")
    try:
        settings["socket_mode"] = int(settings["socket_mode"], 8)
    except ValueError:
        raise ConfigError(f"[cachefs] socket_mode {settings['socket_mode']!r} is not an octal mode like 0660") from None
    return settings, env


def build_source(settings: dict[str, Any], env: dict[str, Any], metrics: Metrics | None = None) -> CiphertextSource:
    """Local directory if ``cipher_dir`` is set, else the object store from cai.env behind the
    ciphertext cache (imported lazily: a local volume needs neither obstore nor the cache)."""
    if settings["cipher_dir"]:
        from cachefs.sources.local import LocalDirSource

        return LocalDirSource(settings["cipher_dir"])
    if not env.get("MODEL_OSS_BUCKET_PATH"):
        raise ConfigError("no ciphertext source: set cipher_dir in [cachefs] (CAI_CACHEFS_CIPHER_DIR) or "
                          "MODEL_OSS_BUCKET_PATH and MODEL_OSS_ENDPOINT in cai.env")
    from cachefs.cache import CachedSource
    from cachefs.sources.object_store import ObjectStoreSource

    source = ObjectStoreSource.from_cai_env(env, addressing=settings["oss_addressing"],
                                            region=settings["oss_region"], allow_http=settings["oss_allow_http"])
    run_mb = settings["download_run_mb"]
    return CachedSource(source, settings["cache_dir"], metrics=metrics,
                        download_concurrency=settings["download_concurrency"],
                        max_fetch_bytes=(run_mb << 20) if run_mb else None,
                        recheck_interval=settings["cache_recheck_interval"])


async def wait_for_key(path: str, timeout: float, stop: asyncio.Event) -> bytes:
    """Poll for the key file (the data hub writes it atomically); fail closed after ``timeout``."""
    deadline = time.monotonic() + timeout
    announced = False
    while True:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_KEY_BYTES + 1)
            if len(data) > MAX_KEY_BYTES:
                raise CachefsError(f"key file {path} is larger than {MAX_KEY_BYTES} bytes")
            if data:
                return data
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise CachefsError(f"cannot read key file {path}: {exc.strerror}") from None
        if not announced:
            log.info("cachefs.waiting_for_key", key_file=path, timeout=timeout)
            announced = True
        if time.monotonic() >= deadline:
            raise CachefsError(f"key file {path} did not appear within {timeout:g} s; not mounting",
                               hint="check the data hub (cai cdh) and that Trustee released the model key")
        if stop.is_set():
            raise asyncio.CancelledError
        await asyncio.sleep(0.2)


def _tune_malloc() -> None:
    """Keep 1 MiB chunk buffers on the heap: mmap/munmap per chunk halved throughput in measurements."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


async def _load_manifest(source: CiphertextSource, settings: dict[str, Any]) -> dict | None:
    digest = settings["manifest_digest"]
    if not digest and settings["manifest_digest_file"]:
        try:
            digest = check_digest(Path(settings["manifest_digest_file"]).read_text())
        except (OSError, ValueError) as exc:
            raise CachefsError(f"cannot use manifest digest file {settings['manifest_digest_file']}: {exc}") from None
    if not digest:
        return None
    from cachefs.sources.base import SourceError

    try:
        data = await source.read_all(MANIFEST_NAME)
    except SourceError as exc:
        raise CachefsError(f"a manifest digest is configured but {MANIFEST_NAME} cannot be read: {exc}",
                           hint="upload cai-manifest.json with the volume, or unset manifest_digest") from None
    manifest = parse_manifest(data, digest, f"{source.name}/{MANIFEST_NAME}")
    log.info("cachefs.manifest_verified", files=len(manifest))
    return manifest


class _MountProbe:
    """``/readyz``'s live check: ``stat`` the mount root through the kernel, one probe at a time.

    The stat runs in a thread (the FUSE handlers answering it run on this event loop). A probe
    that hangs (a wedged mount) is never duplicated, so it cannot eat the worker threads.
    """

    def __init__(self, mountpoint: str, health: HealthState) -> None:
        self.mountpoint = mountpoint
        self.health = health
        self.mounted = False
        self.recovered_stale = False  # this start cleared a mount a crashed predecessor left behind
        self.ops: CachefsOperations | None = None
        self._running: asyncio.Task[None] | None = None

    async def __call__(self) -> None:
        if not self.mounted:
            return
        if self._running is None or self._running.done():
            self._running = asyncio.ensure_future(self._probe())
        try:
            await asyncio.wait_for(asyncio.shield(self._running), PROBE_TIMEOUT)
        except TimeoutError:
            self.health.set_check("mount", False, f"{self.mountpoint} did not answer a stat within "
                                                  f"{PROBE_TIMEOUT:g} s")

    async def _probe(self) -> None:
        from cachefs.mount import probe_mount

        try:
            await asyncio.to_thread(probe_mount, self.mountpoint)
        except (OSError, CachefsError) as exc:
            detail = getattr(exc, "strerror", None) or str(exc)
            self.health.set_check("mount", False, f"{self.mountpoint} does not answer: {detail}")
        else:
            self.health.set_check("mount", True, f"serving at {self.mountpoint}")


def _status(settings: dict[str, Any], source: CiphertextSource, probe: _MountProbe) -> dict[str, Any]:
    """``/status``: where the volume comes from, whether it is mounted, and download progress."""
    from cachefs.api import download_status

    out: dict[str, Any] = {"source": source.name, "mount_point": settings["mount_point"], "mounted": probe.mounted,
                           "stale_mount_recovered": probe.recovered_stale}
    if probe.ops is not None:
        # Files whose reads fail right now (EIO): the ciphertext object and the cause, so an operator
        # can tell "object storage unreachable" from "tampered block" without reading logs.
        out["read_errors"] = probe.ops.read_errors
        out["failing"] = [{"object": f.file, "error": f.error, "failed_reads": f.count}
                          for f in probe.ops.failing_now()[:10]]
    progress = getattr(source, "progress", None)
    if progress is not None:
        task = getattr(source, "_download", None)
        errors = getattr(source, "download_errors", [])
        out["mode"] = settings["download_mode"]
        reason = getattr(source, "passthrough_reason", None)  # e.g. "disk full in <cache_dir>"
        out["download"] = download_status(
            progress, passthrough_reason=reason, errors=len(errors),
            complete=bool(getattr(source, "complete", False)), running=task is not None and not task.done())
        out["cache_problem"] = reason
    return out


async def _start_health_api(settings: dict[str, Any], app: Any, metrics: Metrics) -> list[Any]:
    from agents.http import bound_port, start_site

    runners = []
    try:
        if settings["socket"]:
            guard = peercred.guard_from_settings(settings, section="cachefs", metrics=metrics, logger=log)
            runners.append(await start_site(app, unix_path=settings["socket"], socket_mode=settings["socket_mode"],
                                            peer_guard=guard))
        port = None
        if settings["health_port"] is not None:
            runners.append(await start_site(app, host="127.0.0.1", port=settings["health_port"]))
            port = bound_port(runners[-1])
        log.info("cachefs.health_api", socket=settings["socket"] or None, port=port)
    except BaseException:
        for runner in runners:
            await runner.cleanup()
        raise
    return runners


async def _background_download(source: Any) -> None:
    """Lazy mode: fill the cache while serving; failures were logged per object and reads retry them."""
    await source.start_download()
    if source.download_errors:
        log.warning("cachefs.download_incomplete", failed=len(source.download_errors),
                    hint="reads of the missing ranges fetch them on demand; restart to retry the rest")
    elif source.passthrough_reason is None:
        log.info("cachefs.download_complete", source=source.name, bytes=source.progress.total_bytes)


async def _until_stopped(coro: Any, stop: asyncio.Event) -> bool:
    """Run ``coro`` unless a stop is requested first; True if it completed."""
    task = asyncio.ensure_future(coro)
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        stopper.cancel()
        raise
    stopper.cancel()
    if task.done():
        task.result()
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


async def serve(settings: dict[str, Any], env: dict[str, Any]) -> int:
    from cachefs.api import build_app
    from cachefs.mount import prepare_mount_point, run_mount
    from cachefs.volume import open_volume

    _tune_malloc()
    mountpoint = settings["mount_point"]
    health, metrics = HealthState(), Metrics()
    probe = _MountProbe(mountpoint, health)
    async with Lifecycle("cachefs") as lifecycle:
        source = build_source(settings, env, metrics)
        cached = hasattr(source, "start_download")
        health.set_check("mount", False, "waiting for the key file")
        runners = await _start_health_api(settings, build_app(health, metrics, lambda: _status(settings, source, probe),
                                                               probe), metrics)
        health.mark_started()
        try:
            try:
                secret = await wait_for_key(settings["key_file"], settings["key_wait_timeout"], lifecycle.stop_event)
            except asyncio.CancelledError:
                return 0
            first_line = secret.split(b"\n", 1)[0]
            for form in (secret, first_line):
                try:
                    register_secret(form.decode("utf-8"))
                except (UnicodeDecodeError, ValueError):
                    pass
            started = time.monotonic()
            health.set_check("mount", False, "reading the volume")
            volume = await open_volume(source, secret, where=settings["key_file"])
            del secret, first_line
            manifest = await _load_manifest(source, settings)
            if cached and settings["download_mode"] == "eager":
                health.set_check("mount", False, "downloading the volume (eager mode)")
                log.info("cachefs.downloading", source=source.name, mode="eager")
                if not await _until_stopped(source.download_all(), lifecycle.stop_event):  # type: ignore[attr-defined]
                    return 0
            ops = CachefsOperations(volume, FsOptions(
                plaintext_cache_bytes=settings["plaintext_cache_mb"] << 20, strict=settings["strict"],
                decrypt_engine=settings["decrypt_engine"],
                prefetch_chunks=0 if hasattr(source, "open_fd") else settings["prefetch_chunks"],
                read_timeout=settings["read_timeout"]), manifest)
            ops.on_read_error = metrics.counter(
                "cachefs_read_errors_total", "Reads answered with EIO (ciphertext unavailable or not authentic).").inc
            probe.ops = ops
            mounted = metrics.gauge("cachefs_mounted", "1 while the volume is mounted at the mount point.")
            probe.recovered_stale = await asyncio.to_thread(prepare_mount_point, mountpoint)
            if probe.recovered_stale:
                metrics.counter("cachefs_stale_mounts_recovered_total",
                                "Stale mounts left by a crashed cachefs that this start cleared.").inc()
            health.set_check("mount", False, "mounting")

            def ready() -> None:
                probe.mounted = True
                mounted.set(1)
                health.set_check("mount", True, f"serving at {mountpoint}")
                lifecycle.mark_ready(f"serving {source.name} at {mountpoint}")
                log.info("cachefs.ready", mount_point=mountpoint, source=source.name,
                         files=sum(1 for n in volume.tree.nodes.values() if n.kind == "file"),
                         strict=settings["strict"], manifest=manifest is not None,
                         mode=settings["download_mode"] if cached else "local",
                         startup_s=round(time.monotonic() - started, 3))
                if cached and settings["download_mode"] == "lazy":
                    lifecycle.spawn(_background_download(source), name="cachefs-download")

            try:
                await run_mount(ops, mountpoint, allow_other=settings["allow_other"],
                                read_ahead_kb=settings["read_ahead_kb"], on_ready=ready, stop=lifecycle.wait_stopped)
            finally:
                probe.mounted = False
                mounted.set(0)
                health.set_check("mount", False, "unmounted")
            lifecycle.request_stop("unmounted")
        finally:
            await source.close()
            for runner in reversed(runners):
                await runner.cleanup()
    return 0


def encrypt_main(args: argparse.Namespace) -> int:
    from cachefs.encryptor import encrypt_directory

    configure_logging(level="warning", fmt="console", service="cachefs")
    try:
        secret = Path(args.passfile).read_bytes()
    except OSError as exc:
        print(f"cai cachefs encrypt: cannot read passfile {args.passfile}: {exc.strerror}", file=sys.stderr)
        return 1
    if not 10 <= args.scryptn <= 22:
        print("cai cachefs encrypt: --scryptn must be in 10..22", file=sys.stderr)
        return 2
    try:
        result = encrypt_directory(Path(args.src), Path(args.dst), secret, scrypt_n=1 << args.scryptn,
                                   manifest=args.manifest)
    except (CachefsError, OSError) as exc:
        print(f"cai cachefs encrypt: {exc}", file=sys.stderr)
        return 1
    print(f"encrypted {result.files} files, {result.dirs} directories, {result.symlinks} symlinks "
          f"({result.plain_bytes} bytes) into {args.dst}")
    for path in result.skipped:
        print(f"skipped (not a file, directory or symlink): {path}", file=sys.stderr)
    if result.manifest_digest:
        print(f"manifest digest: {result.manifest_digest}")
    return 0


def main(args: argparse.Namespace) -> int:
    if getattr(args, "action", None) == "encrypt":
        return encrypt_main(args)
    os.umask(0o077)

    async def amain() -> int:
        settings, env = load_settings(args)
        configure_logging(level=settings["log_level"], fmt=settings["log_format"], service="cachefs")
        return await serve(settings, env)

    return run(amain)
