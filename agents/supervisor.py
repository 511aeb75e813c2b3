"""Run ``cai`` daemons as child processes the way systemd would: wait for READY=1, stop with SIGTERM.

Used by ``cai up`` (a deployment without systemd or compose) and ``cai demo``. Each child gets its
own NOTIFY_SOCKET, so readiness is the daemon's own verdict (not a guess from a port or a sleep).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path


class NotifyListener:
    """A NOTIFY_SOCKET like systemd's, collecting READY=1 / STOPPING=1 / STATUS= lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        while True:
            try:
                self.messages.extend(self.sock.recv(4096).decode(errors="replace").splitlines())
            except BlockingIOError:
                return self.messages

    @property
    def seen(self) -> list[str]:
        """Every notification received so far."""
        return self.drain()

    async def wait_for(self, state: str, timeout: float = 30.0, *, proc: asyncio.subprocess.Process | None = None,
                       log: Path | None = None) -> None:
        """Wait for ``state`` (e.g. ``READY=1``); fail at once if ``proc`` exits first."""
        deadline = time.monotonic() + timeout
        while state not in self.drain():
            if proc is not None and proc.returncode is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before {state}" + _tail(log))
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {state} within {timeout:g} s; seen {self.messages}" + _tail(log))
            await asyncio.sleep(0.02)

    def close(self) -> None:
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _tail(log: Path | None) -> str:
    if log is None:
        return ""
    try:
        return "; log: " + log.read_text(errors="replace")[-2000:]
    except OSError:
        return ""


@contextlib.asynccontextmanager
async def child_process(argv: list[str], log_path: Path | None, env: Mapping[str, str]
                        ) -> AsyncIterator[asyncio.subprocess.Process]:
    """A child whose output goes to ``log_path`` (None: inherit), SIGTERMed (then killed) on exit."""
    log = open(log_path, "ab") if log_path is not None else None
    try:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=log, stderr=log, env=dict(env),
                                                    stdin=asyncio.subprocess.DEVNULL)
    finally:
        if log is not None:
            log.close()
    try:
        yield proc
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 30)
            except TimeoutError:
                proc.kill()
                await proc.wait()


class DaemonSupervisor:
    """Starts daemons in order, each only after the previous one reported READY=1."""

    def __init__(self, stack: contextlib.AsyncExitStack, state_dir: Path, timeout: float, *,
                 log_to_files: bool = True, base_env: Mapping[str, str] | None = None) -> None:
        self.stack, self.state_dir, self.timeout = stack, state_dir, timeout
        self.log_to_files = log_to_files
        self.base_env = dict(os.environ if base_env is None else base_env)
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.notify: dict[str, NotifyListener] = {}

    def log_path(self, name: str) -> Path:
        return self.state_dir / f"{name}.log"

    async def start(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> str:
        """Run ``cai <argv>`` and wait for its READY=1; raises with the daemon's last error line."""
        notify = NotifyListener(self.state_dir / f"{name}.notify")
        self.stack.callback(notify.close)
        self.notify[name] = notify
        full_env = {**self.base_env, **(env or {}), "NOTIFY_SOCKET": str(notify.path), "PYTHONUNBUFFERED": "1"}
        proc = await self.stack.enter_async_context(child_process(
            [sys.executable, "-m", "agents.cli", *argv], self.log_path(name) if self.log_to_files else None,
            full_env))
        self.procs[name] = proc
        deadline = time.monotonic() + self.timeout
        while "READY=1" not in notify.drain():
            if proc.returncode is not None:
                raise RuntimeError(f"`cai {argv[0]}` exited with {proc.returncode}: {self.last_error(name)}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"`cai {argv[0]}` not ready within {self.timeout:g} s: {self.last_error(name)}")
            await asyncio.sleep(0.02)
        return f"READY=1 via sd_notify (pid {proc.pid})"

    def last_error(self, name: str) -> str:
        if not self.log_to_files:
            return "see its log output above"
        try:
            lines = self.log_path(name).read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        errors = [line for line in lines if '"error"' in line or "fatal" in line]
        return (errors or lines or ["no output"])[-1][:400]

    async def stop(self, name: str) -> int:
        proc = self.procs[name]
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), self.timeout)
        with contextlib.suppress(TimeoutError):
            await self.notify[name].wait_for("STOPPING=1", 2)
        return code

    async def stop_all(self) -> dict[str, int]:
        return {name: await self.stop(name) for name in reversed(list(self.procs))}

    async def first_exit(self) -> tuple[str, int]:
        """Wait until any supervised daemon exits; returns its name and exit code."""
        waits = {asyncio.ensure_future(proc.wait()): name for name, proc in self.procs.items()}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
        task = done.pop()
        return waits[task], task.result()
