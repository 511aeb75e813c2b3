"""Test helpers: a real S3-API server (moto, server mode) on loopback, and a counting/faulting proxy.

moto runs in a **subprocess** (its own GIL, like a real server) bound to 127.0.0.1 on an ephemeral
port the child reports back, so parallel test runs never collide. moto keeps no request counters,
so :class:`S3Proxy` — a tiny aiohttp reverse proxy on loopback in front of it — records every
request (method, key, Range, whether it was signed) and can inject the failures object storage
really produces: a connection dropped mid-body, a body shorter than it claims, a held request
(to order events deterministically without timing assumptions) and 5xx responses. It also works
as a forward proxy (absolute-form request targets), which lets tests use virtual-hosted-style
bucket host names that do not resolve in DNS.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

__all__ = ["Fault", "MotoS3Server", "ProxyRequest", "S3Proxy", "upload_tree"]

_CHILD = (
    "import sys\n"
    "from moto.server import ThreadedMotoServer\n"
    "server = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)\n"
    "server.start()\n"
    "print(server.get_host_and_port()[1], flush=True)\n"
    "sys.stdin.read()\n"
    "server.stop()\n"
)

# Hop-by-hop headers are per connection and must not be forwarded (RFC 9110 §7.6.1).
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}


class MotoS3Server:
    """A moto S3 server in a child process on ``127.0.0.1:<ephemeral>``; stop it with :meth:`stop`.

    The child exits when its stdin closes, so it cannot outlive a crashed test run.
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MotoS3Server:
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"moto server did not start (printed {line!r})")
        self.port = int(line)
        return self

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def client(self, **kwargs: Any) -> Any:
        """A boto3 S3 client for setting up buckets and objects (test setup only)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=kwargs.pop("access_key", "setup-access-key"),
            aws_secret_access_key=kwargs.pop("secret_key", "setup-secret-key"),
            region_name="us-east-1",
            **kwargs,
        )


@dataclass
class ProxyRequest:
    """One request as the proxy saw it."""

    method: str
    path: str
    query: str
    range: str | None
    host: str
    authorization: str | None
    security_token: str | None


@dataclass
class Fault:
    """A one-shot (or ``times``-shot) failure for requests that ``match``.

    ``mode``: ``"drop"`` sends the headers and ``keep`` body bytes, then closes the connection;
    ``"short"`` answers with only ``keep`` body bytes but a matching Content-Length (a server
    that lies consistently, which HTTP cannot detect); ``"status"`` answers ``status`` with no body;
    ``"pause"`` sends ``keep`` body bytes, sets ``reached``, and sends the rest only once
    ``resume`` is set (a transfer caught mid-body, to order events without timing).
    """

    match: Callable[[ProxyRequest], bool]
    mode: str
    keep: int = 0
    status: int = 503
    times: int = 1
    reached: asyncio.Event = field(default_factory=asyncio.Event)
    resume: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Hold:
    match: Callable[[ProxyRequest], bool]
    release: asyncio.Event = field(default_factory=asyncio.Event)
    held: asyncio.Event = field(default_factory=asyncio.Event)
    count: int = 0


class S3Proxy:
    """A reverse (and forward) proxy in front of ``upstream`` that records and perturbs requests."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.requests: list[ProxyRequest] = []
        self.faults: list[Fault] = []
        #: While True every request's connection is dropped before any answer (storage unreachable).
        self.unreachable = False
        self._holds: list[_Hold] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def __aenter__(self) -> S3Proxy:
        # No automatic decompression: bytes must pass through untouched.
        self._session = aiohttp.ClientSession(auto_decompress=False)
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[union-attr]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for hold in self._holds:
            hold.release.set()
        for fault in self.faults:
            fault.resume.set()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # -- test controls ---------------------------------------------------------------------------
    def gets(self, key_suffix: str = "") -> list[ProxyRequest]:
        """Object GETs (not listings) whose path ends with ``key_suffix``."""
        return [r for r in self.requests if r.method == "GET" and "list-type" not in r.query
                and r.path.endswith(key_suffix)]

    def hold(self, match: Callable[[ProxyRequest], bool]) -> _Hold:
        """Park matching requests until ``.release`` is set; ``.held`` fires when one is parked."""
        hold = _Hold(match)
        self._holds.append(hold)
        return hold

    def inject(self, fault: Fault) -> None:
        self.faults.append(fault)

    # -- proxying --------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        seen = ProxyRequest(
            method=request.method,
            path=request.path,
            query=request.query_string,
            range=request.headers.get("Range"),
            host=request.headers.get("Host", ""),
            authorization=request.headers.get("Authorization"),
            security_token=request.headers.get("x-amz-security-token"),
        )
        self.requests.append(seen)
        if self.unreachable:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=503)  # never sent: the connection is already gone
        for hold in self._holds:
            if not hold.release.is_set() and hold.match(seen):
                hold.count += 1
                hold.held.set()
                await hold.release.wait()
        fault = next((f for f in self.faults if f.times > 0 and f.match(seen)), None)
        if fault is not None:
            fault.times -= 1
            if fault.mode == "status":
                return web.Response(status=fault.status, text="injected failure")

        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        target = self.upstream + request.rel_url.path_qs
        body = await request.read()
        async with self._session.request(
            request.method, target, headers=headers, data=body or None, allow_redirects=False
        ) as upstream:
            payload = await upstream.read()
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
            if fault is not None and fault.mode == "short":
                payload = payload[: fault.keep]
                out_headers["Content-Length"] = str(len(payload))
                if "Content-Range" in out_headers:
                    first = int(out_headers["Content-Range"].split(" ")[1].split("-")[0])
                    total = out_headers["Content-Range"].split("/")[1]
                    out_headers["Content-Range"] = f"bytes {first}-{first + len(payload) - 1}/{total}"
            response = web.StreamResponse(status=upstream.status, headers=out_headers)
            if request.method == "HEAD":
                # Keep the upstream Content-Length: it is the object size the client reads from HEAD.
                if "Content-Length" in upstream.headers:
                    response.headers["Content-Length"] = upstream.headers["Content-Length"]
                await response.prepare(request)
                return response
            if fault is not None and fault.mode == "drop":
                response.content_length = len(payload)
                await response.prepare(request)
                await response.write(payload[: fault.keep])
                transport = request.transport
                if transport is not None:
                    transport.abort()
                return response
            response.content_length = len(payload)
            await response.prepare(request)
            if fault is not None and fault.mode == "pause":
                await response.write(payload[: fault.keep])
                fault.reached.set()
                await fault.resume.wait()
                payload = payload[fault.keep :]
            await response.write(payload)
            await response.write_eof()
            return response


def upload_tree(client: Any, bucket: str, prefix: str, root: Path) -> dict[str, str]:
    """Upload a local cipher directory under ``prefix`` (symlinks as cai-symlink-target objects).

    Returns {relative path: object key} of the regular files, so tests can match proxy requests.
    """
    import os

    keys = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        key = f"{prefix}{rel}"
        if path.is_symlink():
            client.put_object(Bucket=bucket, Key=key, Body=b"", Metadata={"cai-symlink-target": os.readlink(path)})
        elif path.is_file():
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())
            keys[rel] = key
    return keys
