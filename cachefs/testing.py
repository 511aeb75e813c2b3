"""Helpers for tests and benchmarks: plaintext trees, real-gocryptfs volumes, mounts.

Development only: it drives the real ``gocryptfs`` binary (the format oracle) and
``fusermount3``. Nothing in the daemon imports it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

LONG_NAME = "L" * 190 + "-long-name"  # 200 chars: stored as gocryptfs.longname.*


def make_plain_tree(root: Path, *, big_mib: int = 3, seed: int = 1) -> None:
    """The acceptance tree: edge sizes, a big random file, a sparse file, odd names, dirs, a symlink."""
    rnd = __import__("random").Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "empty").write_bytes(b"")
    (root / "one").write_bytes(b"x")
    for n in (4095, 4096, 4097):
        (root / f"size-{n}").write_bytes(rnd.randbytes(n))
    (root / "big.bin").write_bytes(rnd.randbytes(big_mib << 20))
    with open(root / "sparse.bin", "wb") as f:
        f.write(b"head" * 100)
        f.seek(5 << 20)
        f.write(b"tail" * 1000)
    (root / LONG_NAME).write_bytes(b"long name content\n")
    (root / "ünïcødé name with spaces ✓.txt").write_bytes("hällo wörld\n".encode())
    nested = root / "a" / "b" / "c"
    nested.mkdir(parents=True, exist_ok=True)
    (nested / "deep.txt").write_bytes(b"deep\n" * 1000)
    (root / "empty-dir").mkdir(exist_ok=True)
    (root / "a" / "empty-sub").mkdir(exist_ok=True)
    os.symlink("a/b/c/deep.txt", root / "link-to-deep")


def tree_digest(root: Path) -> dict[str, tuple[str, str | int]]:
    """Relative path → (kind, sha256 | symlink target | 0) for every entry under ``root``."""
    out: dict[str, tuple[str, str | int]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = str(full.relative_to(root))
            if full.is_symlink():
                out[rel] = ("symlink", os.readlink(full))
            elif full.is_dir():
                out[rel] = ("dir", 0)
            else:
                h = hashlib.sha256()
                with open(full, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                out[rel] = ("file", h.hexdigest())
    return out


def _run(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, capture_output=True, text=True, timeout=timeout)


def gocryptfs_init(cipher: Path, passfile: Path, *, scryptn: int = 10) -> None:
    """Create an empty volume with the real gocryptfs (default flags; low scrypt cost for speed)."""
    cipher.mkdir(parents=True, exist_ok=True)
    _run(["gocryptfs", "-init", "-q", "-scryptn", str(scryptn), "-passfile", str(passfile), str(cipher)])


def wait_mounted(mnt: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mnt):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{mnt} did not become a mount point")
        time.sleep(0.05)


def unmount(mnt: Path) -> None:
    """Unmount a FUSE mount (lazily if busy); no error if it is not mounted."""
    if os.path.ismount(mnt):
        result = subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True, timeout=30)
        if result.returncode != 0:
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True, timeout=30)


@contextlib.contextmanager
def gocryptfs_mount(cipher: Path, mnt: Path, passfile: Path, *, ro: bool = True) -> Iterator[Path]:
    """Mount a volume with the real gocryptfs for the duration of the block."""
    mnt.mkdir(parents=True, exist_ok=True)
    args = ["gocryptfs", "-q", "-passfile", str(passfile)]
    if ro:
        args.append("-ro")
    _run([*args, str(cipher), str(mnt)])
    try:
        wait_mounted(mnt)
        yield mnt
    finally:
        unmount(mnt)


def copy_tree_into(src: Path, dst: Path) -> None:
    """Copy a plaintext tree into a mounted volume, keeping holes and symlinks (``cp -a --sparse``)."""
    _run(["cp", "-a", "--sparse=always", f"{src}/.", str(dst)], timeout=300)


def make_gocryptfs_volume(plain: Path, cipher: Path, passfile: Path, workdir: Path) -> None:
    """Encrypt ``plain`` into ``cipher`` with the real gocryptfs (init, mount rw, copy, unmount)."""
    gocryptfs_init(cipher, passfile)
    with gocryptfs_mount(cipher, workdir / "gocryptfs-rw", passfile, ro=False) as mnt:
        copy_tree_into(plain, mnt)
