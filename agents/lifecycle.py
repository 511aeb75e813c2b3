"""Process lifecycle shared by the daemons: signals, readiness, watchdog, graceful stop.

Every daemon has the same shape — start, report ready, run until told to stop, shut down
cleanly — and the same failure policy: bad input or config ends the process with one
structured log line and a distinct exit code, never with a traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import resource
import signal
from collections.abc import Awaitable, Callable, Coroutine
from types import TracebackType
from typing import Any, Self

from agents import sdnotify
from agents.errors import CaiError, ConfigError
from agents.logsetup import configure_logging, get_logger, is_configured

EXIT_OK = 0
EXIT_CAI_ERROR = 1
EXIT_CONFIG_ERROR = 2
EXIT_SOFTWARE = 70  # EX_SOFTWARE from sysexits.h: an internal error, i.e. a bug.
EXIT_INTERRUPTED = 130

_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

PR_SET_DUMPABLE = 4  # <linux/prctl.h>
PR_GET_DUMPABLE = 3


def harden_process() -> bool:
    """Make this process non-dumpable and disable core files; True if prctl succeeded.

    The daemons hold TEE private keys, KBS tokens and model keys in memory. A core dump
    would write them to persistent disk, and a dumpable process can be ptrace-attached or
    have ``/proc/<pid>/mem`` read by any process running as the same user (e.g. a
    co-located container sharing the uid). ``PR_SET_DUMPABLE 0`` closes both (the kernel
    also makes ``/proc/<pid>/*`` owned by root); ``RLIMIT_CORE 0`` is the belt to its braces.
    Where prctl is unavailable (not Linux) this logs and carries on rather than refusing
    to start: it is defence in depth, not the primary control.
    """
    log = get_logger("agents.lifecycle")
    with contextlib.suppress(ValueError, OSError):
        # Soft limit only: the hard limit is left alone so in-process users (tests) are not
        # changed irreversibly; a non-dumpable process is never dumped anyway.
        resource.setrlimit(resource.RLIMIT_CORE, (0, resource.getrlimit(resource.RLIMIT_CORE)[1]))
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        log.info("prctl unavailable: process stays dumpable", hint="only Linux supports PR_SET_DUMPABLE")
        return False
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    if prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        log.warning("prctl(PR_SET_DUMPABLE, 0) failed: process stays dumpable",
                    errno=ctypes.get_errno(), hint="check seccomp or LSM policy blocking prctl")
        return False
    return True


class Lifecycle:
    """Async context manager owning a daemon's run: ``async with Lifecycle("aa") as lc:``.

    Signals only set :attr:`stop_event`; the daemon decides how to wind down, which keeps
    shutdown in ordinary async code instead of inside a signal handler.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.stop_event = asyncio.Event()
        self.stop_reason: str | None = None
        self._log = get_logger("agents.lifecycle", service=name)
        self._ready = False
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._installed: dict[signal.Signals, Any] = {}

    async def __aenter__(self) -> Self:
        harden_process()
        self._loop = asyncio.get_running_loop()
        for sig in _STOP_SIGNALS:
            previous = signal.getsignal(sig)
            try:
                self._loop.add_signal_handler(sig, self._on_signal, sig)
            except (ValueError, RuntimeError, NotImplementedError):
                # Not the main thread (or not a Unix loop): the caller must stop us explicitly.
                self._log.debug("signal handler not installed", signal=sig.name)
                continue
            self._installed[sig] = previous
        interval = sdnotify.watchdog_interval()
        if interval is not None:
            self.spawn(self._watchdog(interval), name=f"{self.name}-watchdog")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        sdnotify.stopping()
        self._log.info("stopping", reason=self.stop_reason)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._restore_signals()

    def _restore_signals(self) -> None:
        assert self._loop is not None
        for sig, previous in self._installed.items():
            self._loop.remove_signal_handler(sig)
            # remove_signal_handler resets to the default; put back whatever was there before
            # (e.g. asyncio.run's own SIGINT handler).
            if previous is not None:
                with contextlib.suppress(ValueError, TypeError, OSError):
                    signal.signal(sig, previous)
        self._installed.clear()

    def _on_signal(self, sig: signal.Signals) -> None:
        self.request_stop(f"signal {sig.name}")

    async def _watchdog(self, interval: float) -> None:
        while True:
            sdnotify.watchdog()
            await asyncio.sleep(interval)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> asyncio.Task[Any]:
        """Run ``coro`` as a task owned by this lifecycle: cancelled on exit, and if it dies
        with an exception the whole daemon is asked to stop rather than limp on without it."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._log.error("background task failed", task=task.get_name(), error=str(exc))
            self.request_stop(f"task {task.get_name()} failed")

    def mark_ready(self, status: str | None = None) -> None:
        """Report readiness (READY=1) once; later calls are no-ops so callers need not track it."""
        if self._ready:
            return
        self._ready = True
        sdnotify.ready(status)
        self._log.info("ready", status=status)

    @property
    def is_ready(self) -> bool:
        """True after :meth:`mark_ready`."""
        return self._ready

    def request_stop(self, reason: str) -> None:
        """Ask the daemon to stop; the first reason given is the one reported."""
        if not self.stop_event.is_set():
            self.stop_reason = reason
            self._log.info("stop requested", reason=reason)
            self.stop_event.set()

    async def wait_stopped(self) -> None:
        """Block until a stop was requested (signal, :meth:`request_stop` or a failed task)."""
        await self.stop_event.wait()


def _cai_error_from(exc: BaseException) -> CaiError | None:
    """The CaiError to report for ``exc``, looking inside exception groups from TaskGroups."""
    if isinstance(exc, CaiError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        matched, rest = exc.split(CaiError)
        if matched is not None and rest is None:
            leaf: BaseException = matched
            while isinstance(leaf, BaseExceptionGroup):
                leaf = leaf.exceptions[0]
            return leaf if isinstance(leaf, CaiError) else None
    return None


def run(main: Callable[[], Awaitable[int | None]]) -> int:
    """Run ``main`` under ``asyncio.run`` and map its outcome to a process exit code.

    CaiError → one ``fatal`` log line, exit 2 for ConfigError and 1 otherwise (no traceback:
    it is an expected failure with an operator-facing message). Anything else is a bug →
    logged with its (redacted) traceback, exit 70.
    """
    if not is_configured():
        configure_logging()
    log = get_logger("agents.lifecycle")

    async def _main() -> int | None:
        return await main()

    try:
        result = asyncio.run(_main())
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or EXIT_OK
        return EXIT_CAI_ERROR
    except BaseException as exc:
        cai_error = _cai_error_from(exc)
        if cai_error is not None:
            log.error("fatal", error=str(cai_error), error_type=type(cai_error).__name__)
            return EXIT_CONFIG_ERROR if isinstance(cai_error, ConfigError) else EXIT_CAI_ERROR
        if not isinstance(exc, Exception | BaseExceptionGroup):
            raise
        log.error("unexpected error", exc_info=exc)
        return EXIT_SOFTWARE
    return result if isinstance(result, int) else EXIT_OK
