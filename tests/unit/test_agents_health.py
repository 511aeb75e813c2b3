"""Health state, metrics registry and the health routes over a real Unix socket."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp import web

from agents.health import HealthState, Metrics, add_health_routes
from agents.http import start_site, unix_session


def test_health_state_readiness() -> None:
    health = HealthState()
    assert not health.ready  # not started yet, even with no checks
    health.mark_started()
    assert health.ready
    health.set_check("model-key", False, "Trustee refused: policy denied")
    health.set_check("mount", True)
    assert not health.ready
    assert health.snapshot() == {
        "ready": False,
        "started": True,
        "checks": {
            "model-key": {"ok": False, "detail": "Trustee refused: policy denied"},
            "mount": {"ok": True, "detail": ""},
        },
    }
    health.set_check("model-key", True)
    assert health.ready


def test_probes_are_evaluated_on_every_question() -> None:
    """A probe turns readiness off with time alone (no event), and back on, with its own detail."""
    health = HealthState()
    health.set_check("listener", True, "listening")
    state = {"ok": True}
    health.add_probe("certificate", lambda: (state["ok"], "fresh" if state["ok"] else "too old"))
    health.mark_started()
    assert health.ready and health.snapshot()["checks"]["certificate"] == {"ok": True, "detail": "fresh"}
    state["ok"] = False
    snap = health.snapshot()
    assert not health.ready and not snap["ready"] and snap["checks"]["certificate"]["detail"] == "too old"
    assert snap["checks"]["listener"]["ok"]
    state["ok"] = True
    assert health.ready


def test_metrics_are_idempotent_and_private() -> None:
    first, second = Metrics(), Metrics()
    counter = first.counter("kbs_requests_total", "KBS requests", labels=("outcome",))
    assert first.counter("kbs_requests_total", "KBS requests", labels=("outcome",)) is counter
    counter.labels(outcome="ok").inc(3)
    first.gauge("resources_loaded", "Resources on tmpfs").set(2)
    first.histogram("fetch_seconds", "Fetch latency", buckets=(0.1, 1.0)).observe(0.5)
    body, content_type = first.render()
    text = body.decode()
    assert 'kbs_requests_total{outcome="ok"} 3.0' in text
    assert "resources_loaded 2.0" in text
    assert 'fetch_seconds_bucket{le="1.0"} 1.0' in text
    assert content_type.startswith("text/plain")
    assert "kbs_requests_total" not in second.render()[0].decode()


def test_metrics_conflicting_redefinition_rejected() -> None:
    metrics = Metrics()
    metrics.counter("x_total", "x")
    with pytest.raises(ValueError, match="already exists as a Counter"):
        metrics.gauge("x_total", "x")
    with pytest.raises(ValueError, match="labels"):
        metrics.counter("x_total", "x", labels=("a",))


async def test_health_routes(tmp_path: Path) -> None:
    health, metrics = HealthState(), Metrics()
    metrics.counter("requests_total", "Requests").inc()
    app = web.Application()
    add_health_routes(app, health, metrics)
    path = str(tmp_path / "health.sock")
    runner = await start_site(app, unix_path=path)
    try:
        async with unix_session(path) as session:
            for route in ("/healthz", "/livez"):
                async with session.get(f"http://localhost{route}") as resp:
                    assert resp.status == 200
                    assert await resp.json() == {"status": "alive"}

            async with session.get("http://localhost/readyz") as resp:
                assert resp.status == 503
                assert (await resp.json())["failing"] == {"startup": "start-up has not finished"}

            health.mark_started()
            health.set_check("alt-key", False, "ALT_TRUSTEE_URL unreachable")
            health.set_check("mount", True)
            async with session.get("http://localhost/readyz") as resp:
                assert resp.status == 503
                body = await resp.json()
                assert body["ready"] is False
                assert body["failing"] == {"alt-key": "ALT_TRUSTEE_URL unreachable"}

            health.set_check("alt-key", True)
            async with session.get("http://localhost/readyz") as resp:
                assert resp.status == 200
                body = await resp.json()
                assert body["ready"] is True
                assert set(body["checks"]) == {"alt-key", "mount"}

            async with session.get("http://localhost/metrics") as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"].startswith("text/plain; version=")
                assert "requests_total 1.0" in await resp.text()
    finally:
        await runner.cleanup()
