"""Minimal sd_notify(3) client: READY/STOPPING/WATCHDOG/STATUS to systemd (or compatible).

Implemented directly over AF_UNIX datagrams rather than via libsystemd so that the daemons
work identically in containers (where there is usually no NOTIFY_SOCKET, and notify() simply
returns False) and under systemd ``Type=notify`` units with ``WatchdogSec=``.
"""

from __future__ import annotations

import os
import socket

_MAX_DATAGRAM = 4096


def _address(path: str) -> str | bytes:
    # A leading '@' denotes a Linux abstract-namespace socket: the name starts with a NUL byte.
    if path.startswith("@"):
        return b"\0" + path[1:].encode("utf-8")
    return path


def notify(state: str, *, socket_path: str | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to the service manager.

    Returns False without raising when no notification socket is configured or the manager is
    gone: a daemon must not fail because nobody is listening for its status.
    """
    path = socket_path if socket_path is not None else os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    payload = state.encode("utf-8")
    if len(payload) > _MAX_DATAGRAM:
        payload = payload[:_MAX_DATAGRAM]
    try:
        # Non-blocking: a manager that stopped reading must never stall the event loop (a full
        # receive queue would otherwise block sendto indefinitely).
        kind = socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
        with socket.socket(socket.AF_UNIX, kind) as sock:
            sock.sendto(payload, _address(path))
    except OSError:
        return False
    return True


def ready(status: str | None = None) -> bool:
    """Tell the manager start-up is complete (``Type=notify`` units wait for this)."""
    return notify("READY=1" if status is None else f"READY=1\nSTATUS={_one_line(status)}")


def stopping() -> bool:
    """Tell the manager a graceful shutdown has begun, so it does not treat it as a hang."""
    return notify("STOPPING=1")


def watchdog() -> bool:
    """Ping the watchdog; the manager restarts the service if pings stop."""
    return notify("WATCHDOG=1")


def status(text: str) -> bool:
    """Set the one-line status shown by ``systemctl status``."""
    return notify(f"STATUS={_one_line(text)}")


def _one_line(text: str) -> str:
    # A newline would start a new assignment in the notify protocol.
    return " ".join(text.splitlines())


def watchdog_interval() -> float | None:
    """Seconds between watchdog pings (half of ``WATCHDOG_USEC``), or None if not enabled.

    ``WATCHDOG_PID``, when set, names the process the watchdog applies to; other processes
    (e.g. children that inherited the environment) must not ping on its behalf.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    if value <= 0:
        return None
    return value / 1_000_000 / 2
