"""schemathesis against docs/openapi/{aa,cdh}.yaml: the real AA and CDH apps with a real Trustee stand-in.

The AA (sample attester, KBS = a stand-in Trustee) serves its api-server-rest listener on loopback
TCP with the ``/cdh/resource`` bridge to the data hub's Unix socket; the data hub (one configured
resource, on-demand fetches from the same Trustee, sealed-secret unsealing) serves its full API on
another loopback port. Every generated request (valid and invalid by the schema) must get a
documented status whose body conforms to the document; no 5xx except the documented ones (502/503:
Trustee or a peer down, 501: no runtime measurements on this TEE) — a 500 is a bug; and no error
body may contain the secret values (fresh random ones per run).
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import given
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from agents.health import HealthState, Metrics
from agents.http import bound_port, free_port, start_site
from agents.retry import Backoff
from attestation_agent.aa_client import AaClient
from attestation_agent.api import build_app as build_aa_app
from attestation_agent.attesters.sample import SampleAttester
from attestation_agent.kbs.client import DialectMemory, KbsClientConfig
from attestation_agent.kbs.dialect import Dialect
from attestation_agent.service import AgentOptions, AttestationAgent
from data_hub.api import build_app as build_cdh_app
from data_hub.hub import DataHub, HubOptions
from data_hub.resource_map import ResourceEntry
from data_hub.store import ResourceStore
from data_hub.trustees import TrusteePool
from data_hub.unseal import Unsealer
from data_hub.uri import parse_kbs_uri
from tests.conftest import REPO
from tests.fuzz.conftest import fuzz_settings
from trustee_standin.config import StandinConfig
from trustee_standin.server import StandinServer

OPENAPI = REPO / "docs" / "openapi"
MODEL = "default/aliyun/model-decryption-key"
OTHER = "default/aliyun/crag-master-key"
CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]
ALLOWED_5XX = {502, 503}
ALLOWED_5XX_BY_PATH = {"/aa/aael": {501}}


class Chain:
    """AA + CDH + Trustee stand-in on a private event loop in a thread (schemathesis calls are sync)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.secrets = {MODEL: b"model-password-" + os.urandom(12).hex().encode(),
                        OTHER: b"crag-master-" + os.urandom(12).hex().encode()}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-chain", daemon=True)
        self._cleanups: list = []

    def __enter__(self) -> Chain:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(60)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    async def _start(self) -> None:
        repo = self.root / "repository"
        for path, value in self.secrets.items():
            (repo / path).parent.mkdir(parents=True, exist_ok=True)
            (repo / path).write_bytes(value)
        self.trustee = StandinServer(StandinConfig(dialect=Dialect.V0_4_0, repository=repo))
        await self.trustee.__aenter__()
        self._cleanups.append(lambda: self.trustee.__aexit__(None, None, None))
        fast = Backoff(initial=0.01, maximum=0.05, attempts=2)
        agent = AttestationAgent(SampleAttester(), AgentOptions(kbs=KbsClientConfig(
            url=self.trustee.api_url, timeout=10.0, backoff=fast)))
        self._cleanups.append(agent.close)
        aa_sock, cdh_sock = str(self.root / "aa.sock"), str(self.root / "cdh.sock")
        await self._site(build_aa_app(agent, HealthState(), Metrics()), unix_path=aa_sock)
        aa_rest = await self._site(build_aa_app(agent, HealthState(), Metrics(), rest_bridge=True,
                                                cdh_socket=cdh_sock), host="127.0.0.1", port=0)
        self.aa_url = f"http://127.0.0.1:{bound_port(aa_rest)}"

        pool = TrusteePool(AaClient(aa_sock), dialects=DialectMemory(),
                           config_factory=lambda url: KbsClientConfig(url=url, timeout=10.0, backoff=fast))
        self._cleanups.append(pool.close)
        store = ResourceStore(Path(tempfile.mkdtemp(prefix="cai-fuzz-", dir="/dev/shm")) / "resources")
        store.prepare()
        health, metrics = HealthState(), Metrics()
        entry = ResourceEntry("model-key", parse_kbs_uri(f"kbs:///{MODEL}"), self.trustee.api_url)
        hub = DataHub([entry], store, pool.fetch, options=HubOptions(), health=health, metrics=metrics)
        health.mark_started()

        async def on_demand(uri):
            return await pool.fetch(self.trustee.api_url, uri)

        unsealer = Unsealer(on_demand, keys_dir=None)
        await asyncio.wait_for(hub.start(), 30)
        await self._site(build_cdh_app(hub, unsealer, health, metrics, on_demand=on_demand), unix_path=cdh_sock)
        cdh_tcp = await self._site(build_cdh_app(hub, unsealer, health, metrics, on_demand=on_demand),
                                   host="127.0.0.1", port=0)
        self.cdh_url = f"http://127.0.0.1:{bound_port(cdh_tcp)}"
        self._cleanups.append(lambda: asyncio.to_thread(_rmtree, store.directory.parent))

    async def _site(self, app, **where):
        runner = await start_site(app, **where)
        self._cleanups.append(runner.cleanup)
        return runner

    async def _stop(self) -> None:
        for cleanup in reversed(self._cleanups):
            try:
                await cleanup()
            except Exception:
                pass


def _rmtree(path: Path) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Iterator[Chain]:
    with Chain(tmp_path_factory.mktemp("chain")) as running:
        yield running


def _secret_forms(chain: Chain) -> list[bytes]:
    return [form for value in chain.secrets.values() for form in (value, value.hex().encode())]


