"""The AA runtime event log on disk, kept in step with RTMR3 — crash-safe by ordering.

Rule: an event is appended to the log and fsync'ed *before* the register is extended. A crash can
therefore leave at most one logged-but-not-extended entry (or a torn, never-extended partial
line), never an extend the log does not explain. On start (:meth:`RuntimeEventLog.open`):

* no log (or an empty one): read the live register, write ``INIT sha384/<value>`` durably, then
  extend with ``H(INIT line)`` — Trustee's replay hashes the INIT line too;
* a torn last line (no trailing newline) is cut off: it was never extended;
* the replay equals the live register: nothing to do;
* the replay *without its last line* equals the live register: the crash hit between append
  and extend, so the last line is extended now;
* anything else: the log and the register disagree (another writer extended RTMR3, or the log
  was edited). That is fatal — evidence from here on could not be verified — so we fail closed
  with :class:`MeasurementError` rather than rewrite history.

All methods block (file I/O, sysfs); async callers use ``asyncio.to_thread``.
"""

from __future__ import annotations

import hmac
import os
import threading
from pathlib import Path

from attestation_agent import eventlog
from attestation_agent.eventlog import AaEventLogError
from attestation_agent.tdx import aael
from attestation_agent.tdx.errors import MeasurementError
from attestation_agent.tdx.rtmr import MeasurementRegister

DEFAULT_PATH = Path("/run/attestation-agent/eventlog")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class RuntimeEventLog:
    """The text AAEL at ``path`` backing ``register`` (RTMR3), SHA-384."""

    algorithm = aael.TDX_ALGORITHM

    def __init__(self, path: Path, register: MeasurementRegister) -> None:
        self.path = Path(path)
        self.register = register
        self._lock = threading.Lock()
        self._log: eventlog.AaEventLog | None = None
        self._needs_recovery = True

    # -- start-up and recovery -----------------------------------------------------------------

    def open(self) -> eventlog.AaEventLog:
        """Create or recover the log so that it replays to the live register (see module doc)."""
        with self._lock:
            return self._recover()

    def _recover(self) -> eventlog.AaEventLog:
        raw = self._read_raw()
        if raw and not raw.endswith(b"\n"):
            cut = raw.rfind(b"\n") + 1
            self._truncate(cut)
            raw = raw[:cut]
        if not raw:
            log = self._initialise()
        else:
            try:
                log = eventlog.parse_text(raw)
            except AaEventLogError as exc:
                raise MeasurementError(f"AA event log {self.path} is corrupt: {exc.message}",
                                       hint="the log cannot be repaired without breaking RTMR3 replay; reboot the "
                                            "TD (RTMR3 resets) or disable the event log") from None
            if log.algorithm != self.algorithm:
                raise MeasurementError(f"AA event log {self.path} uses {log.algorithm}; TDX RTMR3 needs sha384")
            try:
                pending = log.unextended_line(self.register.read())
            except AaEventLogError:
                raise MeasurementError(
                    f"AA event log {self.path} does not replay to the live RTMR3",
                    hint="something other than this agent extended RTMR3, or the log was modified; "
                         "evidence would fail verification, so runtime measurement is stopped") from None
            if pending is not None:
                self.register.extend(eventlog.line_digest(self.algorithm, pending))
        self._check(log)
        self._log = log
        self._needs_recovery = False
        return log

    def _initialise(self) -> eventlog.AaEventLog:
        init_value = self.register.read()
        log = eventlog.AaEventLog(self.algorithm, init_value, ())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "wb") as f:
            f.write(log.to_text().encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        _fsync_dir(self.path.parent)
        self.register.extend(eventlog.line_digest(self.algorithm, log.init))
        return log

    def _check(self, log: eventlog.AaEventLog) -> None:
        if not hmac.compare_digest(log.replay(), self.register.read()):
            raise MeasurementError(f"after recovery the AA event log {self.path} still does not replay to RTMR3",
                                   hint="another process is extending RTMR3 concurrently; stop it")

    def _read_raw(self) -> bytes:
        try:
            with open(self.path, "rb") as f:
                raw = f.read(eventlog.MAX_LOG_SIZE + 1)
        except FileNotFoundError:
            return b""
        except OSError as exc:
            raise MeasurementError(f"reading AA event log {self.path} failed: {exc.strerror or exc}") from None
        if len(raw) > eventlog.MAX_LOG_SIZE:
            raise MeasurementError(f"AA event log {self.path} exceeds {eventlog.MAX_LOG_SIZE} bytes")
        return raw

    def _truncate(self, size: int) -> None:
        with open(self.path, "r+b") as f:
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())

    # -- runtime -------------------------------------------------------------------------------

    def append(self, event: eventlog.AaEvent) -> bytes:
        """Log ``event`` durably, then extend the register; returns the new register value."""
        event = eventlog.make_event(event.domain, event.operation, event.content)
        with self._lock:
            if self._needs_recovery or self._log is None:
                self._recover()
            assert self._log is not None
            line = (event.line + "\n").encode("utf-8")
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            try:
                if os.write(fd, line) != len(line):
                    self._needs_recovery = True
                    raise MeasurementError(f"short write appending to AA event log {self.path}")
                os.fsync(fd)
            except OSError as exc:
                self._needs_recovery = True
                raise MeasurementError(f"appending to AA event log {self.path} failed: {exc.strerror or exc}") from None
            finally:
                os.close(fd)
            self._needs_recovery = True  # until the extend is known to have happened
            self.register.extend(eventlog.line_digest(self.algorithm, event.line))
            log = eventlog.AaEventLog(self._log.algorithm, self._log.init_value, (*self._log.events, event))
            self._log = log
            self._needs_recovery = False
            return log.replay()

    def snapshot(self) -> tuple[str, eventlog.AaEventLog]:
        """The log text and its parse, re-read from disk (what is sent as ``aa_eventlog``)."""
        with self._lock:
            if self._needs_recovery or self._log is None:
                self._recover()
            raw = self._read_raw()
            log = eventlog.parse_text(raw)
            return raw.decode("utf-8"), log
