"""Ciphertext from S3-API object storage (Alibaba OSS, AWS S3, MinIO, moto) through obstore.

obstore is a maintained, Rust-backed client (Apache Arrow's ``object_store``): ranged GETs run
off the GIL with their own connection pool, timeouts and bounded retries, so this module only
translates the cai.env contract into an ``S3Store`` and the store's answers into
:class:`~cachefs.sources.base.SourceEntry` values and :class:`SourceError`\\ s.

Decisions worth knowing:

* **Addressing style.** OSS accepts only virtual-hosted-style requests (``https://<bucket>.<endpoint>/key``);
  MinIO, moto and other loopback servers usually want path style (``<endpoint>/<bucket>/key``).
  ``auto`` picks virtual-hosted for ``*.aliyuncs.com`` and ``*.amazonaws.com`` and path style for
  everything else (IP literals, ``localhost``, private S3 servers); set it explicitly otherwise.
* **Region** (part of the SigV4 signature) is inferred from OSS/AWS endpoint names
  (``oss-cn-hangzhou.aliyuncs.com`` → ``cn-hangzhou``) unless configured.
* **Anonymous access.** Without credentials the store does not sign (``skip_signature``): public-read
  buckets. Credentials are all-or-nothing (key id + secret, optional STS token) and are registered
  for log redaction before anything can log them.
* **Plain HTTP** is refused unless the endpoint is loopback (tests, a local gateway) or
  ``allow_http=True`` is set explicitly: ciphertext is authenticated by gocryptfs, but listings and
  credentials are not.
* **Consistency.** Every ranged GET carries ``If-Match: <etag from the listing>``, so an object
  replaced while we run fails loudly instead of mixing two versions' blocks.
* **Directories** are implied by key prefixes (object stores have none); zero-byte "directory
  marker" objects are folded into the directory of the same name.
* **Symlinks.** S3 has none, and uploaders (``ossutil cp -r``, ``aws s3 cp``) cannot upload a
  gocryptfs symlink (its target is an encrypted name that does not exist locally). cachefs therefore
  uses one explicit convention: a **zero-byte object with user metadata ``cai-symlink-target``**
  (``x-amz-meta-cai-symlink-target`` on S3, ``x-oss-meta-cai-symlink-target`` on OSS) whose value is the
  gocryptfs *ciphertext* link target. Zero-byte objects are HEADed once at listing time to find them
  (gocryptfs volumes have few empty files). OSS-native symlink objects (``PutSymlink``) are served by
  the S3 API as a copy of their target and therefore appear as regular files.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal
from urllib.parse import urlsplit

import obstore
from obstore.store import S3Store

from agents.errors import ConfigError
from agents.logsetup import get_logger, register_secret
from cachefs.sources.base import CiphertextSource, SourceEntry, SourceError

__all__ = [
    "SYMLINK_METADATA_KEY",
    "Addressing",
    "ObjectChangedError",
    "ObjectStoreConfig",
    "ObjectStoreError",
    "ObjectStoreSource",
    "ShortReadError",
    "build_tree",
    "parse_bucket_path",
    "store_options",
]

log = get_logger("cachefs.sources.object_store")

Addressing = Literal["auto", "virtual", "path"]

SYMLINK_METADATA_KEY = "cai-symlink-target"
# A gocryptfs symlink target is an encrypted, base64-encoded path; PATH_MAX bounds the plaintext.
MAX_SYMLINK_TARGET = 8192
MAX_OBJECTS = 2_000_000
_HEAD_CONCURRENCY = 16
_VIRTUAL_HOSTED_SUFFIXES = (".aliyuncs.com", ".amazonaws.com")
_OSS_REGION = re.compile(r"(?:^|\.)oss-([a-z0-9-]+?)(?:-internal)?\.aliyuncs\.com$")
_AWS_REGION = re.compile(r"(?:^|\.)s3[.-]([a-z0-9-]+)\.amazonaws\.com$")
_STATUS = re.compile(r"status code: (\d{3})")


class ObjectStoreError(SourceError):
    """Object storage refused or failed a request; ``transient`` says whether retrying may help."""

    def __init__(self, message: str, *, hint: str | None = None, transient: bool = False) -> None:
        super().__init__(message, hint=hint)
        self.transient = transient


class ShortReadError(ObjectStoreError):
    """The server sent fewer bytes than the range it promised (a dropped or truncated body)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint, transient=True)


