"""Unix-socket peer credentials (``SO_PEERCRED``): an optional per-uid/gid allow-list for the local APIs.

File mode and group of ``/run/cai/*.sock`` are the first gate (0660 by default). Containers that
share the ``/run/cai`` volume often share a group too, or run as root; the allow-list narrows who may
talk to a daemon to the processes the operator names, using the credentials the kernel recorded when
the peer called ``connect()``, which the peer cannot forge.

Allow-list format (the ``allowed_peers`` setting of ``[aa]``, ``[cdh]`` and ``[cachefs]``), entries
separated by commas or whitespace:

- ``1000`` or ``vllm``: a user, by uid or by name;
- ``@1000`` or ``@cai-clients``: a group, by gid or by name. A peer matches if the group is its
  effective gid or one of its supplementary groups (``SO_PEERGROUPS``, Linux >= 4.13; a peer with
  more groups than fit in one query is matched on its effective gid only, which can only refuse more).

Names are resolved once, at start-up; an unknown name is a configuration error (fail closed), so a
typo never silently lets nobody (or everybody) in. Semantics:

- **unset** (the default): no check, only the socket's file permissions apply, as before;
- **set**: a peer is served only if its uid or one of its groups is listed, **or its uid is the
  daemon's own uid**. The own uid is always allowed because that user can already signal, replace
  or reconfigure the daemon, and it is who runs ``cai healthcheck`` in the same container; refusing
  it would break health checks without protecting anything. Root (uid 0) is *not* implicitly allowed
  unless it is the daemon's own uid: to keep a root-running neighbour container out, run the daemon
  under a dedicated uid. An empty list (``[]``) therefore means "own uid only".

Refusals are answered 403 with a JSON body naming the peer's uid/gid and the setting to change,
logged as one warning line (uid, gid, pid, path) and counted in ``cai_socket_peers_refused_total``.
TCP listeners are not affected (they have their own guard, :func:`agents.http.loopback_only`).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import socket
import struct
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from agents.errors import ConfigError
from agents.health import Metrics
from agents.http import json_error

SETTING = "allowed_peers"
SETTING_DOC = ("Who may use the API socket besides its file permissions: uids or user names, @gids or @group "
               "names, separated by commas or spaces (e.g. '0,vllm,@cai-clients'). Unset: file permissions only. "
               "Set: other peers get 403; the daemon's own uid is always allowed.")
METRIC = "cai_socket_peers_refused_total"

_UCRED = struct.Struct("3i")  # struct ucred {pid_t pid; uid_t uid; gid_t gid;}
_GID = struct.Struct("I")
# SO_PEERGROUPS from <asm-generic/socket.h>; Python's socket module does not export it.
SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_MAX_GROUPS_BYTES = 1024  # CPython's getsockopt buffer limit: 256 groups
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$")
_MAX_ID = 0xFFFFFFFE  # (uid_t)-1 means "no id" to the kernel


class PeerSpecError(ConfigError, ValueError):
    """An ``allowed_peers`` entry is malformed or names an unknown user/group.

    A ``ValueError`` too, so a :class:`~agents.settings.Setting` validator can raise it and the
    settings loader names the key and the source file.
    """


@dataclass(frozen=True)
class PeerCredentials:
    """What the kernel recorded about the process at the other end of a Unix socket."""

    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()


@dataclass(frozen=True)
class AllowedPeers:
    """A resolved allow-list (numeric ids only; names were resolved when it was built)."""

    uids: frozenset[int]
    gids: frozenset[int]

    def allows(self, creds: PeerCredentials, *, own_uid: int) -> bool:
        """True if ``creds`` is the daemon's own uid, a listed uid, or in a listed group."""
        if creds.uid == own_uid or creds.uid in self.uids:
            return True
        return creds.gid in self.gids or not self.gids.isdisjoint(creds.groups)

    def describe(self) -> str:
        """The list in canonical numeric form, for logs."""
        return ",".join([*(str(u) for u in sorted(self.uids)), *(f"@{g}" for g in sorted(self.gids))])


def _resolve(entry: str, *, group: bool, lookup: Callable[[str], Any]) -> int:
    kind = "group" if group else "user"
    if entry.isdigit() and entry.isascii():
        number = int(entry)
        if number > _MAX_ID:
            raise PeerSpecError(f"{kind} id {entry!r} is out of range (0..{_MAX_ID})")
        return number
    if not _NAME_RE.match(entry):
        raise PeerSpecError(f"{entry!r} is neither a numeric {kind} id nor a valid {kind} name",
                            hint="use a uid or user name, or @gid / @group for a group")
    try:
        entry_id = lookup(entry)
    except (KeyError, ValueError, OverflowError):
        raise PeerSpecError(f"unknown {kind} {entry!r} (not in this system's {kind} database)",
                            hint=f"create the {kind} first or give its numeric id") from None
    return int(entry_id.gr_gid if group else entry_id.pw_uid)


