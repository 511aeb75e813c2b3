"""HTTP API of the attestation agent.

Served on a Unix socket (full API) and, compatible with CoCo's api-server-rest, on a loopback TCP
listener (``127.0.0.1:8006``) that answers only loopback peers. Paths and query parameters follow
api-server-rest: ``GET /aa/token?token_type=kbs``, ``GET /aa/evidence?runtime_data=<text>``
(UTF-8 bytes are the report data; ``&encoding=base64`` for base64url binary as in Trustiflux 1.5),
``GET /aa/additional-evidence``, ``POST /aa/aael`` for runtime measurements.
"""

from __future__ import annotations

import json

from aiohttp import web

from agents import jsonutil
from agents.health import HealthState, Metrics, add_health_routes
from agents.http import error_middleware, json_error, loopback_only
from agents.logsetup import get_logger
from attestation_agent.attesters.base import MAX_REPORT_DATA, MeasurementResult, RuntimeEvent
from attestation_agent.cdh_bridge import add_cdh_bridge
from attestation_agent.kbs.encoding import b64url_decode
from attestation_agent.service import AttestationAgent

log = get_logger("aa.api")

AGENT_KEY = web.AppKey("agent", AttestationAgent)
MAX_EVENT_FIELD = 4096
OCTET = "application/octet-stream"


def _report_data(request: web.Request) -> bytes:
    params = request.rel_url.query
    extra = set(params) - {"runtime_data", "encoding", "embed_devices"}
    if "runtime_data" not in params or extra:
        raise web.HTTPBadRequest(text=json.dumps({"error": "expected query parameter runtime_data "
                                                  "(and optionally encoding=base64)"}),
                                 content_type="application/json")
    raw = params["runtime_data"]
    encoding = params.get("encoding", "utf8")
    if encoding == "base64":
        try:
            data = b64url_decode(raw)
        except ValueError:
            raise web.HTTPBadRequest(text=json.dumps({"error": "runtime_data is not base64url"}),
                                     content_type="application/json") from None
    elif encoding in ("utf8", "utf-8"):
        data = raw.encode("utf-8")
    else:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"unknown encoding {encoding!r}; use base64"}),
                                 content_type="application/json")
    if len(data) > MAX_REPORT_DATA:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"runtime_data is {len(data)} bytes; at most "
                                                  f"{MAX_REPORT_DATA} fit in a TEE report (pass a digest)"}),
                                 content_type="application/json")
    return data


async def get_token(request: web.Request) -> web.Response:
    params = request.rel_url.query
    if list(params) != ["token_type"]:
        # api-server-rest answers 405 unless exactly one query parameter is given.
        return json_error(405, "expected exactly one query parameter: token_type=kbs")
    body = await request.app[AGENT_KEY].token(params["token_type"])
    return web.Response(body=body, content_type=OCTET)


async def get_evidence(request: web.Request) -> web.Response:
    # ``embed_devices=true`` (our extension) embeds device evidence the Trustee 1.5 way.
    embed = request.rel_url.query.get("embed_devices", "false") == "true"
    body = await request.app[AGENT_KEY].evidence(_report_data(request), embed_devices=embed)
    return web.Response(body=body, content_type=OCTET)


async def get_additional_evidence(request: web.Request) -> web.Response:
    body = await request.app[AGENT_KEY].additional_evidence(_report_data(request))
    return web.Response(body=body, content_type=OCTET)


async def get_tee(request: web.Request) -> web.Response:
    return web.json_response(request.app[AGENT_KEY].describe())


async def get_info(request: web.Request) -> web.Response:
    """api-server-rest ``GET /info``: stock TNG's ``coco_asr`` provider reads the TEE type here."""
    agent = request.app[AGENT_KEY]
    return web.json_response({"tee": agent.tee, "additional_tees": agent.additional_tees})


async def post_aael(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > 4 * MAX_EVENT_FIELD:
        return json_error(413, "runtime measurement event is too large")
    try:
        obj = jsonutil.loads(await request.read())
    except (ValueError, UnicodeDecodeError):
        return json_error(400, "body must be JSON {domain, operation, content[, register_index]}")
    if not isinstance(obj, dict):
        return json_error(400, "body must be a JSON object")
    fields = {}
    for name in ("domain", "operation", "content"):
        value = obj.get(name)
        if not isinstance(value, str) or not value or len(value) > MAX_EVENT_FIELD or "\n" in value:
            return json_error(400, f"{name!r} must be a non-empty single-line string of at most "
                              f"{MAX_EVENT_FIELD} characters")
        fields[name] = value
    for name in ("domain", "operation", "content"):
        if any(ch.isspace() for ch in fields[name]):
            # Trustee 1.5 splits each event-log line on spaces and needs exactly three fields.
            return json_error(400, f"{name!r} must not contain whitespace (the event log is space-separated)")
    index = obj.get("register_index")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 24):
        return json_error(400, "'register_index' must be an integer 0..23")
    result = await request.app[AGENT_KEY].extend(RuntimeEvent(register_index=index, **fields))
    status = 200 if result is MeasurementResult.OK else 501
    return web.json_response({"result": result.value}, status=status)


def build_app(agent: AttestationAgent, health: HealthState, metrics: Metrics, *, rest_bridge: bool = False,
              cdh_socket: str | None = None) -> web.Application:
    """The AA application; ``rest_bridge`` adds the loopback-only guard for the TCP listener and, with
    ``cdh_socket``, forwards api-server-rest's ``/cdh/resource/...`` to the data hub."""
    middlewares = [error_middleware(log)]
    if rest_bridge:
        middlewares.insert(0, loopback_only)
    app = web.Application(middlewares=middlewares, client_max_size=64 * 1024)
    app[AGENT_KEY] = agent
    app.router.add_get("/aa/token", get_token)
    app.router.add_get("/aa/evidence", get_evidence)
    app.router.add_get("/aa/additional-evidence", get_additional_evidence)
    app.router.add_get("/aa/tee", get_tee)
    app.router.add_get("/info", get_info)
    app.router.add_post("/aa/aael", post_aael)
    if cdh_socket:
        add_cdh_bridge(app, cdh_socket)
    add_health_routes(app, health, metrics)
    return app
