"""The cachefs health API: ``/healthz /livez /readyz /metrics`` plus ``/status`` (download progress).

Why a separate small app: orchestrators (compose healthchecks, Kubernetes probes, ``cai status``)
need "is the model mounted and answering" and "how much of it has arrived" without reading logs,
and sd_notify only exists under systemd. ``/readyz`` re-probes the mount (a ``stat`` of its root
through the kernel) on each request, at most one probe at a time, so a wedged mount turns the
daemon unready instead of leaving a stale "ready". ``/status`` reports counts and sizes only:
no file names (only the ciphertext object key of a file whose reads are failing right now, under
``failing``), no key material, no credentials.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from agents.health import HealthState, Metrics, add_health_routes
from agents.http import error_middleware
from agents.logsetup import get_logger

__all__ = ["build_app", "download_status"]

log = get_logger("cachefs.api")

StatusFn = Callable[[], dict[str, Any]]
ProbeFn = Callable[[], Awaitable[None]]


def download_status(progress: Any, *, passthrough_reason: str | None, errors: int, complete: bool,
                    running: bool) -> dict[str, Any]:
    """Pure: the JSON view of a :class:`cachefs.progress.DownloadProgress` (sizes and counts only)."""
    total = int(progress.total_bytes)
    cached = min(total, int(progress.present_bytes))
    return {
        "objects_total": int(progress.total_objects),
        "objects_done": int(progress.total_objects) - int(progress.objects_remaining),
        "objects_remaining": int(progress.objects_remaining),
        "bytes_total": total,
        "bytes_done": cached,
        "bytes_remaining": total - cached,
        "percent": 100 if total == 0 else cached * 100 // total,
        "complete": complete,
        "running": running,
        "cache_enabled": passthrough_reason is None,
        "errors": errors,
    }


def build_app(health: HealthState, metrics: Metrics, status: StatusFn, probe: ProbeFn | None = None
              ) -> web.Application:
    """The health/status app; ``probe`` (if given) refreshes the mount check before ``/readyz`` answers."""

    @web.middleware
    async def probe_first(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        if probe is not None and request.path == "/readyz":
            await probe()
        return await handler(request)

    async def status_handler(_request: web.Request) -> web.Response:
        return web.json_response({**status(), "ready": health.ready})

    app = web.Application(middlewares=[error_middleware(log), probe_first], client_max_size=4096)
    add_health_routes(app, health, metrics)
    app.router.add_get("/status", status_handler)
    return app
