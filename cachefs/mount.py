"""Running a pyfuse3 session on the asyncio loop: stale-mount cleanup, readiness probe, unmount.

pyfuse3 allows one session per process, which matches one daemon per model mount.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import select
import subprocess
from collections.abc import Awaitable, Callable

import pyfuse3
import pyfuse3.asyncio

from agents.logsetup import get_logger
from cachefs.errors import CachefsError
from cachefs.fs import CachefsOperations, mount_options, set_read_ahead
from cachefs.volume import ROOT_INODE

log = get_logger("cachefs.mount")


class MountError(CachefsError):
    """The mount point is unusable or the kernel refused the mount."""


def _mounted_here(path: str) -> bool:
    real = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo") as f:
            return any(line.split()[4] == real for line in f)
    except OSError:
        return os.path.ismount(path)


_pollers: dict[int, select.poll] = {}


async def _wait_fuse_readable(fd: int) -> None:
    """pyfuse3's asyncio ``wait_readable``, minus the event-loop round trip when a request is queued.

    pyfuse3 waits for every request with a fresh future plus ``add_reader``/``remove_reader`` (two
    ``epoll_ctl`` calls and three loop iterations). When the kernel already has the next request
    queued (typical under load, and for a reader issuing reads back to back) one ``poll(0)`` is
    enough; measured 1.3-1.6x more random 4 KiB reads per second. Safe because the worker reads
    ``/dev/fuse`` right after this returns without yielding, so no other task can take the request.
    """
    poller = _pollers.get(fd)
    if poller is None:
        poller = _pollers[fd] = select.poll()
        poller.register(fd, select.POLLIN)
    if poller.poll(0):
        return
    await _pyfuse3_wait_readable(fd)


_pyfuse3_wait_readable = pyfuse3.asyncio.wait_readable


def enable_asyncio() -> None:
    """Switch pyfuse3 to asyncio with the faster request wait (idempotent)."""
    pyfuse3.asyncio.enable()
    pyfuse3.asyncio.wait_readable = _wait_fuse_readable
    _pollers.clear()


def prepare_mount_point(path: str) -> bool:
    """Create the mount point, or clear a stale FUSE mount left by a crashed previous run.

    Returns True if a stale mount was cleared (lazily: processes still holding files of the old
    mount keep getting errors for them, never bytes, while the new mount serves everyone else).
    """
    try:
        os.stat(path)
        stale = _mounted_here(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            os.makedirs(path, mode=0o755, exist_ok=True)
            return False
        stale = exc.errno in (errno.ENOTCONN, errno.EIO, errno.ECONNABORTED) or _mounted_here(path)
        if not stale:
            raise MountError(f"mount point {path} is unusable: {exc.strerror}") from None
    if stale:
        log.warning("cachefs.stale_mount", mount_point=path, action="fusermount3 -uz",
                    cause="a previous cachefs ended without unmounting (crash, SIGKILL or OOM kill)")
        result = subprocess.run(["fusermount3", "-uz", path], capture_output=True, text=True, timeout=30)
        if result.returncode != 0 and _mounted_here(path):
            raise MountError(f"cannot clear the existing mount at {path}: {result.stderr.strip()}",
                             hint="unmount it manually (fusermount3 -uz) or choose another mount point")
        log.info("cachefs.stale_mount_recovered", mount_point=path,
                 note="files still open on the old mount keep failing; reopen them to read the new mount")
    if not os.path.isdir(path):
        raise MountError(f"mount point {path} is not a directory")
    return stale


def probe_mount(path: str) -> None:
    """Blocking: ``stat`` the mount root through the kernel; it must be our root inode."""
    st = os.stat(path)
    if st.st_ino != ROOT_INODE:
        raise MountError(f"{path} answered, but not from cachefs (inode {st.st_ino})")


async def run_mount(ops: CachefsOperations, mountpoint: str, *, allow_other: bool, read_ahead_kb: int,
                    on_ready: Callable[[], None], stop: Callable[[], Awaitable[None]]) -> None:
    """Mount, report ready once the mount answers, serve until ``stop`` returns or the mount goes away."""
    enable_asyncio()
    try:
        pyfuse3.init(ops, mountpoint, mount_options(allow_other=allow_other))
    except RuntimeError as exc:
        raise MountError(f"mounting at {mountpoint} failed: {exc}",
                         hint="check /dev/fuse, CAP_SYS_ADMIN (or fusermount3) and the mount point") from None
    main = asyncio.get_running_loop().create_task(pyfuse3.main(), name="pyfuse3-main")
    unmounted = False
    try:
        await asyncio.to_thread(probe_mount, mountpoint)
        if read_ahead_kb:
            await asyncio.to_thread(set_read_ahead, mountpoint, read_ahead_kb)
        on_ready()
        stopper = asyncio.get_running_loop().create_task(stop())
        done, _ = await asyncio.wait({main, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if main in done:
            unmounted = True  # someone ran fusermount -u: the session ended
            stopper.cancel()
            with contextlib.suppress(BaseException):
                main.result()
            log.warning("cachefs.unmounted_externally", mount_point=mountpoint)
        else:
            pyfuse3.terminate()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(main), 10)
    finally:
        if not main.done():
            main.cancel()
            with contextlib.suppress(BaseException):
                await main
        pyfuse3.close(unmount=not unmounted)
        log.info("cachefs.unmounted", mount_point=mountpoint)
