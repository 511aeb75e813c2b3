"""Netfilter capture in network namespaces created here: a "guest" namespace runs the app on :8080 and
``cai gateway`` with ``netfilter.capture_dst.port = 8080``; a "client" namespace reaches it over a
veth pair. Remote clients are captured and must speak rats-tls; processes inside the guest keep
plaintext access; the rules are gone after stop, and a restart after SIGKILL cleans up first."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.test_gateway_support import attestation_agent

REPO = Path(__file__).resolve().parents[2]
GUEST_IP, CLIENT_IP = "10.231.0.1", "10.231.0.2"

CLIENT_SCRIPT = r"""
import json, socket, ssl, sys, urllib.request
sys.path.insert(0, sys.argv[1])
from gateway.ratls_cert import check_binding, parse_certificate
out = {}
try:
    out["plain"] = urllib.request.urlopen("http://GUEST_IP:8080/hello.txt", timeout=5).status
except Exception as exc:
    out["plain"] = type(exc).__name__
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols(["rats-tls"])
with ctx.wrap_socket(socket.create_connection(("GUEST_IP", 8080), timeout=5), server_hostname="tng") as s:
    cert = parse_certificate(s.getpeercert(binary_form=True))
    out["binding"] = bool(check_binding(cert))
    s.sendall(b"GET /hello.txt HTTP/1.0\r\nHost: x\r\n\r\n")
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    out["tls"] = data.split(b"\r\n")[0].decode() + " " + data.split(b"\r\n\r\n", 1)[1].decode()
print(json.dumps(out))
""".replace("GUEST_IP", GUEST_IP)


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=check)


@pytest.fixture
def namespaces():
    tag = str(os.getpid())
    guest, client = f"caigw-g{tag}", f"caigw-c{tag}"
    sh("ip", "netns", "add", guest)
    sh("ip", "netns", "add", client)
    try:
        sh("ip", "-n", guest, "link", "add", "vg", "type", "veth", "peer", "name", "vc", "netns", client)
        sh("ip", "-n", guest, "addr", "add", f"{GUEST_IP}/24", "dev", "vg")
        sh("ip", "-n", client, "addr", "add", f"{CLIENT_IP}/24", "dev", "vc")
        for ns, dev in ((guest, "vg"), (client, "vc")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        yield guest, client
    finally:
        sh("ip", "netns", "del", guest, check=False)
        sh("ip", "netns", "del", client, check=False)


def nat_rules(ns: str) -> str:
    return sh("ip", "netns", "exec", ns, "iptables", "-w", "-t", "nat", "-S").stdout


async def _start_gateway(ns: str, config: Path) -> asyncio.subprocess.Process:
    """Start ``cai gateway`` in ``ns`` and wait for its ``gateway.ready`` log line."""
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns, sys.executable, "-m", "agents.cli", "gateway", "--config", str(config),
        cwd=REPO, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    seen = []
    while line := await asyncio.wait_for(proc.stderr.readline(), 30):
        seen.append(line.decode(errors="replace"))
        if "gateway.ready" in seen[-1]:
            asyncio.get_running_loop().create_task(_drain(proc.stderr))
            return proc
    raise AssertionError("gateway did not start: " + "".join(seen)[-1500:])


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


async def test_netfilter_capture(namespaces, tmp_path):
    guest, client = namespaces
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "hello.txt").write_text("hello from the app")
    app = subprocess.Popen(["ip", "netns", "exec", guest, sys.executable, "-m", "http.server", "8080",
                            "--bind", "0.0.0.0", "--directory", str(tmp_path / "www")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with attestation_agent() as (aa_sock, _):
            config = tmp_path / "tng.json"
            config.write_text(json.dumps({"add_egress": [{
                "netfilter": {"capture_dst": {"port": 8080}, "capture_local_traffic": False, "listen_port": 40123},
                "attest": {"aa_addr": "unix://" + aa_sock}}]}))
            gateway = await _start_gateway(guest, config)
            try:
                result = await asyncio.to_thread(
                    sh, "ip", "netns", "exec", client, sys.executable, "-c", CLIENT_SCRIPT, str(REPO))
                outcome = json.loads(result.stdout)
                assert outcome["plain"] != 200, "a plain remote client must not reach the app"
                assert outcome["binding"] is True
                assert outcome["tls"] == "HTTP/1.0 200 OK hello from the app"
                # inside the guest: plaintext still works (local source is not captured)
                local = await asyncio.to_thread(
                    sh, "ip", "netns", "exec", guest, sys.executable, "-c",
                    f"import urllib.request;print(urllib.request.urlopen('http://{GUEST_IP}:8080/hello.txt',"
                    "timeout=5).read().decode())")
                assert local.stdout.strip() == "hello from the app"
            finally:
                gateway.send_signal(signal.SIGTERM)
                await asyncio.wait_for(gateway.wait(), 20)
            assert gateway.returncode == 0
            assert "CAI_EGRESS" not in nat_rules(guest), "rules must be removed on stop"
            # crash: SIGKILL leaves the rules; the next start cleans them up before installing its own
            gateway = await _start_gateway(guest, config)
            gateway.send_signal(signal.SIGKILL)
            await gateway.wait()
            assert "CAI_EGRESS_0" in nat_rules(guest)
            gateway = await _start_gateway(guest, config)
            rules = nat_rules(guest)
            assert rules.count("-j CAI_EGRESS_0") == 2, rules  # one jump each from PREROUTING and OUTPUT
            gateway.send_signal(signal.SIGTERM)
            await asyncio.wait_for(gateway.wait(), 20)
            assert gateway.returncode == 0
            assert "CAI_EGRESS" not in nat_rules(guest)
    finally:
        app.terminate()
        app.wait(10)
