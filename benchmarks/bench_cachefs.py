"""cachefs vs the real gocryptfs on the same volume, same run, warm ciphertext.

Measures, for each side on a *fresh* mount (so neither serves from its page cache):
  * first sequential read (1 MiB reads) of the big file, MB/s;
  * re-read on the same mount (cachefs keeps the page cache; stock gocryptfs re-decrypts);
  * random 4 KiB reads per second (distinct block-aligned offsets).
Prints both numbers and the ratio cachefs/gocryptfs, plus each daemon's CPU seconds per GiB of the
first read (steadier than MB/s on a shared machine: it does not count time spent waiting for a
CPU). Run on a quiet machine; ``--size-mib 1024`` is the acceptance size (default). Example:
``python benchmarks/bench_cachefs.py --size-mib 128``. The decryption engine is reported; the
daemon's ``CAI_CACHEFS_DECRYPT_ENGINE`` (``python`` forces the fallback) is passed through.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from cachefs.accel import describe as describe_engine
from cachefs.testing import gocryptfs_init, gocryptfs_mount, unmount, wait_mounted

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def seq_read(path: Path) -> float:
    fd = os.open(path, os.O_RDONLY)
    total = 0
    start = time.perf_counter()
    try:
        while chunk := os.read(fd, MiB):
            total += len(chunk)
    finally:
        os.close(fd)
    return total / (time.perf_counter() - start) / 1e6


def random_reads(path: Path, count: int, seed: int = 3) -> float:
    size = os.stat(path).st_size
    offsets = random.Random(seed).sample(range(size // 4096), min(count, size // 4096))
    fd = os.open(path, os.O_RDONLY)
    start = time.perf_counter()
    try:
        for block in offsets:
            os.pread(fd, 4096, block * 4096)
    finally:
        os.close(fd)
    return len(offsets) / (time.perf_counter() - start)


def daemon_pid(mnt: Path) -> int | None:
    """The FUSE daemon serving ``mnt`` (gocryptfs forks into the background), found via /proc."""
    needle = str(mnt).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                args = f.read().split(b"\0")
        except OSError:
            continue
        if needle in args and any(a.endswith((b"gocryptfs", b"python", b"python3")) or b"python3." in a
                                  for a in args[:1]):
            return int(entry)
    return None


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of ``pid`` (all threads), or NaN when unknown."""
    if pid is None:
        return float("nan")
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def warm_ciphertext(cipher: Path) -> None:
    for dirpath, _, files in os.walk(cipher):
        for name in files:
            with open(Path(dirpath) / name, "rb") as f:
                while f.read(8 * MiB):
                    pass


class CachefsMount(AbstractContextManager[Path]):
    def __init__(self, cipher: Path, mnt: Path, key: Path) -> None:
        self.cipher, self.mnt, self.key = cipher, mnt, key

    def __enter__(self) -> Path:
        self.mnt.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("CAI_", "MODEL_")) or k == "CAI_CACHEFS_DECRYPT_ENGINE"}
        env["CAI_CACHEFS_ALLOW_OTHER"] = "false"
        self.proc = subprocess.Popen([sys.executable, "-m", "agents.cli", "cachefs", "--cipher-dir", str(self.cipher),
                                      "--mount-point", str(self.mnt), "--key-file", str(self.key),
                                      "--log-level", "warning"], cwd=REPO, env=env)
        wait_mounted(self.mnt, 60)
        os.stat(self.mnt)
        return self.mnt

    def __exit__(self, *exc: object) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)
        unmount(self.mnt)


def measure(mount: Callable[[], AbstractContextManager[Path]], name: str, rel: str,
            random_count: int) -> dict[str, float]:
    with mount() as mnt:
        pid = daemon_pid(mnt)
        cpu0 = cpu_seconds(pid)
        first = seq_read(mnt / rel)
        cpu = (cpu_seconds(pid) - cpu0) / (os.stat(mnt / rel).st_size / (1 << 30))
        again = seq_read(mnt / rel)
    with mount() as mnt:
        rand = random_reads(mnt / rel, random_count)
    print(f"  {name:10s} first read {first:8.0f} MB/s ({cpu:4.2f} CPU s/GiB)   re-read {again:8.0f} MB/s   "
          f"random 4K {rand:8.0f} reads/s", flush=True)
    return {"first": first, "again": again, "random": rand, "cpu": cpu}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--random-reads", type=int, default=20000)
    parser.add_argument("--workdir", help="keep the volume here between runs (default: a temp dir)")
    args = parser.parse_args()
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="bench-cachefs-"))
    work.mkdir(parents=True, exist_ok=True)
    key, cipher = work / "key", work / "cipher"
    rel = "model.safetensors"
    try:
        if not (cipher / "gocryptfs.conf").exists() or not (work / f"ok-{args.size_mib}").exists():
            shutil.rmtree(cipher, ignore_errors=True)
            key.write_bytes(b"benchmark password\n")
            gocryptfs_init(cipher, key, scryptn=10)
            with gocryptfs_mount(cipher, work / "rw", key, ro=False) as mnt, open(mnt / rel, "wb") as f:
                for _ in range(args.size_mib):
                    f.write(os.urandom(MiB))
            (work / f"ok-{args.size_mib}").touch()
        warm_ciphertext(cipher)
        print(f"volume: {args.size_mib} MiB file, ciphertext warm in page cache; cachefs engine: "
              f"{os.environ.get('CAI_CACHEFS_DECRYPT_ENGINE') or describe_engine()['default_engine']}", flush=True)
        gc = measure(lambda: gocryptfs_mount(cipher, work / "gc", key), "gocryptfs", rel, args.random_reads)
        ours = measure(lambda: CachefsMount(cipher, work / "cfs", key), "cachefs", rel, args.random_reads)
        print(f"ratio cachefs/gocryptfs: first read {ours['first'] / gc['first']:.2f}x, "
              f"re-read {ours['again'] / gc['again']:.2f}x, random 4K {ours['random'] / gc['random']:.2f}x, "
              f"first-read daemon CPU {ours['cpu'] / gc['cpu']:.2f}x")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
