"""sd_notify against a real AF_UNIX datagram socket bound by the test."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents import sdnotify


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield sock
    sock.close()


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_unset_socket_returns_false(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.ready() is False


def test_ready_stopping_watchdog_status(listener: socket.socket) -> None:
    assert sdnotify.ready() is True
    assert receive(listener) == "READY=1"
    assert sdnotify.ready("serving on /run/cai/aa.sock") is True
    assert receive(listener) == "READY=1\nSTATUS=serving on /run/cai/aa.sock"
    assert sdnotify.stopping() is True
    assert receive(listener) == "STOPPING=1"
    assert sdnotify.watchdog() is True
    assert receive(listener) == "WATCHDOG=1"
    assert sdnotify.status("line one\nline two") is True
    assert receive(listener) == "STATUS=line one line two"


def test_explicit_socket_path_overrides_env(tmp_path: Path, listener: socket.socket) -> None:
    other = tmp_path / "other.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(other))
        sock.settimeout(2.0)
        assert sdnotify.notify("X=1", socket_path=str(other)) is True
        assert sock.recv(100) == b"X=1"


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"cai-test-notify-{os.getpid()}-{id(monkeypatch)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(2.0)
        monkeypatch.setenv("NOTIFY_SOCKET", f"@{name}")
        assert sdnotify.ready() is True
        assert sock.recv(100) == b"READY=1"


def test_full_receiver_does_not_block(listener: socket.socket) -> None:
    # Nobody reads: once the receive queue is full, notify must fail fast instead of blocking.
    results = [sdnotify.watchdog() for _ in range(5000)]
    assert results[0] is True
    assert results[-1] is False


def test_dead_socket_returns_false(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone.sock"))
    assert sdnotify.stopping() is False


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("2000000", None, 1.0),
        ("30000000", "self", 15.0),
        ("2000000", "1", None),
        ("0", None, None),
        ("garbage", None, None),
        ("2000000", "garbage", None),
    ],
)
def test_watchdog_interval(
    monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, str(os.getpid()) if value == "self" else value)
    assert sdnotify.watchdog_interval() == expected