def parse_allowed_peers(entries: str | Iterable[str], *,
                        getpwnam: Callable[[str], Any] = pwd.getpwnam,
                        getgrnam: Callable[[str], Any] = grp.getgrnam) -> AllowedPeers:
    """Parse and resolve an allow-list: a string (comma/space separated) or a list of entries.

    Raises :class:`PeerSpecError` naming the bad entry. The lookups are parameters so tests need
    no particular users on the machine.
    """
    if isinstance(entries, str):
        items = [item for item in re.split(r"[\s,]+", entries.strip()) if item]
    else:
        items = []
        for item in entries:
            if not isinstance(item, str):
                raise PeerSpecError(f"allow-list entry {item!r} is not a string")
            items.extend(part for part in re.split(r"[\s,]+", item.strip()) if part)
    uids: set[int] = set()
    gids: set[int] = set()
    for item in items:
        if item.startswith("@"):
            gids.add(_resolve(item[1:], group=True, lookup=getgrnam))
        else:
            uids.add(_resolve(item, group=False, lookup=getpwnam))
    return AllowedPeers(frozenset(uids), frozenset(gids))


def validate_allowed_peers(value: list[str] | None) -> list[str] | None:
    """Setting validator: resolve now (fail closed on unknown names), keep the raw entries."""
    if value is not None:
        parse_allowed_peers(value)
    return value


def decode_ucred(raw: bytes) -> tuple[int, int, int]:
    """``(pid, uid, gid)`` from a ``struct ucred`` as returned by ``SO_PEERCRED``."""
    if len(raw) != _UCRED.size:
        raise ValueError(f"SO_PEERCRED returned {len(raw)} bytes, expected {_UCRED.size}")
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid & 0xFFFFFFFF, gid & 0xFFFFFFFF


def decode_groups(raw: bytes) -> tuple[int, ...]:
    """The gid array returned by ``SO_PEERGROUPS``."""
    usable = len(raw) - len(raw) % _GID.size
    return tuple(value for (value,) in _GID.iter_unpack(raw[:usable]))


def read_peer_credentials(sock: Any) -> PeerCredentials:
    """Credentials of the peer of a connected ``AF_UNIX`` socket (or asyncio's ``TransportSocket``).

    ``OSError`` if the socket has none (not a Unix socket, or closed).
    """
    pid, uid, gid = decode_ucred(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    try:
        groups = decode_groups(sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, _MAX_GROUPS_BYTES))
    except OSError:
        # ENOPROTOOPT (old kernel) or ERANGE (too many groups): effective gid only, which refuses more.
        groups = ()
    return PeerCredentials(pid, uid, gid, groups)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def peer_guard(allowed: AllowedPeers, *, where: str, setting: str, metrics: Metrics, logger: Any,
               own_uid: int | None = None) -> Any:
    """aiohttp middleware serving only allowed peers on Unix-socket connections.

    ``where`` (the socket path) and ``setting`` (e.g. ``[cdh] allowed_peers / CAI_CDH_ALLOWED_PEERS``)
    go into the refusal so the operator knows what to change. Connections that are not ``AF_UNIX``
    pass through untouched: an app served on both a socket and a loopback TCP port is guarded
    on the socket only.
    """
    own = os.geteuid() if own_uid is None else own_uid
    # The kernel fixes a peer's credentials at connect(): a connection checked once is allowed for
    # its lifetime (keep-alive clients then pay no syscalls per request). Refused ones are closed.
    admitted: weakref.WeakSet[Any] = weakref.WeakSet()
    refused = metrics.counter(METRIC, "Unix-socket API requests refused because the peer's uid/gid is not in "
                              "allowed_peers")

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        if transport is not None and transport in admitted:
            return await handler(request)
        sock = transport.get_extra_info("socket") if transport is not None else None
        if sock is not None and sock.family != socket.AF_UNIX:
            return await handler(request)
        try:
            if sock is None:
                raise OSError("the connection has no socket")
            creds = read_peer_credentials(sock)
        except OSError as exc:
            refused.inc()
            logger.warning("http.peer_credentials_unreadable", socket=where, path=request.path, error=str(exc))
            response = json_error(403, f"cannot read the peer credentials on {where}; refusing the request",
                                  code="PeerNotAllowed")
            response.force_close()
            return response
        if allowed.allows(creds, own_uid=own):
            admitted.add(transport)
            return await handler(request)
        refused.inc()
        logger.warning("http.peer_refused", socket=where, uid=creds.uid, gid=creds.gid, pid=creds.pid,
                       path=request.path)
        response = json_error(
            403, f"peer uid {creds.uid} gid {creds.gid} (pid {creds.pid}) is not allowed to use {where}; "
                 f"to allow it, add {creds.uid} or @{creds.gid} to {setting}", code="PeerNotAllowed")
        response.force_close()
        return response

    return middleware


def guard_from_settings(settings: Mapping[str, Any], *, section: str, metrics: Metrics, logger: Any) -> Any:
    """The guard for a daemon's ``settings["socket"]``, or None when ``allowed_peers`` is unset.

    One call per daemon keeps the three APIs identical: same setting, same refusal, same metric.
    """
    entries = settings.get(SETTING)
    if entries is None:
        return None
    allowed = parse_allowed_peers(entries)
    where = settings["socket"]
    logger.info("http.peer_allow_list", socket=where, allowed=allowed.describe(), own_uid=os.geteuid())
    return peer_guard(allowed, where=where, setting=f"[{section}] {SETTING} (CAI_{section.upper()}_ALLOWED_PEERS)",
                      metrics=metrics, logger=logger)
