"""HTTP helpers against real aiohttp servers on Unix sockets and loopback TCP."""

from __future__ import annotations

import io
import json
import os
import socket
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from agents.errors import CaiError, ConfigError
from agents.http import (
    BodyTooLarge,
    bound_port,
    error_middleware,
    json_error,
    read_body_limited,
    start_site,
    unix_session,
)
from agents.logsetup import configure_logging, get_logger, reset_logging
from agents.redaction import clear_secrets, register_secret


class NotFoundError(CaiError):
    http_status = 404


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    clear_secrets()
    out = io.StringIO()
    configure_logging(stream=out, service="http-test")
    yield out
    reset_logging()
    clear_secrets()


def make_app() -> web.Application:
    app = web.Application(middlewares=[error_middleware(get_logger("agents.http.test"))])

    async def token(_request: web.Request) -> web.Response:
        return web.json_response({"token": "abc"})

    async def big(request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        if request.query.get("chunked") == "1":
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            for _ in range(size // 1000):
                await response.write(b"x" * 1000)
            await response.write(b"x" * (size % 1000))
            await response.write_eof()
            return response
        return web.Response(body=b"x" * size)

    async def boom(_request: web.Request) -> web.Response:
        raise RuntimeError("internal detail S3CRET-1234 should not leak")

    async def missing(_request: web.Request) -> web.Response:
        raise NotFoundError("resource default/aliyun/nope not found", hint="check MODEL_KEY_ID")

    async def bad_config(_request: web.Request) -> web.Response:
        raise ConfigError("bad config")

    async def forbidden(_request: web.Request) -> web.Response:
        raise web.HTTPForbidden(text="no")

    app.router.add_get("/aa/token", token)
    app.router.add_get("/big", big)
    app.router.add_get("/boom", boom)
    app.router.add_get("/missing", missing)
    app.router.add_get("/config", bad_config)
    app.router.add_get("/forbidden", forbidden)
    return app


@pytest.fixture
async def unix_server(tmp_path: Path) -> AsyncIterator[str]:
    path = str(tmp_path / "run" / "cai" / "aa.sock")
    runner = await start_site(make_app(), unix_path=path)
    yield path
    await runner.cleanup()


async def test_serve_and_fetch_over_unix_socket(unix_server: str) -> None:
    async with unix_session(unix_server) as session, session.get("http://localhost/aa/token") as resp:
        assert resp.status == 200
        assert await resp.json() == {"token": "abc"}


async def test_parent_dir_created_and_socket_mode(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "api.sock"
    runner = await start_site(make_app(), unix_path=str(path), socket_mode=0o600)
    try:
        assert stat.S_IMODE(path.parent.stat().st_mode) & 0o777 == 0o755 & ~_umask()
        st = path.stat()
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
    finally:
        await runner.cleanup()
    runner = await start_site(make_app(), unix_path=str(path))
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o660
    finally:
        await runner.cleanup()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


async def test_stale_socket_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))  # bound but never listening: a crashed previous run
    dead.close()
    assert path.exists()
    runner = await start_site(make_app(), unix_path=str(path))
    try:
        async with unix_session(str(path)) as session, session.get("http://localhost/aa/token") as resp:
            assert resp.status == 200
    finally:
        await runner.cleanup()


async def test_refuses_path_held_by_live_server(unix_server: str) -> None:
    with pytest.raises(CaiError, match=f"another process is already serving {unix_server}"):
        await start_site(make_app(), unix_path=unix_server)
    # The live server is untouched.
    async with unix_session(unix_server) as session, session.get("http://localhost/aa/token") as resp:
        assert resp.status == 200


async def test_refuses_to_delete_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "not-a-socket"
    path.write_text("data")
    with pytest.raises(CaiError, match="non-socket file"):
        await start_site(make_app(), unix_path=str(path))
    assert path.read_text() == "data"


async def test_tcp_site_with_port_zero() -> None:
    runner = await start_site(make_app(), host="127.0.0.1", port=0)
    try:
        port = bound_port(runner)
        assert port > 0
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/aa/token") as resp:
                assert await resp.json() == {"token": "abc"}
    finally:
        await runner.cleanup()


async def test_start_site_needs_exactly_one_address() -> None:
    with pytest.raises(ValueError):
        await start_site(make_app())


@pytest.mark.parametrize("chunked", ["0", "1"])
async def test_read_body_limited(unix_server: str, chunked: str) -> None:
    async with unix_session(unix_server) as session:
        async with session.get(f"http://localhost/big?size=5000&chunked={chunked}") as resp:
            assert (resp.content_length is None) == (chunked == "1")
            assert await read_body_limited(resp, 5000, what="evidence") == b"x" * 5000
        async with session.get(f"http://localhost/big?size=300000&chunked={chunked}") as resp:
            with pytest.raises(BodyTooLarge) as info:
                await read_body_limited(resp, 100_000, what="KBS attestation response")
    message = str(info.value)
    assert "KBS attestation response" in message
    assert "100000" in message
    if chunked == "0":
        assert "300000" in message  # rejected from Content-Length before reading


async def test_error_middleware_hides_unexpected_errors(unix_server: str, log_stream: io.StringIO) -> None:
    register_secret("S3CRET-1234")
    async with unix_session(unix_server) as session, session.get("http://localhost/boom") as resp:
        assert resp.status == 500
        body = await resp.json()
    assert body == {"error": "internal error", "code": None}
    lines = [json.loads(line) for line in log_stream.getvalue().splitlines()]
    (record,) = [line for line in lines if line["event"] == "unhandled error in request handler"]
    assert record["path"] == "/boom"
    assert "RuntimeError" in record["exception"]
    assert "S3CRET-1234" not in log_stream.getvalue()


async def test_error_middleware_maps_cai_errors(unix_server: str, log_stream: io.StringIO) -> None:
    async with unix_session(unix_server) as session:
        async with session.get("http://localhost/missing") as resp:
            assert resp.status == 404
            body = await resp.json()
            assert body["error"] == "resource default/aliyun/nope not found — check MODEL_KEY_ID"
            assert body["code"] == "NotFoundError"
            assert "Traceback" not in json.dumps(body)
        async with session.get("http://localhost/config") as resp:
            assert resp.status == 500
            assert (await resp.json())["error"] == "bad config"
        async with session.get("http://localhost/forbidden") as resp:
            assert resp.status == 403  # aiohttp's own HTTP exceptions pass through


async def test_json_error_shape() -> None:
    response = json_error(400, "bad runtime_data", code="bad_request")
    assert response.status == 400
    assert response.content_type == "application/json"
    assert json.loads(response.text or "") == {"error": "bad runtime_data", "code": "bad_request"}