class ObjectChangedError(ObjectStoreError):
    """An object's ETag no longer matches the listing: the volume was modified under us."""


# -- pure configuration helpers ----------------------------------------------------------------


def parse_bucket_path(value: str) -> tuple[str, str]:
    """Split ``<bucket>:<path>`` (cai.env ``MODEL_OSS_BUCKET_PATH``) into bucket and key prefix.

    The prefix comes back without leading/trailing slashes ("" for the bucket root), which is
    what obstore's ``prefix=`` expects; the format itself is validated by ``agents.validators``.
    """
    from agents.validators import oss_bucket_path

    try:
        oss_bucket_path(value)
    except ValueError as exc:
        raise ConfigError(f"MODEL_OSS_BUCKET_PATH: {exc}", hint="use <bucket>:<path>, e.g. conf-ai:/model/") from None
    bucket, _, path = value.partition(":")
    segments = [s for s in path.split("/") if s]
    if any(s == "." for s in segments):
        raise ConfigError(f"MODEL_OSS_BUCKET_PATH: object path {path!r} must not contain '.' segments")
    return bucket, "/".join(segments)


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def infer_region(host: str) -> str | None:
    """The SigV4 region implied by an OSS or AWS endpoint host name, if any."""
    host = host.lower()
    match = _OSS_REGION.search(host)
    if match:
        return match.group(1)
    match = _AWS_REGION.search(host)
    if match:
        return match.group(1)
    return None


def _resolve_addressing(host: str, addressing: Addressing) -> Literal["virtual", "path"]:
    if addressing != "auto":
        return addressing
    return "virtual" if host.lower().endswith(_VIRTUAL_HOSTED_SUFFIXES) else "path"


@dataclass(frozen=True)
class ObjectStoreConfig:
    """Everything needed to reach one volume in one bucket; secrets are hidden from ``repr``."""

    bucket: str
    prefix: str
    endpoint: str
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    addressing: Addressing = "auto"
    region: str | None = None
    allow_http: bool | None = None
    connect_timeout: float = 5.0
    request_timeout: float = 120.0
    max_retries: int = 3
    retry_timeout: float = 60.0
    max_objects: int = MAX_OBJECTS
    proxy_url: str | None = None

    @property
    def anonymous(self) -> bool:
        return self.access_key_id is None

    @property
    def location(self) -> str:
        """``s3://bucket/prefix`` — safe to log, used in every error message."""
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")


def _endpoint_url(endpoint: str) -> tuple[str, str, str]:
    """Return (scheme, host, netloc) of an endpoint given as a URL or a bare host[:port]."""
    raw = endpoint.strip()
    if not raw:
        raise ConfigError("MODEL_OSS_ENDPOINT is empty", hint="set it to e.g. oss-cn-hangzhou.aliyuncs.com")
    if "://" not in raw:
        raw = "https://" + raw
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"MODEL_OSS_ENDPOINT {endpoint!r} is not an http(s) URL or host name")
    if parts.username or parts.password:
        raise ConfigError("MODEL_OSS_ENDPOINT must not embed credentials", hint="use MODEL_OSS_ACCESS_KEY_ID/…")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(
            f"MODEL_OSS_ENDPOINT {endpoint!r} must not have a path or query",
            hint="put the bucket and path in MODEL_OSS_BUCKET_PATH",
        )
    return parts.scheme, parts.hostname.lower(), parts.netloc.lower()


