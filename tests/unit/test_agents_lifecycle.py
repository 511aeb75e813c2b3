"""Lifecycle: real signals, real sd_notify datagrams, and run()'s exit-code policy."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.lifecycle import Lifecycle

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def notify_sock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield sock
    sock.close()


def drain(sock: socket.socket) -> list[str]:
    messages = []
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


async def test_sigterm_sets_stop_event_and_sends_stopping(notify_sock: socket.socket) -> None:
    before = signal.getsignal(signal.SIGTERM)
    async with Lifecycle("unit") as lc:
        lc.mark_ready("up")
        lc.mark_ready("again")  # READY is sent once
        assert not lc.stop_event.is_set()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(lc.wait_stopped(), timeout=5)
        assert lc.stop_event.is_set()
        assert lc.stop_reason == "signal SIGTERM"
    assert drain(notify_sock) == ["READY=1\nSTATUS=up", "STOPPING=1"]
    assert signal.getsignal(signal.SIGTERM) == before


async def test_sigint_also_stops(notify_sock: socket.socket) -> None:
    async with Lifecycle("unit") as lc:
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.wait_for(lc.wait_stopped(), timeout=5)
        assert lc.stop_reason == "signal SIGINT"


async def test_request_stop_keeps_first_reason(notify_sock: socket.socket) -> None:
    async with Lifecycle("unit") as lc:
        lc.request_stop("config reload failed")
        lc.request_stop("second")
        await asyncio.wait_for(lc.wait_stopped(), timeout=1)
    assert lc.stop_reason == "config reload failed"
    assert drain(notify_sock) == ["STOPPING=1"]


async def test_watchdog_pings(notify_sock: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "100000")  # ping every 50 ms
    async with Lifecycle("unit"):
        await asyncio.sleep(0.22)
    messages = drain(notify_sock)
    assert messages.count("WATCHDOG=1") >= 3
    assert messages[-1] == "STOPPING=1"


async def test_tasks_cancelled_on_exit_and_failing_task_requests_stop(notify_sock: socket.socket) -> None:
    cancelled = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def broken() -> None:
        raise RuntimeError("refresh loop crashed")

    async with Lifecycle("unit") as lc:
        long_task = lc.spawn(forever(), name="forever")
        lc.spawn(broken(), name="refresher")
        await asyncio.wait_for(lc.wait_stopped(), timeout=2)
        assert lc.stop_reason == "task refresher failed"
    assert cancelled.is_set()
    assert long_task.cancelled()


def run_script(body: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "main.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from agents.errors import CaiError, ConfigError
            from agents.lifecycle import run
            from agents.logsetup import register_secret
            """
        )
        + textwrap.dedent(body)
        + "\nsys.exit(run(main))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path
    )


@pytest.mark.parametrize(
    ("raise_line", "code", "error"),
    [
        (
            "raise ConfigError('bad MODEL_SERVICE_PORT', hint='use 1..65535')",
            2,
            "bad MODEL_SERVICE_PORT — use",
        ),
        ("raise CaiError('trustee unreachable')", 1, "trustee unreachable"),
        (
            "raise ExceptionGroup('tg', [ConfigError('in a task group')])",
            2,
            "in a task group",
        ),
    ],
)
def test_run_cai_error_is_one_structured_line(tmp_path: Path, raise_line: str, code: int, error: str) -> None:
    result = run_script(f"async def main():\n    {raise_line}\n", tmp_path)
    assert result.returncode == code
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    record = json.loads(line)
    assert record["event"] == "fatal"
    assert error in record["error"]
    assert result.stdout == ""


def test_run_unexpected_error_logs_redacted_traceback(tmp_path: Path) -> None:
    result = run_script(
        """
        async def main():
            register_secret("model-key-0123456789")
            raise RuntimeError("leaked model-key-0123456789")
        """,
        tmp_path,
    )
    assert result.returncode == 70
    assert "model-key-0123456789" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    record = json.loads(line)
    assert "Traceback" in record["exception"]
    assert "RuntimeError: leaked [REDACTED]" in record["exception"]


@pytest.mark.parametrize(("ret", "code"), [("None", 0), ("0", 0), ("3", 3)])
def test_run_returns_main_exit_code(tmp_path: Path, ret: str, code: int) -> None:
    result = run_script(f"async def main():\n    return {ret}\n", tmp_path)
    assert result.returncode == code
    assert result.stderr == ""
