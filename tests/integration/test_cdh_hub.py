"""The data hub in-process against two real stand-in Trustees (one per dialect) and a real AA API.

Evidence flows as in production: KbsClient → AaClient → the AA's HTTP API on a Unix socket → the
sample attester. Resource files go to a real tmpfs mounted for the test.
"""

from __future__ import annotations

import asyncio
import io
import os
import stat
import subprocess
import sys

import pytest
from jwcrypto import jwk

from agents.health import HealthState, Metrics
from agents.http import free_port, start_site, unix_session
from agents.logsetup import configure_logging, reset_logging
from agents.retry import Backoff
from attestation_agent.aa_client import AaClient
from attestation_agent.api import build_app as build_aa_app
from attestation_agent.attesters.sample import SampleAttester
from attestation_agent.kbs.client import DialectMemory, KbsClientConfig
from attestation_agent.kbs.dialect import Dialect
from attestation_agent.kbs.resource import ResourcePath
from attestation_agent.service import AgentOptions, AttestationAgent
from data_hub import sealed
from data_hub.api import build_app
from data_hub.hub import DataHub, HubOptions
from data_hub.resource_map import ResourceEntry
from data_hub.store import ResourceStore
from data_hub.trustees import TrusteePool
from data_hub.unseal import Unsealer
from data_hub.uri import parse_kbs_uri
from trustee_standin.config import StandinConfig
from trustee_standin.server import StandinServer

MODEL = "default/aliyun/model-decryption-key"
ALT = "default/aliyun/crag-master-key"
FAST = Backoff(initial=0.02, maximum=0.1, attempts=sys.maxsize)


@pytest.fixture
def tmpfs(tmp_path):
    mount_point = tmp_path / "run"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)], check=True)
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def logs():
    stream = io.StringIO()
    configure_logging(level="debug", fmt="json", stream=stream, service="test")
    yield stream
    reset_logging()


@pytest.fixture
def values() -> dict[str, bytes]:
    return {MODEL: b"model-password-" + os.urandom(12).hex().encode(),
            ALT: b"crag-master-" + os.urandom(12).hex().encode(),
            "default/kek/1": os.urandom(32)}


def repository(root, items: dict[str, bytes]):
    for path, value in items.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(value)
    return root


@pytest.fixture
async def aa_socket(tmp_path):
    agent = AttestationAgent(SampleAttester(), AgentOptions(kbs=None))
    path = str(tmp_path / "aa.sock")
    runner = await start_site(build_aa_app(agent, HealthState(), Metrics()), unix_path=path)
    yield path
    await runner.cleanup()


def make_pool(aa_socket: str) -> TrusteePool:
    fast = Backoff(initial=0.01, maximum=0.05, attempts=2)
    return TrusteePool(AaClient(aa_socket), dialects=DialectMemory(),
                       config_factory=lambda url: KbsClientConfig(url=url, timeout=5.0, backoff=fast))


def entries(url_a: str, url_b: str, *extra: ResourceEntry) -> list[ResourceEntry]:
    return [ResourceEntry("model-key", parse_kbs_uri(f"kbs:///{MODEL}"), url_a),
            ResourceEntry("alt-key", parse_kbs_uri(f"kbs:///{ALT}"), url_b), *extra]


def assert_absent(text: str, *secrets: bytes) -> None:
    for value in secrets:
        for form in (value.hex(), value.decode("latin-1")):
            assert form not in text, "a secret value leaked"


