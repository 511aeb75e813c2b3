"""Test-only control plane of the stand-in: ``/__standin__/faults`` and ``/__standin__/counters``.

Development and tests only (disabled with ``fault_endpoint=False`` and off by default in the CLI).
Lets a test in another process, or a shell script, arm faults and read per-route request counts.

* ``POST /__standin__/faults`` with one fault object or ``{"faults": [...]}`` arms them
  (format in :mod:`trustee_standin.faults`); ``GET`` lists pending faults; ``DELETE`` clears them.
* ``GET /__standin__/counters`` -> ``{"auth": 3, ...}``; ``DELETE`` resets them.
"""

from __future__ import annotations

from aiohttp import web

from agents import jsonutil
from trustee_standin.body import read_body
from trustee_standin.errors import KbsHttpError
from trustee_standin.faults import Fault
from trustee_standin.state import STATE

PREFIX = "/__standin__"


async def faults(request: web.Request) -> web.Response:
    injector = request.app[STATE].faults
    if request.method == "GET":
        return web.json_response({"pending": injector.pending()})
    if request.method == "DELETE":
        injector.clear()
        return web.json_response({"pending": []})
    try:
        body = await read_body(request)
        obj = jsonutil.loads(body)
        items = obj["faults"] if isinstance(obj, dict) and "faults" in obj else [obj]
        if not isinstance(items, list):
            raise ValueError("'faults' must be a list")
        parsed = [Fault.from_json(item) for item in items]
    except (ValueError, TypeError, KbsHttpError) as exc:
        return web.json_response({"error": f"invalid fault: {exc}"}, status=400)
    for fault in parsed:
        injector.add(fault)
    return web.json_response({"pending": injector.pending()})


async def counters(request: web.Request) -> web.Response:
    injector = request.app[STATE].faults
    if request.method == "DELETE":
        injector.reset_counters()
    return web.json_response(dict(injector.counters))


def add_control_routes(app: web.Application) -> None:
    for method in ("GET", "POST", "DELETE"):
        app.router.add_route(method, PREFIX + "/faults", faults)
    for method in ("GET", "DELETE"):
        app.router.add_route(method, PREFIX + "/counters", counters)
