"""Attest + fetch one resource against the local Trustee stand-in: our KbsClient vs a bare anchor.

The anchor is the same HTTP exchange done by a minimal hand-written flow (same crypto: fresh TEE
key, sample evidence, JWE decryption) with no retries, dialect detection or logging, so it
measures what the stand-in and the protocol cost by themselves. Both run in the same process,
interleaved, against the same server. Prints medians and the ratio per dialect.

    .venv/bin/python benchmarks/bench_kbs.py [-n 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from agents.logsetup import configure_logging
from attestation_agent.attesters.sample import SampleAttester
from attestation_agent.evidence import LocalEvidence, compose
from attestation_agent.kbs import cookies, jwe, messages
from attestation_agent.kbs.client import DialectMemory, KbsClient, KbsClientConfig
from attestation_agent.kbs.dialect import Dialect
from attestation_agent.kbs.tee_key import DEFAULT_ALGORITHM, TeeKey
from trustee_standin.config import StandinConfig
from trustee_standin.server import StandinServer

RESOURCE = "default/aliyun/model-decryption-key"


async def anchor(http: aiohttp.ClientSession, url: str, dialect: Dialect) -> bytes:
    key = TeeKey.generate(DEFAULT_ALGORITHM[dialect])
    async with http.post(f"{url}/kbs/v0/auth", json=messages.auth_request(dialect, "sample")) as resp:
        challenge = messages.parse_challenge(await resp.read())
        sid = cookies.session_id_from_set_cookie(resp.headers.getall("Set-Cookie", []))
    composed = await compose(LocalEvidence(SampleAttester()), dialect, challenge.nonce, key.public_jwk())
    body = messages.attest_request(dialect, nonce=challenge.nonce, tee_pubkey=key.public_jwk(),
                                   primary_evidence=composed.primary, additional_evidence=composed.additional)
    headers = {"Cookie": cookies.cookie_header(sid)}
    async with http.post(f"{url}/kbs/v0/attest", json=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
    async with http.get(f"{url}/kbs/v0/resource/{RESOURCE}", headers=headers) as resp:
        return jwe.decrypt_resource(await resp.read(), key)


async def ours(url: str, dialect: Dialect, memory: DialectMemory) -> bytes:
    async with KbsClient(KbsClientConfig(url=url), LocalEvidence(SampleAttester()), dialects=memory) as client:
        return await client.get_resource(RESOURCE)


async def main(n: int) -> None:
    configure_logging(level="error")
    with tempfile.TemporaryDirectory() as tmp:
        repo = Path(tmp) / RESOURCE
        repo.parent.mkdir(parents=True)
        repo.write_bytes(b"0123456789abcdef" * 4)
        print(f"attest + fetch one resource, median of {n} (stand-in on 127.0.0.1, same process)")
        print(f"{'dialect':8} {'stand-in alone (anchor)':>24} {'cai KbsClient':>15} {'ratio':>7} {'first call':>11}")
        for dialect in Dialect:
            async with StandinServer(StandinConfig(dialect=dialect, repository=Path(tmp),
                                                   fault_endpoint=False)) as trustee:
                memory = DialectMemory()
                started = time.perf_counter()
                await ours(trustee.url, dialect, memory)  # first call includes dialect detection
                first = (time.perf_counter() - started) * 1000
                a, o = [], []
                async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
                    for _ in range(n):
                        t = time.perf_counter()
                        assert await anchor(http, trustee.url, dialect) == repo.read_bytes()
                        a.append((time.perf_counter() - t) * 1000)
                        t = time.perf_counter()
                        assert await ours(trustee.url, dialect, memory) == repo.read_bytes()
                        o.append((time.perf_counter() - t) * 1000)
                ma, mo = statistics.median(a), statistics.median(o)
                print(f"{dialect.value:8} {ma:21.2f} ms {mo:12.2f} ms {mo / ma:6.2f}x {first:8.2f} ms")
        print(json.dumps({"note": "ratio = cai client / anchor; RSA-2048 key generation dominates 0.1.0"}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=30)
    asyncio.run(main(parser.parse_args().n))