async def test_two_trustees_materialise_with_api_and_no_leaks(tmp_path, tmpfs, aa_socket, values, logs):
    repo_a = repository(tmp_path / "repo-a", {MODEL: values[MODEL], "default/kek/1": values["default/kek/1"]})
    repo_b = repository(tmp_path / "repo-b", {ALT: values[ALT]})
    signer = jwk.JWK.generate(kty="EC", crv="P-256")
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    (keys_dir / "owner-key").write_text(signer.export_public())
    async with StandinServer(StandinConfig(dialect=Dialect.V0_1_0, repository=repo_a)) as a, \
            StandinServer(StandinConfig(dialect=Dialect.V0_4_0, repository=repo_b)) as b:
        pool = make_pool(aa_socket)
        health, metrics = HealthState(), Metrics()
        store = ResourceStore(tmpfs / "cai" / "resources")
        store.prepare()
        hub = DataHub(entries(a.api_url, b.url), store, pool.fetch, options=HubOptions(startup_backoff=FAST),
                      health=health, metrics=metrics)
        health.mark_started()

        async def on_demand(uri):
            return await pool.fetch(a.api_url, uri)

        unsealer = Unsealer(on_demand, keys_dir=keys_dir)
        sock = str(tmp_path / "cdh.sock")
        runner = await start_site(build_app(hub, unsealer, health, metrics, on_demand=on_demand), unix_path=sock)
        try:
            assert not health.ready
            await asyncio.wait_for(hub.start(), 30)
            assert hub.ready_event.is_set() and health.ready
            # Byte-equal, modes right, marker present, one RCAR per Trustee.
            assert (store.directory / "model-key").read_bytes() == values[MODEL]
            assert (store.directory / "alt-key").read_bytes() == values[ALT]
            assert stat.S_IMODE(os.stat(store.directory).st_mode) == 0o700
            for name in ("model-key", "alt-key"):
                assert stat.S_IMODE(os.stat(store.directory / name).st_mode) == 0o400
            assert (store.directory / ".ready").exists()
            assert a.faults.counters["attest"] == 1 and b.faults.counters["attest"] == 1
            assert (await pool.client(a.api_url).attestation()).dialect is Dialect.V0_1_0
            assert (await pool.client(b.url).attestation()).dialect is Dialect.V0_4_0

            envelope = sealed.seal(sealed.envelope_encrypt(b"unsealed-plaintext-42", values["default/kek/1"],
                                                           "kbs:///default/kek/1"), signer, "owner-key")
            forged = sealed.seal(sealed.VaultSecret(name=f"kbs:///{MODEL}", provider="kbs"),
                                 jwk.JWK.generate(kty="EC", crv="P-256"), "owner-key")
            vault = sealed.seal(sealed.VaultSecret(name=f"kbs:///{MODEL}", provider="kbs"), signer, "owner-key")
            bodies = []
            async with unix_session(sock) as http:
                async with http.get(f"http://localhost/cdh/resource/{ALT}") as resp:
                    assert resp.status == 200 and await resp.read() == values[ALT]
                async with http.get("http://localhost/cdh/resource/default/kek/1") as resp:  # on demand
                    assert resp.status == 200 and await resp.read() == values["default/kek/1"]
                async with http.get("http://localhost/cdh/resource/default/aliyun/..hidden") as resp:
                    assert resp.status == 400
                    body = await resp.json()
                    assert "kbs:///default/aliyun/..hidden" in body["error"]
                    bodies.append(str(body))
                async with http.get("http://localhost/cdh/resource/default/nope/missing") as resp:
                    assert resp.status == 404
                    bodies.append(await resp.text())
                async with http.post("http://localhost/cdh/unseal", data=envelope) as resp:
                    assert resp.status == 200 and await resp.read() == b"unsealed-plaintext-42"
                async with http.post("http://localhost/cdh/unseal", data=vault) as resp:
                    assert resp.status == 200 and await resp.read() == values[MODEL]
                async with http.post("http://localhost/cdh/unseal", data=forged) as resp:
                    assert resp.status == 403
                    bodies.append(await resp.text())
                    assert "does not verify" in bodies[-1]
                async with http.post("http://localhost/cdh/unseal", data=b"sealed.x.y") as resp:
                    assert resp.status == 400
                    bodies.append(await resp.text())
                async with http.get("http://localhost/cdh/status") as resp:
                    status = await resp.json()
                    bodies.append(str(status))
                async with http.get("http://localhost/readyz") as resp:
                    assert resp.status == 200
                async with http.get("http://localhost/metrics") as resp:
                    metrics_text = await resp.text()
            files = {r["file"]: r for r in status["resources"]}
            assert files["model-key"]["present"] and files["alt-key"]["trustee"] == b.url
            assert 'cai_cdh_resource_present{resource="model-key"} 1.0' in metrics_text
            secrets = (values[MODEL], values[ALT], values["default/kek/1"], b"unsealed-plaintext-42")
            assert_absent(metrics_text, *secrets)
            assert_absent("\n".join(bodies), *secrets)
        finally:
            await runner.cleanup()
            await pool.close()
    assert '"cdh.resource_ready"' in logs.getvalue()
    assert_absent(logs.getvalue(), *secrets)