def store_options(config: ObjectStoreConfig) -> dict[str, Any]:
    """Pure: the keyword arguments for ``obstore.store.S3Store`` (raises ConfigError on bad config).

    Kept separate from the network code so every policy decision (addressing, HTTP, anonymity,
    region, timeouts) is unit-tested without a server.
    """
    scheme, host, netloc = _endpoint_url(config.endpoint)
    if scheme == "http":
        if config.allow_http is False or (config.allow_http is None and not _is_loopback(host)):
            raise ConfigError(
                f"refusing plain-http object-storage endpoint {scheme}://{netloc}",
                hint="use https, or set allow_http explicitly (loopback endpoints are allowed by default)",
            )
    if (config.access_key_id is None) != (config.secret_access_key is None):
        raise ConfigError(
            "object-storage credentials are incomplete: set both MODEL_OSS_ACCESS_KEY_ID and "
            "MODEL_OSS_SECRET_ACCESS_KEY, or neither for a public-read bucket"
        )
    if config.session_token is not None and config.access_key_id is None:
        raise ConfigError("MODEL_OSS_SESSION_TOKEN is set without MODEL_OSS_ACCESS_KEY_ID/SECRET_ACCESS_KEY")
    for name, value in (("connect_timeout", config.connect_timeout), ("request_timeout", config.request_timeout),
                        ("retry_timeout", config.retry_timeout)):
        if not value > 0:
            raise ConfigError(f"object-storage {name} must be positive, not {value!r}")
    if not 0 <= config.max_retries <= 20:
        raise ConfigError(f"object-storage max_retries must be within 0..20, not {config.max_retries!r}")

    style = _resolve_addressing(host, config.addressing)
    if style == "virtual":
        if _is_loopback(host) or host.replace(".", "").isdigit() or ":" in host:
            raise ConfigError(
                f"virtual-hosted-style addressing needs a DNS endpoint name, not {netloc}",
                hint="use addressing='path' for IP or localhost endpoints",
            )
        if not netloc.startswith(config.bucket + "."):
            netloc = f"{config.bucket}.{netloc}"
    endpoint = f"{scheme}://{netloc}"
    region = config.region or infer_region(host) or "us-east-1"
    options: dict[str, Any] = {
        "endpoint": endpoint,
        "region": region,
        "virtual_hosted_style_request": style == "virtual",
        "client_options": {
            "allow_http": scheme == "http",
            "connect_timeout": timedelta(seconds=config.connect_timeout),
            "timeout": timedelta(seconds=config.request_timeout),
            "http1_only": True,
        },
        "retry_config": {
            "max_retries": config.max_retries,
            "retry_timeout": timedelta(seconds=config.retry_timeout),
            "backoff": {"init_backoff": timedelta(milliseconds=100), "max_backoff": timedelta(seconds=5), "base": 2},
        },
    }
    if config.proxy_url:
        options["client_options"]["proxy_url"] = config.proxy_url
    if config.prefix:
        options["prefix"] = config.prefix
    if config.anonymous:
        options["skip_signature"] = True
    else:
        options["access_key_id"] = config.access_key_id
        options["secret_access_key"] = config.secret_access_key
        if config.session_token is not None:
            options["session_token"] = config.session_token
    return options


def _check_key(path: str, where: str) -> str:
    segments = path.split("/")
    if not path or any(s in ("", ".", "..") for s in segments) or "\x00" in path:
        raise ObjectStoreError(
            f"object key {path!r} under {where} is not a valid relative path",
            hint="the volume prefix must contain only a gocryptfs cipher directory",
        )
    return path