def _check(chain: Chain, case, response) -> None:
    status = response.status_code
    path = case.operation.path
    assert status < 500 or status in ALLOWED_5XX | ALLOWED_5XX_BY_PATH.get(path, set()), (
        f"{case.method} {case.formatted_path} answered {status}: {response.text[:300]}")
    case.validate_response(response, checks=CHECKS)
    if status >= 400:
        for form in _secret_forms(chain):
            assert form not in response.content, f"{case.method} {path}: a secret value is in an error body"


def _operations(name: str) -> list:
    schema = schemathesis.openapi.from_path(OPENAPI / name)
    return [result.ok() for result in schema.get_all_operations()]


def _runs(name: str) -> list[tuple]:
    """(operation, mode) pairs; negative data only exists for operations with parameters or a body."""
    return [(op, mode) for op in _operations(name) for mode in schemathesis.GenerationMode
            if mode is schemathesis.GenerationMode.POSITIVE or len(op.query) + len(op.path_parameters) + len(op.body)]


AA_RUNS = _runs("aa.yaml")
CDH_RUNS = _runs("cdh.yaml")


def _run(chain: Chain, operation, mode, base_url: str, scale: float) -> None:
    session = requests.Session()

    @fuzz_settings(scale=scale)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        response = case.call(base_url=base_url, session=session, timeout=30)
        _check(chain, case, response)

    try:
        run()
    finally:
        session.close()


@pytest.mark.parametrize(("operation", "mode"), AA_RUNS, ids=[f"{op.label}-{m.value}" for op, m in AA_RUNS])
def test_aa_api(chain, operation, mode):
    # /aa/token attests each time (a full RCAR round trip): fewer examples keep CI bounded.
    _run(chain, operation, mode, chain.aa_url, 0.15 if operation.path == "/aa/token" else 0.3)


@pytest.mark.parametrize(("operation", "mode"), CDH_RUNS, ids=[f"{op.label}-{m.value}" for op, m in CDH_RUNS])
def test_cdh_api(chain, operation, mode):
    _run(chain, operation, mode, chain.cdh_url, 0.3)


def test_known_hostile_requests(chain):
    """Regressions found by this campaign, replayed explicitly (see docs/fuzzing.md)."""
    with requests.Session() as http:
        # deeply nested JSON used to escape as RecursionError -> 500
        response = http.post(f"{chain.aa_url}/aa/aael", data=b"[" * 5000, timeout=30)
        assert response.status_code == 400 and "error" in response.json()
        # an unsupported token type is the client's mistake, not an internal error
        response = http.get(f"{chain.aa_url}/aa/token", params={"token_type": "bogus"}, timeout=30)
        assert response.status_code == 400 and "not supported" in response.json()["error"]
        # the configured resource through the bridge and the data hub: the value, byte for byte
        response = http.get(f"{chain.aa_url}/cdh/resource/{MODEL}", timeout=30)
        assert response.status_code == 200 and response.content == chain.secrets[MODEL]
        response = http.get(f"{chain.cdh_url}/cdh/resource/{OTHER}", timeout=30)
        assert response.status_code == 200 and response.content == chain.secrets[OTHER]
        response = http.get(f"{chain.cdh_url}/cdh/resource/default/aliyun/%2e%2e", timeout=30)
        assert response.status_code == 400 and json.loads(response.content)["error"]


class CachefsDaemon:
    """A real ``cai cachefs`` serving a local gocryptfs volume; its API on loopback TCP (``health_port``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._password = os.urandom(16).hex().encode() + b"\n"
        self.weights = os.urandom(20000)
        self.secrets = {"password": self._password.strip(), "plaintext": self.weights[:64]}

    def __enter__(self) -> CachefsDaemon:
        from cachefs.encryptor import encrypt_directory
        from tests.integration.test_cachefs_mount import Daemon

        plain, cipher = self.root / "plain", self.root / "cipher"
        for directory in (plain, cipher):
            directory.mkdir()
        (plain / "weights.bin").write_bytes(self.weights)
        encrypt_directory(plain, cipher, self._password)
        key = self.root / "model-key"
        key.write_bytes(self._password)
        key.chmod(0o400)
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.daemon = Daemon(cipher, self.root / "model", key, CAI_CACHEFS_HEALTH_PORT=str(port),
                             CAI_CACHEFS_SOCKET=str(self.root / "cachefs.sock"))
        try:
            self.daemon.wait_ready()
        except BaseException:
            self.daemon.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.daemon.stop()


@pytest.fixture(scope="module")
def cachefs_daemon(tmp_path_factory) -> Iterator[CachefsDaemon]:
    with CachefsDaemon(tmp_path_factory.mktemp("cachefs-api")) as daemon:
        yield daemon


CACHEFS_RUNS = _runs("cachefs.yaml")


@pytest.mark.parametrize(("operation", "mode"), CACHEFS_RUNS, ids=[f"{op.label}-{m.value}" for op, m in CACHEFS_RUNS])
def test_cachefs_api(cachefs_daemon, operation, mode):
    """Every answer is documented, and none carries the volume password or model plaintext (not even a 200)."""
    session = requests.Session()

    @fuzz_settings(scale=0.1)
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        response = case.call(base_url=cachefs_daemon.url, session=session, timeout=30)
        _check(cachefs_daemon, case, response)
        for name, value in cachefs_daemon.secrets.items():
            assert value not in response.content and value.hex().encode() not in response.content, name

    try:
        run()
    finally:
        session.close()
    status = requests.get(f"{cachefs_daemon.url}/status", timeout=10).json()
    assert status["mounted"] and status["source"], "control: the API answered for a mounted volume"
