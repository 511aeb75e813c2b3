"""``cai healthcheck TARGET``: exit 0 only if a daemon's health endpoint answers 200.

Container healthchecks (docker compose), Kubernetes startup/liveness probes and operators all ask
the same question — "is this daemon ready?" — of a Unix socket (the AA, data hub and cachefs) or a
loopback TCP listener (the gateway's control interface). One small command answers it the same way
everywhere, so a "Healthy" container means exactly what ``/readyz`` means (the data hub, for
example, is ready only once every resource is on disk).

It uses the standard library only (``http.client`` over ``AF_UNIX``): probes run every few seconds,
so start-up must stay cheap and must not depend on the event loop or aiohttp.
"""

from __future__ import annotations

import argparse
import http.client
import socket
import sys
from dataclasses import dataclass
from urllib.parse import urlsplit

from agents import validators

DEFAULT_PATH = "/readyz"
DEFAULT_TIMEOUT = 3.0
MAX_BODY = 64 * 1024  # health and status answers are small; bounded all the same


@dataclass(frozen=True)
class Target:
    """Where to ask: a Unix socket path, or a TCP host and port."""

    unix_path: str | None = None
    host: str | None = None
    port: int | None = None

    def describe(self) -> str:
        return self.unix_path if self.unix_path else f"{self.host}:{self.port}"


def parse_target(text: str) -> Target:
    """``/run/cai/aa.sock``, ``unix:///run/cai/aa.sock``, ``127.0.0.1:8007`` or ``http://127.0.0.1:8007``.

    Raises ``ValueError`` naming the target and the accepted forms.
    """
    forms = "give a socket path (/run/cai/aa.sock), unix:///path, HOST:PORT or http://HOST:PORT"
    if not text or any(ord(ch) < 0x20 for ch in text):
        raise ValueError(f"health target {text!r} is empty or has control characters; {forms}")
    if text.startswith("unix://"):
        text = text[len("unix://"):]
    if text.startswith("/"):
        validators.absolute_path(text)
        return Target(unix_path=text)
    if text.startswith("http://"):
        parts = urlsplit(text)
        if parts.path not in ("", "/") or parts.query or not parts.hostname or parts.port is None:
            raise ValueError(f"health target {text!r} must be http://HOST:PORT without a path; {forms}")
        return Target(host=parts.hostname, port=parts.port)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"health target {text!r} is not understood; {forms}")
    host = host.strip("[]")
    validators.hostname(host)
    return Target(host=host, port=validators.port(int(port)))


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def probe(target: Target, path: str = DEFAULT_PATH, timeout: float = DEFAULT_TIMEOUT, *,
          full_body: bool = False) -> tuple[int, str]:
    """GET ``path`` on ``target``; return (status, first line of the body, or all of it up to the
    size limit with ``full_body``). Raises ``OSError``."""
    conn: http.client.HTTPConnection
    if target.unix_path is not None:
        conn = _UnixConnection(target.unix_path, timeout)
    else:
        conn = http.client.HTTPConnection(str(target.host), int(target.port or 0), timeout=timeout)
    try:
        conn.request("GET", path, headers={"Accept": "application/json"})
        resp = conn.getresponse()
        body = resp.read(MAX_BODY)
        if full_body:
            return resp.status, body.decode("utf-8", "replace")
        return resp.status, body.decode("utf-8", "replace").strip().splitlines()[0][:200] if body.strip() else ""
    except http.client.HTTPException as exc:
        raise OSError(f"not an HTTP answer ({type(exc).__name__})") from None
    finally:
        conn.close()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="Unix socket path (e.g. /run/cai/cdh.sock) or HOST:PORT of a health "
                        "listener (e.g. the gateway's 127.0.0.1:8007)")
    parser.add_argument("--path", default=DEFAULT_PATH,
                        help=f"endpoint to ask (default {DEFAULT_PATH}; /livez for liveness probes)")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help=f"seconds to wait for the answer (default {DEFAULT_TIMEOUT:g})")
    parser.add_argument("-q", "--quiet", action="store_true", help="print nothing; the exit code says it all")


def main(args: argparse.Namespace) -> int:
    """0: answered 200; 1: answered something else or not at all; 2: bad arguments."""
    try:
        target = parse_target(args.target)
    except ValueError as exc:
        print(f"cai healthcheck: {exc}", file=sys.stderr)
        return 2
    if not args.path.startswith("/") or any(ord(ch) <= 0x20 for ch in args.path):
        print(f"cai healthcheck: --path {args.path!r} must start with / and contain no spaces", file=sys.stderr)
        return 2
    if not 0 < args.timeout <= 300:
        print("cai healthcheck: --timeout must be between 0 and 300 seconds", file=sys.stderr)
        return 2
    try:
        status, detail = probe(target, args.path, args.timeout)
    except OSError as exc:
        if not args.quiet:
            reason = exc.strerror or str(exc) or type(exc).__name__
            print(f"unhealthy: {target.describe()}{args.path}: {reason} — is the daemon running?", file=sys.stderr)
        return 1
    if status == 200:
        if not args.quiet:
            print(f"healthy: {target.describe()}{args.path}: 200 {detail}".rstrip())
        return 0
    if not args.quiet:
        print(f"unhealthy: {target.describe()}{args.path}: {status} {detail}".rstrip(), file=sys.stderr)
    return 1
