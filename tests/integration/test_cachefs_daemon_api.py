"""The cachefs health/status app in process (aiohttp test server), and the daemon's settings checks."""

from __future__ import annotations

import argparse
import asyncio
from types import SimpleNamespace

import pytest
from aiohttp.test_utils import TestClient, TestServer

from agents.errors import ConfigError
from agents.health import HealthState, Metrics
from cachefs.api import build_app, download_status
from cachefs.daemon import add_arguments, load_settings


def progress(total: int, present: int, objects: int, remaining: int) -> SimpleNamespace:
    return SimpleNamespace(total_bytes=total, present_bytes=present, total_objects=objects,
                           objects_remaining=remaining)


def test_download_status_counts() -> None:
    out = download_status(progress(1000, 250, 4, 3), passthrough_reason=None, errors=0, complete=False, running=True)
    assert out == {"objects_total": 4, "objects_done": 1, "objects_remaining": 3, "bytes_total": 1000,
                   "bytes_done": 250, "bytes_remaining": 750, "percent": 25, "complete": False, "running": True,
                   "cache_enabled": True, "errors": 0}
    empty = download_status(progress(0, 0, 0, 0), passthrough_reason="disk full in /c", errors=2, complete=True,
                            running=False)
    assert empty["percent"] == 100 and not empty["cache_enabled"] and empty["errors"] == 2


async def test_readyz_probes_the_mount_once_at_a_time() -> None:
    health, metrics = HealthState(), Metrics()
    health.mark_started()
    health.set_check("mount", False, "mounting")
    calls = 0
    answer = asyncio.Event()

    async def probe() -> None:
        nonlocal calls
        calls += 1
        await answer.wait()
        health.set_check("mount", True, "serving")

    app = build_app(health, metrics, lambda: {"source": "s3://b/p", "mounted": True}, probe)
    async with TestClient(TestServer(app)) as client:
        pending = asyncio.ensure_future(client.get("/readyz"))
        live = await client.get("/livez")  # liveness never waits for the probe
        assert live.status == 200 and calls == 1
        answer.set()
        ready = await pending
        assert ready.status == 200 and (await ready.json())["checks"]["mount"]["ok"]
        status = await (await client.get("/status")).json()
        assert status == {"source": "s3://b/p", "mounted": True, "ready": True}
        health.set_check("mount", False, "/mnt does not answer: Transport endpoint is not connected")
        answer.clear()
        probe_task = asyncio.ensure_future(client.get("/readyz"))
        answer.set()
        assert (await probe_task).status == 200  # the probe itself decides, not the stale check
        metrics.gauge("cachefs_cache_bytes", "x").set(7)
        assert "cachefs_cache_bytes 7.0" in await (await client.get("/metrics")).text()


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


@pytest.mark.parametrize(("env", "match"), [
    ({"CAI_CACHEFS_DOWNLOAD_MODE": "sometimes"}, "download_mode"),
    ({"CAI_CACHEFS_DOWNLOAD_CONCURRENCY": "0"}, "download_concurrency"),
    ({"CAI_CACHEFS_DOWNLOAD_RUN_MB": "-1"}, "download_run_mb"),
    ({"CAI_CACHEFS_OSS_ADDRESSING": "dns"}, "oss_addressing"),
    ({"CAI_CACHEFS_SOCKET_MODE": "rw"}, "socket_mode"),
    ({"CAI_CACHEFS_SOCKET": "relative.sock"}, "socket"),
    ({"CAI_CACHEFS_HEALTH_PORT": "70000"}, "health_port"),
])
def test_bad_settings_are_config_errors(env: dict[str, str], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_settings(parse([]), {"MODEL_MOUNT_POINT": "/tmp/model", **env})


def test_defaults() -> None:
    settings, _ = load_settings(parse([]), {"MODEL_MOUNT_POINT": "/tmp/model"})
    assert settings["download_mode"] == "lazy" and settings["socket"] == "/run/cai/cachefs.sock"
    assert settings["socket_mode"] == 0o660 and settings["health_port"] is None
    assert settings["cache_dir"] == "/var/cache/cai/cachefs" and settings["download_run_mb"] == 0
