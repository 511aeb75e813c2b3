"""Benchmark: cold read of a large object through CachedSource vs the raw obstore download.

Starts a moto S3 server (subprocess, loopback), uploads one random object of ``--mib`` MiB and,
``-n`` times (alternating, so load drift hits both sides alike):

* **raw**: a new obstore client lists the prefix (timed separately), then one GET of the whole
  object into memory on the connection the listing opened (the anchor: the bytes themselves);
* **cachefs cold**: a fresh, empty cache directory and a new client; ``list_tree`` (the mount's
  start-up, timed separately, also opens the connection), then ``start_download`` (lazy mode)
  and a reader that reads the object sequentially in 1 MiB requests through
  ``CachedSource.read`` — the way a FUSE reader loads a model — until it has every byte. The
  ciphertext is written to the cache file meanwhile; the time until the whole object is on disk
  and its sidecar written ("cache complete") is printed too.

Both sides follow the same rules: a new client, the listing first, the data on the connection it
left open, the clock stopped when the reader holds the last byte; the order alternates per run
and each side starts after a short pause. Prints the medians and the
ratios without the listing (goal <= 1.15x) and with it on both sides, plus, for comparison with
older numbers, cold read + listing over the raw GET alone. moto serves a ranged GET by reading
the whole object, so several ranged GETs of one object cost several times the raw GET here; the
background fill uses one streamed GET per object by default (``--run-mib`` splits it to show
that effect).

    .venv/bin/python benchmarks/bench_objstore.py [-n 3] [--mib 256]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import obstore

from agents.logsetup import configure_logging
from cachefs.cache import CachedSource
from cachefs.sources.object_store import ObjectStoreConfig, ObjectStoreSource, store_options
from tests.s3server import MotoS3Server

BUCKET = "bench-models"
KEY = "vol/big.bin"
READ = 1 << 20
SETTLE = 0.3


async def raw_once(config: ObjectStoreConfig, size: int) -> tuple[float, float]:
    """Return (listing seconds, GET seconds) of a new client."""
    from obstore.store import S3Store

    store = S3Store(config.bucket, **store_options(config))
    t0 = time.perf_counter()
    listed = [meta async for chunk in obstore.list(store, chunk_size=1000) for meta in chunk]
    t1 = time.perf_counter()
    result = await obstore.get_async(store, "big.bin")
    data = await result.bytes_async()
    t2 = time.perf_counter()
    assert len(data) == size and listed
    return t1 - t0, t2 - t1


async def cached_once(config: ObjectStoreConfig, size: int, run_mib: int | None) -> tuple[float, float, float]:
    """Return (listing seconds, cold read seconds, seconds until the cache is complete on disk)."""
    with tempfile.TemporaryDirectory(prefix="bench-objstore-") as cache_dir:
        source = ObjectStoreSource(config)
        tuning = {} if run_mib is None else {"max_fetch_bytes": run_mib << 20}
        cached = CachedSource(source, cache_dir, **tuning)
        t0 = time.perf_counter()
        await cached.list_tree()
        t1 = time.perf_counter()
        download = cached.start_download()
        offset = 0
        while offset < size:
            data = await cached.read("big.bin", offset, READ)
            offset += len(data)
        t2 = time.perf_counter()
        await download
        t3 = time.perf_counter()
        assert cached.complete
        await cached.close()
    assert offset == size
    return t1 - t0, t2 - t1, t3 - t1


async def main(runs: int, mib: int, run_mib: int | None) -> None:
    configure_logging(level="warning")
    server = MotoS3Server().start()
    try:
        client = server.client()
        client.create_bucket(Bucket=BUCKET)
        size = mib << 20
        client.put_object(Bucket=BUCKET, Key=KEY, Body=os.urandom(size))
        config = ObjectStoreConfig(
            BUCKET, "vol", server.url, access_key_id="bench-key", secret_access_key="bench-secret"
        )
        raw_list: list[float] = []
        raw: list[float] = []
        listing: list[float] = []
        cold: list[float] = []
        complete: list[float] = []
        await raw_once(config, size)  # warm moto's file cache and the connection path
        for run in range(runs):
            # Alternate which side goes first, and let the server and the kernel settle before
            # each side (moto frees the previous 128 MiB response, the cache file is unlinked),
            # so neither side inherits the other's clean-up.
            for side in ("raw", "cached") if run % 2 == 0 else ("cached", "raw"):
                await asyncio.sleep(SETTLE)
                if side == "raw":
                    lst, rd = await raw_once(config, size)
                    raw_list.append(lst)
                    raw.append(rd)
                else:
                    lst, rd, done = await cached_once(config, size, run_mib)
                    listing.append(lst)
                    cold.append(rd)
                    complete.append(done)
        med = statistics.median
        r, rl, c, li, done = med(raw), med(raw_list), med(cold), med(listing), med(complete)
        raw_both = med(a + b for a, b in zip(raw_list, raw, strict=True))
        both = med(a + b for a, b in zip(listing, cold, strict=True))
        fetch = "one per object (default)" if run_mib is None else f"{run_mib} MiB"
        print(f"object: {mib} MiB from moto on loopback, {runs} runs (median), background GET size: {fetch}")
        print(f"raw listing (new client):          {rl:.3f} s")
        print(f"raw obstore GET:                   {r:.3f} s  {size / r / 1e6:8.1f} MB/s")
        print(f"raw listing+GET:                   {raw_both:.3f} s")
        print(f"CachedSource listing (new client): {li:.3f} s")
        print(f"CachedSource cold read:            {c:.3f} s  {size / c / 1e6:8.1f} MB/s")
        print(f"CachedSource listing+cold read:    {both:.3f} s")
        print(f"CachedSource cache complete:       {done:.3f} s (from the start of the download)")
        print(f"ratio cold read/raw GET:           {c / r:.2f}x (goal <= 1.15x)")
        print(f"ratio (listing+cold)/(listing+GET): {both / raw_both:.2f}x")
        print(f"ratio (listing+cold)/raw GET:      {both / r:.2f}x (listing on one side only, as before)")
    finally:
        server.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=3, help="runs per side")
    parser.add_argument("--mib", type=int, default=256, help="object size in MiB")
    parser.add_argument("--run-mib", type=int, default=None, help="max bytes per background GET (max_fetch_bytes)")
    args = parser.parse_args()
    asyncio.run(main(args.n, args.mib, args.run_mib))
