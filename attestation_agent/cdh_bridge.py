"""``GET /cdh/resource/<repo>/<type>/<tag>`` on the AA's api-server-rest listener (127.0.0.1:8006).

CoCo's api-server-rest serves both ``/aa/*`` and ``/cdh/*`` on one loopback port; apps (the RAG
app, scripts) call that port. The AA owns it here, so CDH reads are forwarded unchanged to the data
hub's Unix socket. The body (a secret) is streamed through, never logged or kept.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from agents.http import json_error, read_body_limited, unix_session
from agents.logsetup import get_logger

log = get_logger("aa.cdh_bridge")

CDH_SOCKET_KEY = web.AppKey("cdh_socket", str)
MAX_RESOURCE = 16 * 1024 * 1024
TIMEOUT = 60.0


async def forward_resource(request: web.Request) -> web.StreamResponse:
    socket_path = request.app[CDH_SOCKET_KEY]
    if request.rel_url.query:
        return json_error(400, "GET /cdh/resource/<repo>/<type>/<tag> takes no query parameters")
    path = request.rel_url.raw_path  # forwarded as received; the data hub validates the segments
    try:
        async with unix_session(socket_path, timeout=aiohttp.ClientTimeout(total=TIMEOUT)) as http:
            async with http.get("http://localhost" + path) as resp:
                body = await read_body_limited(resp, MAX_RESOURCE, what="data hub response")
                return web.Response(status=resp.status, body=body,
                                    content_type=resp.content_type or "application/octet-stream")
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        log.warning("aa.cdh_unreachable", socket=socket_path, error=type(exc).__name__)
        return json_error(503, f"the data hub is not reachable at {socket_path}: is `cai cdh` running?")


def add_cdh_bridge(app: web.Application, socket_path: str) -> None:
    app[CDH_SOCKET_KEY] = socket_path
    app.router.add_get("/cdh/resource/{repository}/{type}/{tag}", forward_resource)
