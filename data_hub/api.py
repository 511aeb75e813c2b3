"""The CDH API: resources, unsealing and status on a Unix socket; api-server-rest's resource path on loopback.

Unix socket (file permissions are the access control): ``GET /cdh/resource/<repo>/<type>/<tag>``
(raw bytes), ``POST /cdh/unseal`` (body = sealed secret → plaintext), ``GET /cdh/status`` (presence,
times and errors per resource, never values), ``/healthz /livez /readyz /metrics``.
Optional loopback TCP listener (``rest_listen``): only ``GET /cdh/resource/...`` and health, loopback
peers only, exactly as CoCo's api-server-rest.

A configured resource is answered from the last good value (refreshed in the background); any other
``kbs:///`` resource is fetched on demand from the default Trustee and not kept, as CoCo's CDH does.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from agents.health import HealthState, Metrics, add_health_routes
from agents.http import error_middleware, json_error, loopback_only
from agents.logsetup import get_logger
from data_hub.errors import ResourceUnavailableError
from data_hub.hub import DataHub
from data_hub.sealed import MAX_SEALED
from data_hub.unseal import Unsealer
from data_hub.uri import ResourceUri, resource_from_api_path

log = get_logger("cdh.api")

OCTET = "application/octet-stream"
OnDemand = Callable[[ResourceUri], Awaitable[bytes]]

HUB_KEY = web.AppKey("hub", DataHub)
UNSEALER_KEY = web.AppKey("unsealer", Unsealer)
ON_DEMAND_KEY = web.AppKey("on_demand", object)


async def get_resource(request: web.Request) -> web.Response:
    if request.rel_url.query:
        return json_error(400, "GET /cdh/resource/<repo>/<type>/<tag> takes no query parameters")
    info = request.match_info
    uri = resource_from_api_path(info["repository"], info["type"], info["tag"])
    hub = request.app[HUB_KEY]
    entry = hub.entry_for(uri)
    if entry is not None:
        value = hub.cached(entry)
    else:
        on_demand: OnDemand | None = request.app[ON_DEMAND_KEY]  # type: ignore[assignment]
        if on_demand is None:
            raise ResourceUnavailableError(f"resource {uri} is not configured and no default Trustee is set",
                                           hint="set TRUSTEE_URL or add it to [[cdh.resources]]")
        value = await on_demand(uri)
    log.info("cdh.api.resource", uri=str(uri), size=len(value), cached=entry is not None)
    return web.Response(body=value, content_type=OCTET)


async def post_unseal(request: web.Request) -> web.Response:
    if request.content_length is not None and request.content_length > MAX_SEALED:
        return json_error(413, f"sealed secret is larger than {MAX_SEALED} bytes")
    body = await request.content.read(MAX_SEALED + 1)
    if len(body) > MAX_SEALED:
        return json_error(413, f"sealed secret is larger than {MAX_SEALED} bytes")
    value = await request.app[UNSEALER_KEY].unseal(body)
    return web.Response(body=value, content_type=OCTET)


async def get_status(request: web.Request) -> web.Response:
    return web.json_response(request.app[HUB_KEY].status())


RESOURCE_ROUTE = "/cdh/resource/{repository}/{type}/{tag}"


def build_app(hub: DataHub, unsealer: Unsealer, health: HealthState, metrics: Metrics, *,
              on_demand: OnDemand | None, rest_bridge: bool = False) -> web.Application:
    """The CDH application; ``rest_bridge`` = the loopback-only api-server-rest subset."""
    middlewares = [error_middleware(log)]
    if rest_bridge:
        middlewares.insert(0, loopback_only)
    app = web.Application(middlewares=middlewares, client_max_size=MAX_SEALED + 1)
    app[HUB_KEY] = hub
    app[UNSEALER_KEY] = unsealer
    app[ON_DEMAND_KEY] = on_demand
    app.router.add_get(RESOURCE_ROUTE, get_resource)
    if not rest_bridge:
        app.router.add_post("/cdh/unseal", post_unseal)
        app.router.add_get("/cdh/status", get_status)
    add_health_routes(app, health, metrics)
    return app
