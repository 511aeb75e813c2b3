"""Unix-socket peer credentials on real daemons: ``allowed_peers`` lets listed uids/groups in and no one else.

Real ``cai aa --allow-sample`` and ``cai cdh`` (as root) against a stand-in Trustee; clients are
separate processes started as other users with ``setpriv``. The sockets are made world-connectable
(``--socket-mode 0666`` / chmod), so file permissions let everybody in and the allow-list is the only
gate being tested. The resource is a fresh random value per test, so "no resource bytes" can fail.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from pathlib import Path

from agents.supervisor import NotifyListener
from attestation_agent.kbs.dialect import Dialect
from tests.integration import test_security_daemons as security
from trustee_standin.config import StandinConfig
from trustee_standin.server import StandinServer

NOBODY = 65534
OTHER_UID = 65533
CLIENT_GID = 4242
MODEL = "default/aliyun/model-decryption-key"
# Same helpers and fixtures as the other daemon security tests (a /tmp dir other users can reach, a tmpfs).
shared_dir, tmpfs, clean_env, stop = security.shared_dir, security.tmpfs, security.clean_env, security.stop

# A dependency-free HTTP client run as another user: prints the raw response.
CLIENT = ("import socket,sys\n"
          "s=socket.socket(socket.AF_UNIX); s.settimeout(20); s.connect(sys.argv[1])\n"
          "q='GET '+sys.argv[2]+' HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n'\n"
          "s.sendall(q.encode())\n"
          "out=b''\n"
          "while True:\n"
          "    b=s.recv(65536)\n"
          "    if not b: break\n"
          "    out+=b\n"
          "sys.stdout.buffer.write(out)\n")


async def get_as(sock: Path, path: str, *, uid: int, gid: int, groups: tuple[int, ...] = ()) -> tuple[int, bytes]:
    """GET ``path`` on ``sock`` from a process running as ``uid``/``gid`` with exactly ``groups``."""
    groups_arg = f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups"
    proc = await asyncio.create_subprocess_exec(
        "setpriv", f"--reuid={uid}", f"--regid={gid}", groups_arg, sys.executable, "-I", "-c", CLIENT, str(sock), path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode(errors="replace")
    head, _, body = out.partition(b"\r\n\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", head)
    assert match, f"not an HTTP response: {out[:200]!r}"
    return int(match.group(1)), body


def refused_total(metrics_text: bytes) -> float:
    match = re.search(rb"^cai_socket_peers_refused_total ([0-9.e+]+)$", metrics_text, re.M)
    assert match, "refusal counter missing from /metrics"
    return float(match.group(1))


def log_events(path: Path, event: str) -> list[dict]:
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("event") == event:
            records.append(record)
    return records


async def test_allow_list_on_real_aa_and_cdh(shared_dir: Path, tmpfs: Path, secret: bytes,
                                             repository: Path) -> None:
    aa_sock, cdh_sock = shared_dir / "aa.sock", shared_dir / "cdh.sock"
    aa_log, cdh_log = shared_dir / "aa.log", shared_dir / "cdh.log"
    notify_aa, notify_cdh = NotifyListener(shared_dir / "aa-notify.sock"), NotifyListener(shared_dir / "cdh-n.sock")
    with open(aa_log, "wb") as log:
        aa = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agents.cli", "aa", "--allow-sample", "--socket", str(aa_sock), "--rest-listen",
            "off", stdout=log, stderr=log,
            env=clean_env(NOTIFY_SOCKET=str(notify_aa.path), CAI_AA_ALLOWED_PEERS=str(NOBODY)))
    cdh = None
    try:
        await notify_aa.wait_for("READY=1", proc=aa, log=aa_log)
        os.chmod(aa_sock, 0o666)  # the AA has no socket_mode setting; open the file gate for the test
        async with StandinServer(StandinConfig(dialect=Dialect.V0_4_0, repository=repository)) as trustee:
            with open(cdh_log, "wb") as log:
                # cdh runs as root like the AA: the AA serves it as its own uid, not because root is special.
                cdh = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "agents.cli", "cdh", "--resources-dir", str(tmpfs / "resources"),
                    "--socket", str(cdh_sock), "--socket-mode", "0666", "--aa-socket", str(aa_sock),
                    "--rest-listen", "off", stdout=log, stderr=log,
                    env=clean_env(NOTIFY_SOCKET=str(notify_cdh.path), TRUSTEE_URL=trustee.url,
                                  MODEL_KEY_ID=f"kbs:///{MODEL}", CAI_CDH_ALLOWED_PEERS=f"@{CLIENT_GID}"))
            await notify_cdh.wait_for("READY=1", proc=cdh, log=cdh_log)
            resource = f"/cdh/resource/{MODEL}"

            # Data hub: nobody without the listed group is refused, before any handler runs.
            status, body = await get_as(cdh_sock, resource, uid=NOBODY, gid=NOBODY)
            assert status == 403
            assert secret not in body
            error = json.loads(body)
            assert error["code"] == "PeerNotAllowed"
            assert f"peer uid {NOBODY} gid {NOBODY}" in error["error"]
            assert "allowed_peers" in error["error"] and "CAI_CDH_ALLOWED_PEERS" in error["error"]
            # The same user with the listed supplementary group gets the resource (SO_PEERGROUPS).
            status, body = await get_as(cdh_sock, resource, uid=NOBODY, gid=NOBODY, groups=(CLIENT_GID,))
            assert status == 200 and body == secret
            # The daemon's own uid (root here) is always served, e.g. for health checks.
            status, metrics = await get_as(cdh_sock, "/metrics", uid=0, gid=0)
            assert status == 200 and refused_total(metrics) == 1

            # Attestation agent: listed uid served, another unprivileged uid refused.
            status, body = await get_as(aa_sock, "/aa/tee", uid=NOBODY, gid=NOBODY)
            assert status == 200, body
            status, body = await get_as(aa_sock, "/aa/token?token_type=kbs", uid=OTHER_UID, gid=OTHER_UID)
            assert status == 403 and f"peer uid {OTHER_UID}" in json.loads(body)["error"]
            status, metrics = await get_as(aa_sock, "/metrics", uid=NOBODY, gid=NOBODY)
            assert status == 200 and refused_total(metrics) == 1
            assert await stop(cdh) == 0
    finally:
        if cdh is not None and cdh.returncode is None:
            await stop(cdh)
        assert await stop(aa) == 0
        notify_aa.close()
        notify_cdh.close()

    refusals = log_events(cdh_log, "http.peer_refused")
    assert [(r["uid"], r["gid"]) for r in refusals] == [(NOBODY, NOBODY)]
    assert refusals[0]["pid"] > 0 and refusals[0]["path"] == f"/cdh/resource/{MODEL}"
    assert [r["uid"] for r in log_events(aa_log, "http.peer_refused")] == [OTHER_UID]
    assert secret.decode() not in cdh_log.read_text()


async def test_unknown_name_fails_closed_at_start_up(shared_dir: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agents.cli", "cdh", "--resources-dir", str(shared_dir / "res"), "--socket",
        str(shared_dir / "cdh.sock"), "--rest-listen", "off", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=clean_env(TRUSTEE_URL="http://127.0.0.1:9/api", MODEL_KEY_ID=f"kbs:///{MODEL}",
                      CAI_CDH_ALLOWED_PEERS="0,no-such-user-cai"))
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2, out.decode(errors="replace")
    text = out.decode(errors="replace")
    assert "allowed_peers" in text and "no-such-user-cai" in text
    assert not (shared_dir / "cdh.sock").exists(), "nothing may be served with a broken allow-list"
