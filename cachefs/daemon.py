"""``cai cachefs``: mount the decrypted model read-only at MODEL_MOUNT_POINT; ``cai cachefs encrypt``.

Start-up is fail-closed: no key file within the timeout, a wrong password, a malformed volume or
a manifest mismatch ends the process with one error line and nothing mounted. Ready (sd_notify)
is reported only after a ``stat`` of the mount root has gone through the kernel and back.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import sys
import time
from pathlib import Path
from typing import Any

from agents import validators
from agents.config import load_cai_env
from agents.errors import ConfigError
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
MAX_KEY_BYTES = 64 * 1024


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
    Setting("strict", bool, default=False, doc="Refuse all-zero ciphertext blocks (gocryptfs treats them as holes, "
            "which lets whoever holds the ciphertext zero 4 KiB of the model silently)."),
    Setting("manifest_digest", str, doc="sha256:<hex> of the volume's cai-manifest.json (from the encryptor); "
            "when set, files that do not match the manifest are refused.", validator=_digest),
    Setting("manifest_digest_file", str, doc="File holding the manifest digest (e.g. a second resource from the "
            "data hub); used when manifest_digest is unset.", validator=validators.absolute_path),
    Setting("read_ahead_kb", int, default=1024, doc="Kernel read-ahead of the mount in KiB (0 = leave default)."),
    Setting("prefetch_chunks", int, default=8, doc="1 MiB chunks fetched and decrypted ahead of sequential "
            "readers on remote sources (0 = off)."),
    Setting("allow_other", bool, default=True, doc="Let other users (the inference server) see the mount."),
    Setting("cache_dir", str, doc="On-disk ciphertext cache for object storage (ciphertext only).",
            validator=validators.absolute_path),
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
    return settings, env


def build_source(settings: dict[str, Any], env: dict[str, Any]) -> CiphertextSource:
    """Local directory if ``cipher_dir`` is set, else the object store from cai.env (imported lazily)."""
    if settings["cipher_dir"]:
        from cachefs.sources.local import LocalDirSource

        return LocalDirSource(settings["cipher_dir"])
    if not env.get("MODEL_OSS_BUCKET_PATH"):
        raise ConfigError("no ciphertext source: set cipher_dir in [cachefs] (CAI_CACHEFS_CIPHER_DIR) or "
                          "MODEL_OSS_BUCKET_PATH and MODEL_OSS_ENDPOINT in cai.env")
    from cachefs.sources.object_store import ObjectStoreSource

    source: CiphertextSource = ObjectStoreSource.from_cai_env(env)
    if settings["cache_dir"]:
        source = _with_ciphertext_cache(source, settings["cache_dir"])
    return source


def _with_ciphertext_cache(source: CiphertextSource, cache_dir: str) -> CiphertextSource:
    """Wrap with the on-disk ciphertext cache (``cachefs/cache.py``): restarts do not re-download."""
    from cachefs.cache import CachedSource

    return CachedSource(source, cache_dir)


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


async def serve(settings: dict[str, Any], env: dict[str, Any]) -> int:
    from cachefs.mount import prepare_mount_point, run_mount
    from cachefs.volume import open_volume

    _tune_malloc()
    mountpoint = settings["mount_point"]
    async with Lifecycle("cachefs") as lifecycle:
        source = build_source(settings, env)
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
            volume = await open_volume(source, secret, where=settings["key_file"])
            start_download = getattr(source, "start_download", None)
            if start_download is not None:
                start_download()  # lazy mode: serve now, fill the ciphertext cache in the background
            del secret, first_line
            manifest = await _load_manifest(source, settings)
            ops = CachefsOperations(volume, FsOptions(
                plaintext_cache_bytes=settings["plaintext_cache_mb"] << 20, strict=settings["strict"],
                prefetch_chunks=0 if hasattr(source, "open_fd") else settings["prefetch_chunks"]), manifest)
            await asyncio.to_thread(prepare_mount_point, mountpoint)

            def ready() -> None:
                lifecycle.mark_ready(f"serving {source.name} at {mountpoint}")
                log.info("cachefs.ready", mount_point=mountpoint, source=source.name,
                         files=sum(1 for n in volume.tree.nodes.values() if n.kind == "file"),
                         strict=settings["strict"], manifest=manifest is not None,
                         startup_s=round(time.monotonic() - started, 3))

            await run_mount(ops, mountpoint, allow_other=settings["allow_other"],
                            read_ahead_kb=settings["read_ahead_kb"], on_ready=ready, stop=lifecycle.wait_stopped)
            lifecycle.request_stop("unmounted")
        finally:
            await source.close()
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
