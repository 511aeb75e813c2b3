"""Health state, Prometheus metrics and the ``/healthz /livez /readyz /metrics`` routes.

Liveness ("the process answers") and readiness ("it has what it needs, e.g. a key and a mount")
are separate so an orchestrator restarts only hung daemons, and routes traffic only to ready
ones. Each daemon owns its own metrics registry, which keeps tests isolated from each other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest


@dataclass(frozen=True)
class Check:
    """The latest result of one named readiness check."""

    ok: bool
    detail: str = ""


class HealthState:
    """Readiness bookkeeping: named checks plus a "start-up finished" flag."""

    def __init__(self) -> None:
        self._checks: dict[str, Check] = {}
        self._probes: dict[str, Callable[[], tuple[bool, str]]] = {}
        self._started = False
        self._lock = threading.Lock()

    def set_check(self, name: str, ok: bool, detail: str = "") -> None:
        """Record the outcome of check ``name``; ``detail`` explains a failure to operators."""
        with self._lock:
            self._checks[name] = Check(ok, detail)

    def add_probe(self, name: str, probe: Callable[[], tuple[bool, str]]) -> None:
        """A check evaluated whenever readiness is asked for: ``probe()`` returns ``(ok, detail)``.

        For conditions that change with time alone (a certificate growing too old), which no
        event would update in :meth:`set_check`. Probes must be cheap and must not block.
        """
        with self._lock:
            self._probes[name] = probe

    def _current(self) -> dict[str, Check]:
        checks = dict(self._checks)
        for name, probe in self._probes.items():
            ok, detail = probe()
            checks[name] = Check(bool(ok), detail)
        return checks

    def mark_started(self) -> None:
        """Start-up finished; until then the daemon is never ready, even with no checks."""
        self._started = True

    @property
    def started(self) -> bool:
        """True after :meth:`mark_started`."""
        return self._started

    @property
    def ready(self) -> bool:
        """All checks pass and start-up finished."""
        with self._lock:
            return self._started and all(check.ok for check in self._current().values())

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able view: ``{"ready", "started", "checks": {name: {"ok", "detail"}}}``."""
        with self._lock:
            current = self._current()
            checks = {name: {"ok": c.ok, "detail": c.detail} for name, c in sorted(current.items())}
            ready = self._started and all(c.ok for c in current.values())
        return {"ready": ready, "started": self._started, "checks": checks}


_M = TypeVar("_M", Counter, Gauge, Histogram)


class Metrics:
    """A private Prometheus registry with idempotent metric constructors.

    Modules can call ``metrics.counter("x_total", ...)`` wherever they need it without
    coordinating who creates it first.
    """

    def __init__(self, namespace: str = "") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._namespace = namespace
        self._metrics: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _get(self, cls: type[_M], name: str, doc: str, labels: Sequence[str], **kwargs: Any) -> _M:
        with self._lock:
            existing = self._metrics.get(name)
            if existing is not None:
                if not isinstance(existing, cls):
                    raise ValueError(f"metric {name!r} already exists as a {type(existing).__name__}")
                if tuple(existing._labelnames) != tuple(labels):
                    raise ValueError(f"metric {name!r} already exists with labels {existing._labelnames}")
                return existing
            metric = cls(
                name,
                doc,
                labelnames=tuple(labels),
                namespace=self._namespace,
                registry=self.registry,
                **kwargs,
            )
            self._metrics[name] = metric
            return metric

    def counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        """Create or return the counter ``name``."""
        return self._get(Counter, name, doc, labels)

    def gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        """Create or return the gauge ``name``."""
        return self._get(Gauge, name, doc, labels)

    def histogram(
        self,
        name: str,
        doc: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] | None = None,
    ) -> Histogram:
        """Create or return the histogram ``name`` (``buckets`` only matter on creation)."""
        if buckets is None:
            return self._get(Histogram, name, doc, labels)
        return self._get(Histogram, name, doc, labels, buckets=tuple(buckets))

    def render(self) -> tuple[bytes, str]:
        """The registry in Prometheus text format, with its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def add_health_routes(app: web.Application, health: HealthState, metrics: Metrics) -> None:
    """Register ``GET /healthz``, ``/livez``, ``/readyz`` and ``/metrics`` on ``app``."""

    async def alive(_request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(_request: web.Request) -> web.Response:
        snap = health.snapshot()
        if snap["ready"]:
            return web.json_response(snap)
        failing = {name: check["detail"] for name, check in snap["checks"].items() if not check["ok"]}
        if not snap["started"]:
            failing.setdefault("startup", "start-up has not finished")
        return web.json_response({**snap, "failing": failing}, status=503)

    async def metrics_handler(_request: web.Request) -> web.Response:
        body, content_type = metrics.render()
        response = web.Response(body=body)
        # Set the raw header: the Prometheus content type carries a version parameter that
        # aiohttp's content_type/charset arguments would reject or rewrite.
        response.headers["Content-Type"] = content_type
        return response

    app.router.add_get("/healthz", alive)
    app.router.add_get("/livez", alive)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_handler)