async def test_trustee_down_at_start_then_up(tmp_path, tmpfs, aa_socket, values):
    port = free_port()
    repo_a = repository(tmp_path / "repo-a", {MODEL: values[MODEL]})
    repo_b = repository(tmp_path / "repo-b", {ALT: values[ALT]})
    async with StandinServer(StandinConfig(dialect=Dialect.V0_4_0, repository=repo_b)) as b:
        pool = make_pool(aa_socket)
        health = HealthState()
        health.mark_started()
        store = ResourceStore(tmpfs / "res")
        store.prepare()
        hub = DataHub(entries(f"http://127.0.0.1:{port}/api", b.api_url), store, pool.fetch,
                      options=HubOptions(startup_backoff=FAST, attempt_timeout=10), health=health)
        task = asyncio.create_task(hub.start())
        try:
            while hub.states["model-key"].attempts < 3:  # A keeps failing; the hub keeps retrying
                assert not task.done()
                await asyncio.sleep(0.02)
            assert hub.states["alt-key"].present and not hub.states["model-key"].present
            snap = health.snapshot()
            assert not snap["ready"] and "cannot reach KBS" in snap["checks"]["resource:model-key"]["detail"]
            assert not (store.directory / ".ready").exists() and not (store.directory / "model-key").exists()
            async with StandinServer(StandinConfig(dialect=Dialect.V0_1_0, repository=repo_a), port=port):
                await asyncio.wait_for(task, 20)
                assert health.ready and (store.directory / "model-key").read_bytes() == values[MODEL]
        finally:
            task.cancel()
            await pool.close()


async def test_refresh_reattests_replaces_and_keeps_last_good(tmp_path, tmpfs, aa_socket, values, logs):
    repo_a = repository(tmp_path / "repo-a", {MODEL: values[MODEL]})
    repo_b = repository(tmp_path / "repo-b", {ALT: values[ALT]})
    async with StandinServer(StandinConfig(dialect=Dialect.V0_1_0, repository=repo_a)) as a:
        b = StandinServer(StandinConfig(dialect=Dialect.V0_4_0, repository=repo_b))
        await b.start()
        pool = make_pool(aa_socket)
        store = ResourceStore(tmpfs / "res")
        store.prepare()
        hub = DataHub(entries(a.api_url, b.url), store, pool.fetch, options=HubOptions(startup_backoff=FAST))
        hub.health.mark_started()
        try:
            await asyncio.wait_for(hub.start(), 30)
            # Trustee A loses every session (restart): the next refresh re-attests transparently.
            new_model = b"rotated-model-" + os.urandom(8).hex().encode()
            (repo_a / MODEL).write_bytes(new_model)
            a.faults.inject("resource", "drop_sessions")
            await hub.refresh_once()
            assert a.faults.counters["attest"] == 2 and b.faults.counters["attest"] == 1
            assert (store.directory / "model-key").read_bytes() == new_model
            assert hub.states["model-key"].changes == 1 and hub.states["alt-key"].changes == 0
            # Trustee B goes away: refresh fails, the last good value stays, readiness stays.
            await b.stop()
            await hub.refresh_once()
            alt = hub.states["alt-key"]
            assert alt.last_refresh_error and "cannot reach KBS" in alt.last_refresh_error
            assert (store.directory / "alt-key").read_bytes() == values[ALT]
            assert hub.ready_event.is_set() and hub.health.ready
            assert hub.status()["resources"][1]["last_refresh_error"] == alt.last_refresh_error
        finally:
            await b.stop()
            await pool.close()
    assert_absent(logs.getvalue(), values[MODEL], values[ALT], new_model)


async def test_policy_deny_is_clear_and_writes_nothing(tmp_path, tmpfs, aa_socket, values):
    repo = repository(tmp_path / "repo", {MODEL: values[MODEL]})
    async with StandinServer(StandinConfig(dialect=Dialect.V0_1_0, repository=repo, resource_policy="deny_all")) as a:
        pool = make_pool(aa_socket)
        store = ResourceStore(tmpfs / "res")
        store.prepare()
        hub = DataHub([ResourceEntry("model-key", parse_kbs_uri(f"kbs:///{MODEL}"), a.url)], store, pool.fetch,
                      options=HubOptions(startup_backoff=FAST))
        task = asyncio.create_task(hub.start())
        try:
            while hub.states["model-key"].attempts < 2:
                await asyncio.sleep(0.02)
            error = hub.states["model-key"].last_error
            assert "resource policy denies default/aliyun/model-decryption-key" in error
            assert sorted(p.name for p in store.directory.iterdir()) == []
        finally:
            task.cancel()
            await pool.close()


async def test_unsealer_resource_path_is_trustee_exact(tmp_path, aa_socket, values):
    """Sanity: the pool fetches by ResourcePath, the same object the KBS client takes."""
    repo = repository(tmp_path / "repo", {MODEL: values[MODEL]})
    async with StandinServer(StandinConfig(dialect=Dialect.V0_4_0, repository=repo)) as a:
        pool = make_pool(aa_socket)
        try:
            uri = parse_kbs_uri(f"kbs://127.0.0.1:1/{MODEL}")  # the authority is ignored when a Trustee is given
            assert uri.path == ResourcePath.parse(MODEL)
            assert await pool.fetch(a.url, uri) == values[MODEL]
        finally:
            await pool.close()
