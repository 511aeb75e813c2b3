"""A real software TPM 2.0 (``swtpm socket --tpm2``) for tests.

Each ``swtpm`` fixture use starts its own swtpm with state in ``tmp_path``, ``startup-clear`` so
swtpm issues TPM2_Startup itself, on ephemeral loopback ports, and kills it at teardown. Import
the fixture (named ``swtpm``) into a test module with
``from tests.swtpm import swtpm_fixture  # noqa: F401``.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT = 20.0


@dataclass(frozen=True)
class SwtpmInstance:
    host: str
    port: int
    ctrl_port: int  # always port + 1: the swtpm TCTI derives it
    state_dir: Path
    pid: int

    @property
    def tcti(self) -> str:
        """The tpm2-tss TCTI string for this instance (``swtpm:host=...,port=...``)."""
        return f"swtpm:host={self.host},port={self.port}"


def _free_port_pair() -> tuple[int, int]:
    """Two adjacent free ports: the swtpm TCTI always talks to the control channel at port + 1."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
                return port, port + 1
    raise RuntimeError("no two adjacent free loopback ports for swtpm")


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def start_swtpm(state_dir: Path) -> tuple[subprocess.Popen[bytes], SwtpmInstance]:
    """Start swtpm; retry with new ports if another process grabbed them first."""
    state_dir.mkdir(parents=True, exist_ok=True)
    last_error = ""
    for _ in range(5):
        port, ctrl = _free_port_pair()
        proc = subprocess.Popen(
            ["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={state_dir}",
             "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
             "--ctrl", f"type=tcp,port={ctrl},bindaddr=127.0.0.1",
             "--flags", "not-need-init,startup-clear"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                last_error = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace")
                break
            if _accepts(ctrl):
                return proc, SwtpmInstance("127.0.0.1", port, ctrl, state_dir, proc.pid)
            time.sleep(0.05)
        else:
            stop_swtpm(proc)
            last_error = "swtpm did not open its control port in time"
    raise RuntimeError(f"could not start swtpm: {last_error}")


def stop_swtpm(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    if proc.stderr:
        proc.stderr.close()


@pytest.fixture(name="swtpm")
def swtpm_fixture(tmp_path: Path) -> Iterator[SwtpmInstance]:
    proc, instance = start_swtpm(tmp_path / "swtpm-state")
    try:
        yield instance
    finally:
        stop_swtpm(proc)