def build_tree(objects: Iterable[tuple[str, int, str | None]], where: str = "the bucket") -> list[SourceEntry]:
    """Pure: turn ``(key, size, etag)`` listing rows into files plus the directories they imply.

    A zero-byte object whose key is also a prefix of other keys is a directory marker and is
    folded into that directory; a non-empty one is an error (it cannot be both).
    Entries come back sorted by path, parents before children.
    """
    files: dict[str, tuple[int, str | None]] = {}
    dirs: set[str] = set()
    for key, size, etag in objects:
        _check_key(key, where)
        if size < 0:
            raise ObjectStoreError(f"object {key!r} under {where} reports a negative size {size}")
        if key in files:
            raise ObjectStoreError(f"object {key!r} is listed twice under {where}")
        files[key] = (size, etag)
        parts = key.split("/")
        for i in range(1, len(parts)):
            dirs.add("/".join(parts[:i]))
    entries: list[SourceEntry] = [SourceEntry(path=d, kind="dir", size=0) for d in dirs]
    for key, (size, etag) in files.items():
        if key in dirs:
            if size != 0:
                raise ObjectStoreError(
                    f"{key!r} under {where} is both an object of {size} bytes and a directory prefix",
                    hint="remove the stray object; a gocryptfs volume never has both",
                )
            continue
        entries.append(SourceEntry(path=key, kind="file", size=size, etag=etag))
    entries.sort(key=lambda e: e.path.split("/"))
    return entries


def _status(exc: BaseException) -> int | None:
    match = _STATUS.search(str(exc))
    return int(match.group(1)) if match else None


def _summary(exc: BaseException) -> str:
    """The first line of an obstore error, bounded (the rest repeats the server's XML body)."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return first[:300]


def _translate(exc: BaseException, what: str, location: str) -> ObjectStoreError:
    """Map obstore's exceptions to ours, deciding whether a retry can help."""
    from obstore import exceptions as oe

    detail = _summary(exc)
    if isinstance(exc, oe.PreconditionError):
        return ObjectChangedError(
            f"{what} at {location}: the object changed since it was listed ({detail})",
            hint="the volume was modified in the bucket; restart cachefs to pick up the new version",
        )
    if isinstance(exc, oe.NotFoundError | FileNotFoundError):
        return ObjectStoreError(f"{what} at {location}: not found", hint="check MODEL_OSS_BUCKET_PATH")
    if isinstance(exc, oe.PermissionDeniedError | oe.UnauthenticatedError):
        return ObjectStoreError(
            f"{what} at {location}: access denied ({detail})",
            hint="check the credentials (or that the bucket is public-read when none are set)",
        )
    status = _status(exc)
    transient = status is None or status >= 500 or status in (408, 429)
    return ObjectStoreError(
        f"{what} at {location} failed: {detail}",
        hint="check MODEL_OSS_ENDPOINT and the network" if transient else "check the bucket and its permissions",
        transient=transient,
    )


# -- the source ---------------------------------------------------------------------------------


