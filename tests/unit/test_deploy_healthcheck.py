"""``cai healthcheck``: target parsing, and exit codes against real health endpoints."""

from __future__ import annotations

import argparse
import asyncio

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from agents import healthcheck
from agents.health import HealthState, Metrics, add_health_routes
from agents.healthcheck import Target, parse_target
from agents.http import bound_port, start_site


@pytest.mark.parametrize(("text", "expected"), [
    ("/run/cai/aa.sock", Target(unix_path="/run/cai/aa.sock")),
    ("unix:///run/cai/cdh.sock", Target(unix_path="/run/cai/cdh.sock")),
    ("127.0.0.1:8007", Target(host="127.0.0.1", port=8007)),
    ("[::1]:8007", Target(host="::1", port=8007)),
    ("localhost:1", Target(host="localhost", port=1)),
    ("http://127.0.0.1:8007", Target(host="127.0.0.1", port=8007)),
    ("http://127.0.0.1:8007/", Target(host="127.0.0.1", port=8007)),
])
def test_parse_target(text, expected):
    assert parse_target(text) == expected


@pytest.mark.parametrize(("text", "match"), [
    ("", "empty"),
    ("aa.sock", "not understood"),
    ("127.0.0.1:0", "not a port"),
    ("127.0.0.1:99999", "not a port"),
    ("http://127.0.0.1/readyz", "without a path"),
    ("http://127.0.0.1:8007/readyz", "without a path"),
    ("bad host:80", "not a valid host"),
    ("/run/cai/\naa.sock", "control characters"),
])
def test_parse_target_errors(text, match):
    with pytest.raises(ValueError, match=match):
        parse_target(text)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_fuzz_parse_target_only_value_errors(text):
    try:
        target = parse_target(text)
    except ValueError:
        return
    assert (target.unix_path is not None) != (target.port is not None)


def args(target: str, *extra: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    healthcheck.add_arguments(parser)
    return parser.parse_args([target, *extra])


async def check(target: str, *extra: str) -> int:
    # The command is synchronous (stdlib only); keep the server's event loop free while it runs.
    return await asyncio.to_thread(healthcheck.main, args(target, *extra))


async def test_exit_codes_follow_readiness_over_unix_and_tcp(tmp_path, capsys):
    health = HealthState()
    app = web.Application()
    add_health_routes(app, health, Metrics())
    sock = str(tmp_path / "d.sock")
    unix_runner = await start_site(app, unix_path=sock)
    app2 = web.Application()
    add_health_routes(app2, health, Metrics())
    tcp_runner = await start_site(app2, host="127.0.0.1", port=0)
    tcp = f"127.0.0.1:{bound_port(tcp_runner)}"
    try:
        assert await check(sock) == 1  # started, not ready
        assert "unhealthy" in capsys.readouterr().err
        assert await check(sock, "--path", "/livez") == 0  # alive though
        health.mark_started()
        health.set_check("resources", False, "model-key missing")
        assert await check(tcp) == 1
        health.set_check("resources", True)
        assert await check(sock) == 0
        assert await check(f"unix://{sock}", "-q") == 0
        assert await check(tcp) == 0
        assert capsys.readouterr().out.startswith("healthy:")
        assert await check(sock, "--path", "/nonexistent") == 1
    finally:
        await unix_runner.cleanup()
        await tcp_runner.cleanup()
    assert await check(sock) == 1  # nobody listening
    assert "is the daemon running?" in capsys.readouterr().err
    assert await check(tcp) == 1


async def test_bad_arguments_exit_2(capsys):
    assert await check("nonsense") == 2
    assert await check("/x.sock", "--path", "readyz") == 2
    assert await check("/x.sock", "--timeout", "0") == 2
    assert "cai healthcheck:" in capsys.readouterr().err


async def test_non_http_peer_is_unhealthy(tmp_path):
    path = str(tmp_path / "junk.sock")

    async def junk(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"\x00\x01garbage\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(junk, path=path)
    try:
        assert await check(path, "--timeout", "5") == 1
    finally:
        server.close()
        await server.wait_closed()
