"""docs/openapi/{aa,cdh,cachefs}.yaml describe exactly the routes the apps register (both ways): no drift."""

from __future__ import annotations

import yaml

from agents.health import HealthState, Metrics
from attestation_agent.api import build_app as build_aa_app
from attestation_agent.attesters.sample import SampleAttester
from attestation_agent.service import AgentOptions, AttestationAgent
from data_hub.api import build_app as build_cdh_app
from data_hub.hub import DataHub
from data_hub.store import ResourceStore
from data_hub.unseal import Unsealer
from tests.conftest import REPO

OPENAPI = REPO / "docs" / "openapi"


def documented(name: str) -> set[tuple[str, str]]:
    doc = yaml.safe_load((OPENAPI / name).read_text())
    assert str(doc["openapi"]).startswith("3."), name
    return {(method.upper(), path) for path, item in doc["paths"].items() for method in item
            if method in ("get", "post", "put", "delete", "patch")}


def served(*apps) -> set[tuple[str, str]]:
    return {(route.method, route.resource.canonical) for app in apps for route in app.router.routes()
            if route.method != "HEAD" and route.resource is not None}


def test_aa_document_matches_the_app(tmp_path):
    agent = AttestationAgent(SampleAttester(), AgentOptions(kbs=None))
    unix = build_aa_app(agent, HealthState(), Metrics())
    rest = build_aa_app(agent, HealthState(), Metrics(), rest_bridge=True, cdh_socket=str(tmp_path / "cdh.sock"))
    assert served(unix, rest) == documented("aa.yaml")
    assert ("GET", "/cdh/resource/{repository}/{type}/{tag}") not in served(unix)


def test_cdh_document_matches_the_app(tmp_path):
    hub = DataHub([], ResourceStore(tmp_path / "resources"), fetch=None)  # type: ignore[arg-type]

    async def on_demand(uri):
        raise AssertionError("not called")

    unsealer = Unsealer(on_demand, keys_dir=None)
    unix = build_cdh_app(hub, unsealer, HealthState(), Metrics(), on_demand=on_demand)
    rest = build_cdh_app(hub, unsealer, HealthState(), Metrics(), on_demand=on_demand, rest_bridge=True)
    assert served(unix, rest) == documented("cdh.yaml")
    assert ("POST", "/cdh/unseal") not in served(rest)


def test_cachefs_document_matches_the_app():
    from cachefs.api import build_app as build_cachefs_app

    app = build_cachefs_app(HealthState(), Metrics(), status=dict)
    assert served(app) == documented("cachefs.yaml")
