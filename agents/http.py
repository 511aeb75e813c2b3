"""aiohttp helpers for the local APIs: Unix-socket and TCP servers, clients, bounded reads.

The daemons talk to each other over Unix sockets under /run/cai (file permissions are the
access control) and expose a few TCP ports. Everything read from a peer is size-bounded, and
errors reach clients as small JSON bodies without tracebacks or internal messages.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from agents.errors import CaiError
from agents.logsetup import get_logger
from agents.redaction import redact

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_log = get_logger("agents.http")


class BodyTooLarge(CaiError):
    """A peer sent more than we are willing to hold in memory."""

    http_status = 413


def _socket_in_use(path: str) -> bool:
    """True if a process accepts connections on the Unix socket at ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError as exc:
            # EAGAIN: listening but backlog full, i.e. very much in use.
            return exc.errno == errno.EAGAIN
        return True


def _prepare_unix_path(path: str) -> None:
    parent = Path(path).parent
    if not parent.exists():
        parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise CaiError(
            f"cannot listen on {path}: a non-socket file is in the way",
            hint="remove it or choose another socket path",
        )
    if _socket_in_use(path):
        raise CaiError(
            f"another process is already serving {path}",
            hint="stop the other instance or choose another socket path",
        )
    # A leftover from a crashed run: nobody is listening, so it is safe to replace.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def start_site(
    app: web.Application,
    *,
    unix_path: str | None = None,
    host: str | None = None,
    port: int | None = None,
    socket_mode: int = 0o660,
    peer_guard: Any = None,
) -> web.AppRunner:
    """Start serving ``app`` on a Unix socket or TCP ``host:port``; the caller cleans up.

    Returns the runner; call ``await runner.cleanup()`` to stop. ``port=0`` picks a free port,
    see :func:`bound_port`. ``peer_guard`` (Unix sockets only, see :func:`agents.peercred.peer_guard`)
    becomes the app's first middleware, so a refused peer reaches no handler and no other middleware.
    """
    if (unix_path is None) == (port is None):
        raise ValueError("start_site needs exactly one of unix_path or port")
    if peer_guard is not None and unix_path is None:
        raise ValueError("peer_guard applies to Unix-socket sites only")
    created: list[int] = []
    if unix_path is not None:
        if peer_guard is not None:
            app.middlewares.insert(0, peer_guard)
        _prepare_unix_path(unix_path)
        _remove_on_cleanup(app, unix_path, created)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site: web.BaseSite
        if unix_path is not None:
            site = web.UnixSite(runner, unix_path)
            await site.start()
            os.chmod(unix_path, socket_mode)
            created.append(os.stat(unix_path).st_ino)
        else:
            site = web.TCPSite(runner, host or "127.0.0.1", port)
            await site.start()
    except OSError as exc:
        await runner.cleanup()
        where = unix_path if unix_path is not None else f"{host or '127.0.0.1'}:{port}"
        raise CaiError(f"cannot listen on {where}: {exc.strerror or exc}") from exc
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def _remove_on_cleanup(app: web.Application, path: str, created: list[int]) -> None:
    """Unlink our socket when the runner stops, so a stopped daemon leaves no dead socket behind.

    Only the inode recorded in ``created`` (after binding) is removed: a successor that already
    bound the path keeps its own. Registered before the app is frozen by ``runner.setup()``.
    """

    async def unlink(_: web.Application) -> None:
        with contextlib.suppress(OSError):
            st = os.lstat(path)
            if stat.S_ISSOCK(st.st_mode) and st.st_ino in created:
                os.unlink(path)

    app.on_cleanup.append(unlink)


def connection_failure(exc: BaseException) -> str:
    """Why a connection failed, in an operator's words ("connection refused"), plus the exception type.

    aiohttp's own text for a refused connect is "Connect call failed ('127.0.0.1', 8080)", which
    does not say refused, unreachable or missing socket; the errno does.
    """
    errno = getattr(exc, "errno", None) if isinstance(exc, OSError) else None
    if isinstance(errno, int) and errno > 0:
        return f"{os.strerror(errno).lower()} ({type(exc).__name__})"
    if isinstance(exc, TimeoutError):
        return f"timed out ({type(exc).__name__})"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (for child daemons that must be told their port)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port ``runner`` actually listens on (useful after ``port=0``)."""
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return int(addr[1])
    raise ValueError("runner is not listening on a TCP port")


def unix_session(path: str, **kwargs: Any) -> aiohttp.ClientSession:
    """A client session whose every request goes to the Unix socket ``path``.

    Use a dummy host in URLs: ``session.get("http://localhost/aa/token")``.
    """
    connector = aiohttp.UnixConnector(path=path)
    return aiohttp.ClientSession(connector=connector, **kwargs)


async def read_body_limited(resp: aiohttp.ClientResponse, limit: int, *, what: str) -> bytes:
    """Read ``resp``'s body, refusing more than ``limit`` bytes.

    A declared Content-Length over the limit is rejected before reading anything; without one
    (chunked, or a lying peer) the stream is cut off as soon as it passes the limit.
    """
    declared = resp.content_length
    if declared is not None and declared > limit:
        resp.release()
        raise BodyTooLarge(
            f"{what}: response of {declared} bytes exceeds the {limit}-byte limit",
            hint="the peer is misbehaving or the limit is too small",
        )
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        total += len(chunk)
        if total > limit:
            resp.close()
            raise BodyTooLarge(
                f"{what}: response exceeds the {limit}-byte limit",
                hint="the peer is misbehaving or the limit is too small",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def json_error(status: int, message: str, *, code: str | None = None) -> web.Response:
    """A JSON error response ``{"error": message, "code": code}`` (message is redacted)."""
    return web.json_response({"error": redact(message), "code": code}, status=status)


def error_middleware(logger: Any) -> Any:
    """Middleware mapping exceptions to JSON responses, so clients never see a traceback.

    CaiError messages are written for operators and are safe (and redacted), so they are
    returned with the error's ``http_status``; anything else is a bug: the client gets a
    generic 500 and the details go to one log line.
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except CaiError as exc:
            status = getattr(exc, "http_status", 500)
            if not isinstance(status, int) or not 400 <= status <= 599:
                status = 500
            logger.warning(
                "request failed", method=request.method, path=request.path, status=status, error=str(exc)
            )
            return json_error(status, str(exc), code=type(exc).__name__)
        except Exception as exc:
            logger.error(
                "unhandled error in request handler",
                method=request.method,
                path=request.path,
                exc_info=exc,
            )
            return json_error(500, "internal error")

    return middleware


@web.middleware
async def loopback_only(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                        ) -> web.StreamResponse:
    """Serve loopback peers only (api-server-rest semantics): a remote peer never gets a token or a secret."""
    peer = request.remote or ""
    try:
        allowed = ipaddress.ip_address(peer).is_loopback
    except ValueError:
        allowed = False
    if not allowed:
        _log.warning("http.refused_peer", peer=peer, path=request.path)
        return json_error(403, "only loopback clients are served")
    return await handler(request)