class ObjectStoreSource(CiphertextSource):
    """A gocryptfs cipher directory stored under ``prefix`` in an S3-API bucket."""

    def __init__(self, config: ObjectStoreConfig, *, store: Any = None) -> None:
        for secret in (config.secret_access_key, config.session_token, config.access_key_id):
            if secret:
                register_secret(secret)
        options = store_options(config)
        self.config = config
        self.name = config.location
        self._store = store if store is not None else S3Store(config.bucket, **options)
        self._entries: dict[str, SourceEntry] = {}
        self._listed = False
        log.info(
            "object store configured",
            location=config.location,
            endpoint=options["endpoint"],
            addressing="virtual" if options["virtual_hosted_style_request"] else "path",
            region=options["region"],
            anonymous=config.anonymous,
        )

    @classmethod
    def from_cai_env(
        cls,
        env: Mapping[str, Any],
        *,
        addressing: Addressing = "auto",
        region: str | None = None,
        allow_http: bool | None = None,
        **tuning: Any,
    ) -> ObjectStoreSource:
        """Build from parsed cai.env values (``agents.config.load_cai_env``).

        ``MODEL_OSS_BUCKET_PATH`` and ``MODEL_OSS_ENDPOINT`` are required; the three credential
        variables are optional (anonymous access when all are unset). Options outside the cai.env
        contract (addressing style, region, plain HTTP, timeouts) come from the daemon's config.
        """
        bucket_path = env.get("MODEL_OSS_BUCKET_PATH")
        endpoint = env.get("MODEL_OSS_ENDPOINT")
        if not bucket_path or not endpoint:
            pairs = (("MODEL_OSS_BUCKET_PATH", bucket_path), ("MODEL_OSS_ENDPOINT", endpoint))
            missing = [name for name, value in pairs if not value]
            raise ConfigError(
                f"object-storage source needs {' and '.join(missing)}",
                hint="set them in cai.env, or use a local cipher directory instead",
            )
        bucket, prefix = parse_bucket_path(str(bucket_path))

        def opt(name: str) -> str | None:
            value = env.get(name)
            return str(value) if value not in (None, "") else None

        config = ObjectStoreConfig(
            bucket=bucket,
            prefix=prefix,
            endpoint=str(endpoint),
            access_key_id=opt("MODEL_OSS_ACCESS_KEY_ID"),
            secret_access_key=opt("MODEL_OSS_SECRET_ACCESS_KEY"),
            session_token=opt("MODEL_OSS_SESSION_TOKEN"),
            addressing=addressing,
            region=region,
            allow_http=allow_http,
            **tuning,
        )
        return cls(config)

    async def list_tree(self) -> list[SourceEntry]:
        """List every object under the prefix once and derive directories and symlinks."""
        rows: list[tuple[str, int, str | None]] = []
        try:
            stream = obstore.list(self._store, chunk_size=1000)
            async for chunk in stream:
                for meta in chunk:
                    rows.append((meta["path"], int(meta["size"]), meta.get("e_tag")))
                if len(rows) > self.config.max_objects:
                    raise ObjectStoreError(
                        f"{self.name} holds more than {self.config.max_objects} objects",
                        hint="point MODEL_OSS_BUCKET_PATH at the volume's own directory",
                    )
        except ObjectStoreError:
            raise
        except Exception as exc:  # obstore raises its own hierarchy and OSError subclasses
            raise _translate(exc, "listing", self.name) from None
        if not rows:
            raise ObjectStoreError(
                f"no objects under {self.name}",
                hint="check MODEL_OSS_BUCKET_PATH (bucket:/path/ of the gocryptfs cipher directory)",
            )
        entries = build_tree(rows, self.name)
        entries = await self._find_symlinks(entries)
        self._entries = {e.path: e for e in entries}
        self._listed = True
        files = [e for e in entries if e.kind == "file"]
        log.info("object store listed", location=self.name, files=len(files),
                 bytes=sum(e.size for e in files), directories=len(entries) - len(files))
        return entries

    async def _find_symlinks(self, entries: list[SourceEntry]) -> list[SourceEntry]:
        candidates = [i for i, e in enumerate(entries) if e.kind == "file" and e.size == 0]
        if not candidates:
            return entries
        limit = asyncio.Semaphore(_HEAD_CONCURRENCY)

        async def probe(index: int) -> None:
            entry = entries[index]
            async with limit:
                try:
                    result = await obstore.get_async(self._store, entry.path, options={"head": True})
                except Exception as exc:
                    raise _translate(exc, f"HEAD {entry.path}", self.name) from None
            attributes = {str(k).lower(): v for k, v in dict(result.attributes).items()}
            target = attributes.get(SYMLINK_METADATA_KEY)
            if target is None:
                return
            if not target or len(target) > MAX_SYMLINK_TARGET or any(ord(c) < 0x20 or ord(c) > 0x7E for c in target):
                raise ObjectStoreError(
                    f"object {entry.path!r} under {self.name} has an invalid {SYMLINK_METADATA_KEY} value",
                    hint="it must be the printable gocryptfs ciphertext link target",
                )
            entries[index] = SourceEntry(path=entry.path, kind="symlink", size=len(target),
                                         etag=entry.etag, target=target)

        await asyncio.gather(*(probe(i) for i in candidates))
        return entries

    async def _entry(self, path: str) -> SourceEntry:
        entry = self._entries.get(path)
        if entry is not None:
            return entry
        if self._listed:
            raise ObjectStoreError(f"{path!r} is not in the volume at {self.name}")
        _check_key(path, self.name)
        try:
            meta = await obstore.head_async(self._store, path)
        except Exception as exc:
            raise _translate(exc, f"HEAD {path}", self.name) from None
        entry = SourceEntry(path=path, kind="file", size=int(meta["size"]), etag=meta.get("e_tag"))
        self._entries[path] = entry
        return entry

    async def read(self, path: str, offset: int, length: int) -> bytes:
        """Exactly ``length`` bytes at ``offset`` (fewer only at end of object) in one ranged GET."""
        if offset < 0 or length < 0:
            raise ObjectStoreError(f"invalid range offset={offset} length={length} for {path!r} at {self.name}")
        entry = await self._entry(path)
        if entry.kind != "file":
            raise ObjectStoreError(f"{path!r} at {self.name} is a {entry.kind}, not a file")
        end = min(offset + length, entry.size)
        if end <= offset:
            return b""
        options: dict[str, Any] = {"range": (offset, end)}
        if entry.etag:
            options["if_match"] = entry.etag
        try:
            result = await obstore.get_async(self._store, path, options=options)
            data = await result.bytes_async()
        except Exception as exc:
            raise _translate(exc, f"GET {path} bytes {offset}-{end - 1}", self.name) from None
        if len(data) != end - offset:
            raise ShortReadError(
                f"GET {path} bytes {offset}-{end - 1} at {self.name} returned {len(data)} of {end - offset} bytes",
                hint="the connection was cut or the server truncated the body; the read is retried",
            )
        return bytes(data)

    async def stream(
        self, path: str, offset: int, length: int, *, piece_size: int = 4 << 20
    ) -> AsyncIterator[memoryview]:
        """Yield ``[offset, offset+length)`` as pieces of at least ``piece_size`` bytes from ONE GET.

        Pieces are read-only views of obstore's buffers (no copy); keep them only as long as needed.

        Used for the background fill: one long streamed request per run of chunks costs far
        fewer round trips (and far less per-request server work) than one GET per chunk. The
        caller checks the total length; a cut connection surfaces as a transient error.
        """
        entry = await self._entry(path)
        if entry.kind != "file":
            raise ObjectStoreError(f"{path!r} at {self.name} is a {entry.kind}, not a file")
        end = min(offset + length, entry.size)
        if offset < 0 or end <= offset:
            return
        # A whole object is a plain GET: some servers (moto, proxies) handle Range by reading the
        # object and slicing it, which costs an extra full copy per request.
        options: dict[str, Any] = {} if (offset, end) == (0, entry.size) else {"range": (offset, end)}
        if entry.etag:
            options["if_match"] = entry.etag
        what = f"GET {path} bytes {offset}-{end - 1}"
        try:
            result = await obstore.get_async(self._store, path, options=options)
            pieces = result.stream(min_chunk_size=piece_size)
        except Exception as exc:
            raise _translate(exc, what, self.name) from None
        while True:
            try:
                piece = await pieces.__anext__()
            except StopAsyncIteration:
                return
            except Exception as exc:
                raise _translate(exc, what, self.name) from None
            yield memoryview(piece)

    async def read_all(self, path: str) -> bytes:
        entry = await self._entry(path)
        return await self.read(path, 0, entry.size)

    async def close(self) -> None:
        """obstore's client has no explicit close; dropping the store releases its connections."""
        self._entries.clear()
