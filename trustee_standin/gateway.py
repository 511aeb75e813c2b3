"""The trustee-gateway ``/api`` prefix of the stand-in (development and tests only).

Alibaba deployments put trustee-gateway (:8081) in front of KBS and AS and clients use
``TRUSTEE_URL=http://<ip>:8081/api``. The stand-in serves the same paths in-process:
``/api/kbs/v0/...`` (same handlers as the bare KBS; optionally with the gateway's duplicated
``Set-Cookie``), ``/api/attestation-service/...`` and its alias ``/api/as/...``, ``/api/health`` and
``/api/services-health`` in the exact shape of reference section 1.9. The health probe mirrors the
gateway's: a ``/auth`` with the gateway's probe version, so a gateway/KBS version skew shows up as
``kbs.status = "error"`` just as in a real deployment.
"""

from __future__ import annotations

import datetime
import json

from aiohttp import web

from attestation_agent.errors import ProtocolError
from attestation_agent.kbs.messages import parse_auth_request
from trustee_standin import attestation_service, kbs
from trustee_standin.state import STATE, StandinState

AS_PREFIXES = ("/api/attestation-service", "/api/as")


def _timestamp(state: StandinState) -> str:
    now = datetime.datetime.fromtimestamp(state.config.clock(), datetime.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def probe_kbs(state: StandinState) -> tuple[bool, str]:
    """Run the gateway's KBS probe (``POST /kbs/v0/auth`` with tee ``sample``) against the KBS logic."""
    version = state.config.gateway_probe_version or state.config.dialect.value
    body = json.dumps({"version": version, "tee": "sample", "extra-params": "foo"})
    try:
        auth = parse_auth_request(body, state.config.dialect)
    except ProtocolError:
        return False, "kbs auth request failed"
    if auth.version != state.config.dialect.value:
        return False, "kbs auth request failed"
    return True, f"kbs auth probe with protocol version {version} succeeded (KBS speaks {auth.version})"


async def health(request: web.Request) -> web.Response:
    async def handler(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    return await request.app[STATE].faults.run("health", request, handler)  # type: ignore[return-value]


async def services_health(request: web.Request) -> web.StreamResponse:
    async def handler(_: web.Request) -> web.Response:
        state = request.app[STATE]
        ts = _timestamp(state)
        ok, message = probe_kbs(state)
        return web.json_response({
            "gateway": {"status": "ok", "timestamp": ts},
            "kbs": {"status": "ok" if ok else "error", "message": message, "timestamp": ts},
            "as": {"status": "ok", "message": "certificate configured", "timestamp": ts},
            "rvps": {"status": "ok", "message": "the stand-in has no RVPS; reference values are not checked",
                     "timestamp": ts},
        })

    return await request.app[STATE].faults.run("services-health", request, handler)


def add_gateway_routes(app: web.Application) -> None:
    app.router.add_get("/api/health", health)
    app.router.add_get("/api/services-health", services_health)
    app.router.add_route("*", "/api/kbs/v0/{tail:.*}", kbs.dispatch)
    for prefix in AS_PREFIXES:
        app.router.add_route("*", prefix + "/{as_route}", attestation_service.dispatch)
