"""Peer-credential allow-list: the spec parser, SO_PEERCRED/SO_PEERGROUPS on real sockets, the middleware.

Credentials are read from real kernel sockets, including one connected from a process running as
another uid with an extra supplementary group (``setpriv``), so the values cannot come from the test.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import struct
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.errors import ConfigError
from agents.health import Metrics
from agents.http import bound_port, start_site, unix_session
from agents.logsetup import configure_logging, get_logger, reset_logging
from agents.peercred import (
    METRIC,
    AllowedPeers,
    PeerCredentials,
    PeerSpecError,
    decode_groups,
    decode_ucred,
    parse_allowed_peers,
    peer_guard,
    read_peer_credentials,
    validate_allowed_peers,
)
from agents.settings import Setting, parse_settings

NOBODY = 65534
EXTRA_GID = 4242
USERS = {"vllm": 1001, "rag": 1002}
GROUPS = {"cai-clients": 3000}


def fake_pwnam(name: str) -> SimpleNamespace:
    return SimpleNamespace(pw_uid=USERS[name])


def fake_grnam(name: str) -> SimpleNamespace:
    return SimpleNamespace(gr_gid=GROUPS[name])


def parse(spec: str | list[str]) -> AllowedPeers:
    return parse_allowed_peers(spec, getpwnam=fake_pwnam, getgrnam=fake_grnam)


# --- the spec ----------------------------------------------------------------------------------

def test_uids_names_gids_and_group_names_resolve() -> None:
    allowed = parse("0, vllm  @cai-clients,@77 ,1002")
    assert allowed.uids == {0, 1001, 1002}
    assert allowed.gids == {3000, 77}
    assert allowed.describe() == "0,1001,1002,@77,@3000"
    assert parse(["0,vllm", "@cai-clients"]) == parse("0 vllm @cai-clients")


def test_real_system_names_resolve() -> None:
    allowed = parse_allowed_peers("root,@root,nobody")
    assert allowed.uids == {0, NOBODY} and allowed.gids == {0}


@pytest.mark.parametrize("spec, message", [
    ("no-such-user", "unknown user 'no-such-user'"),
    ("@no-such-group", "unknown group 'no-such-group'"),
    ("4294967295", "out of range"),
    ("@99999999999", "out of range"),
    ("-1", "neither a numeric user id nor a valid user name"),
    ("@", "neither a numeric group id nor a valid group name"),
    ("user/../x", "neither"),
    ("\uff11\uff12", "neither"),  # fullwidth digits are str.isdigit() but not ids
])
def test_bad_entries_are_named(spec: str, message: str) -> None:
    with pytest.raises(PeerSpecError, match=message) as info:
        parse(spec)
    assert isinstance(info.value, ConfigError) and isinstance(info.value, ValueError)


def test_setting_error_names_the_key_and_source() -> None:
    setting = Setting("allowed_peers", list, None, "doc", validator=validate_allowed_peers)
    assert parse_settings({}, (setting,), where="[cdh]")["allowed_peers"] is None
    assert parse_settings({"allowed_peers": "root @root"}, (setting,), where="[cdh]")["allowed_peers"] == [
        "root", "@root"]
    with pytest.raises(ConfigError, match=r"'allowed_peers' in \[cdh\] \(/etc/cai/cai.toml\).*no-such-user-x"):
        parse_settings({"allowed_peers": "0,no-such-user-x"}, (setting,), where="[cdh] (/etc/cai/cai.toml)")


def test_allows_listed_uid_group_supplementary_group_and_own_uid() -> None:
    allowed = parse("1001,@3000")
    assert allowed.allows(PeerCredentials(1, 1001, 9), own_uid=500)
    assert allowed.allows(PeerCredentials(1, 7, 3000), own_uid=500)
    assert allowed.allows(PeerCredentials(1, 7, 9, (8, 3000)), own_uid=500)
    assert allowed.allows(PeerCredentials(1, 500, 9), own_uid=500)
    assert not allowed.allows(PeerCredentials(1, 7, 9, (8,)), own_uid=500)
    # Root is not special: only listed, or the daemon's own uid.
    assert not allowed.allows(PeerCredentials(1, 0, 0, (0,)), own_uid=500)
    assert not parse("").allows(PeerCredentials(1, 7, 9), own_uid=500)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=60), st.lists(st.text(max_size=20), max_size=5)))
def test_fuzz_spec_gives_allow_list_or_clean_config_error(spec: str | list[str]) -> None:
    try:
        allowed = parse_allowed_peers(spec)
    except PeerSpecError as exc:
        assert exc.message and "\n" not in exc.message
        return
    assert all(0 <= i <= 0xFFFFFFFE for i in allowed.uids | allowed.gids)


# --- reading credentials from the kernel -------------------------------------------------------

def test_decoders() -> None:
    assert decode_ucred(struct.pack("3i", 12, -2, 7)) == (12, 0xFFFFFFFE, 7)
    with pytest.raises(ValueError, match="expected 12"):
        decode_ucred(b"\0" * 8)
    assert decode_groups(struct.pack("3I", 1, 2, 3) + b"\0") == (1, 2, 3)


def test_socketpair_credentials_are_our_own() -> None:
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        creds = read_peer_credentials(left)
    assert (creds.pid, creds.uid, creds.gid) == (os.getpid(), os.geteuid(), os.getegid())
    assert set(creds.groups) == set(os.getgroups())


def test_tcp_socket_has_no_peer_credentials() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname()) as client:
            conn, _ = server.accept()
            with conn:
                creds = read_peer_credentials(conn)
                # Linux answers SO_PEERCRED on TCP with "no process" (pid 0, overflow ids), never ours.
                assert creds.pid == 0 and creds.uid != os.geteuid()
                del client


CONNECT = "import socket,sys,time; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); time.sleep(5)"


async def test_credentials_of_another_uid_and_its_supplementary_group() -> None:
    # In /tmp, world-searchable: pytest's tmp_path is root-only and the client runs as nobody.
    with tempfile.TemporaryDirectory(prefix="cai-peer-", dir="/tmp") as directory:
        os.chmod(directory, 0o777)
        path = os.path.join(directory, "s.sock")
        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        server.bind(path)
        os.chmod(path, 0o666)
        server.listen()
        server.settimeout(20)
        proc = await asyncio.create_subprocess_exec(
            "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", f"--groups={EXTRA_GID}", sys.executable, "-I",
            "-c", CONNECT, path)
        try:
            conn, _ = await asyncio.to_thread(server.accept)
            with conn:
                creds = read_peer_credentials(conn)
        finally:
            proc.kill()
            await proc.wait()
            server.close()
    assert (creds.pid, creds.uid, creds.gid) == (proc.pid, NOBODY, NOBODY)
    assert EXTRA_GID in creds.groups and 0 not in creds.groups


# --- the middleware ----------------------------------------------------------------------------

@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    configure_logging(stream=out, service="peercred-test")
    yield out
    reset_logging()


def make_app() -> web.Application:
    app = web.Application()

    async def secret(_request: web.Request) -> web.Response:
        return web.Response(body=b"resource-bytes")

    app.router.add_get("/secret", secret)
    return app


def refused_count(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value(METRIC)
    return 0.0 if value is None else value


async def test_guard_refuses_unlisted_peer_with_named_setting_and_counts(tmp_path: Path,
                                                                        log_stream: io.StringIO) -> None:
    metrics = Metrics()
    sock = str(tmp_path / "api.sock")
    # The test process is the peer: pretend the daemon runs as another uid, list nobody else.
    guard = peer_guard(parse(f"{os.geteuid() + 1}"), where=sock, setting="[cdh] allowed_peers", metrics=metrics,
                       logger=get_logger("peercred.test"), own_uid=os.geteuid() + 2)
    app = make_app()
    runner = await start_site(app, unix_path=sock, peer_guard=guard)
    tcp = await start_site(app, host="127.0.0.1", port=0)
    try:
        async with unix_session(sock) as session, session.get("http://localhost/secret") as resp:
            body = await resp.read()
            assert resp.status == 403
        assert b"resource-bytes" not in body
        error = json.loads(body)
        assert error["code"] == "PeerNotAllowed"
        assert f"uid {os.geteuid()} gid {os.getegid()}" in error["error"]
        assert "[cdh] allowed_peers" in error["error"] and sock in error["error"]
        assert refused_count(metrics) == 1
        records = [json.loads(line) for line in log_stream.getvalue().splitlines()]
        refusals = [r for r in records if r.get("event") == "http.peer_refused"]
        assert len(refusals) == 1
        assert refusals[0]["uid"] == os.geteuid() and refusals[0]["pid"] == os.getpid()
        # The same app on loopback TCP is not subject to the Unix-socket guard.
        async with aiohttp.ClientSession() as session, session.get(
                f"http://127.0.0.1:{bound_port(tcp)}/secret") as resp:
            assert resp.status == 200 and await resp.read() == b"resource-bytes"
        assert refused_count(metrics) == 1
    finally:
        await tcp.cleanup()
        await runner.cleanup()


@pytest.mark.parametrize("spec", ["", "@{gid}", "{uid}"])
async def test_guard_serves_own_uid_listed_uid_and_group(tmp_path: Path, spec: str) -> None:
    metrics = Metrics()
    sock = str(tmp_path / "api.sock")
    own = os.geteuid() if spec == "" else os.geteuid() + 1
    guard = peer_guard(parse(spec.format(uid=os.geteuid(), gid=os.getegid())), where=sock, setting="x",
                       metrics=metrics, logger=get_logger("peercred.test"), own_uid=own)
    runner = await start_site(make_app(), unix_path=sock, peer_guard=guard)
    try:
        async with unix_session(sock) as session, session.get("http://localhost/secret") as resp:
            assert resp.status == 200 and await resp.read() == b"resource-bytes"
    finally:
        await runner.cleanup()
    assert refused_count(metrics) == 0


async def test_guard_is_for_unix_sites_only() -> None:
    guard = peer_guard(parse(""), where="x", setting="x", metrics=Metrics(), logger=get_logger("peercred.test"))
    with pytest.raises(ValueError, match="Unix-socket sites only"):
        await start_site(make_app(), host="127.0.0.1", port=0, peer_guard=guard)


async def test_guard_checks_a_keep_alive_connection_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Credentials are fixed at connect(): one check per connection; a new connection is checked again."""
    from agents import peercred

    reads: list[int] = []
    real = peercred.read_peer_credentials

    def counting(sock):
        reads.append(1)
        return real(sock)

    monkeypatch.setattr(peercred, "read_peer_credentials", counting)
    sock = str(tmp_path / "api.sock")
    guard = peer_guard(parse(""), where=sock, setting="x", metrics=Metrics(), logger=get_logger("peercred.test"))
    runner = await start_site(make_app(), unix_path=sock, peer_guard=guard)
    try:
        async with unix_session(sock) as session:
            for _ in range(3):
                async with session.get("http://localhost/secret") as resp:
                    assert resp.status == 200 and await resp.read() == b"resource-bytes"
        assert len(reads) == 1, "one keep-alive connection, one credential check"
        async with unix_session(sock) as session, session.get("http://localhost/secret") as resp:
            assert resp.status == 200
        assert len(reads) == 2, "a new connection is checked again"
    finally:
        await runner.cleanup()
