"""``cai gateway`` as a process: a TNG JSON config, health and metrics, clean stop, config errors."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

import aiohttp

from tests.integration.test_gateway_support import attestation_agent, backend, free_port, our_ingress
from trustee_standin.server import StandinServer


async def _cai(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(sys.executable, "-m", "agents.cli", "gateway", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def test_daemon_serves_config_and_stops_cleanly(tmp_path):
    async with StandinServer() as standin, attestation_agent() as (aa_sock, _), backend() as be_port:
        eg_port, control = free_port(), free_port()
        config = {"add_egress": [{"mapping": {"in": {"host": "127.0.0.1", "port": eg_port},
                                              "out": {"host": "127.0.0.1", "port": be_port}},
                                  "attest": {"aa_addr": "unix://" + aa_sock}}],
                  "control_interface": {"restful": {"host": "127.0.0.1", "port": control}}}
        path = tmp_path / "tng.json"
        path.write_text(json.dumps(config))
        proc = await _cai("--config", str(path))
        try:
            async with aiohttp.ClientSession() as http:
                for _ in range(200):
                    try:
                        async with http.get(f"http://127.0.0.1:{control}/readyz") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("gateway did not become ready")
                verify = {"as_addr": standin.as_url, "trusted_certs_paths": [str(standin.ca_cert_path)]}
                async with our_ingress(verify) as (proxy_port, _):
                    async with http.post(f"http://127.0.0.1:{eg_port}/echo", data=b"via daemon",
                                         proxy=f"http://127.0.0.1:{proxy_port}") as resp:
                        assert await resp.read() == b"via daemon"
                async with http.get(f"http://127.0.0.1:{control}/metrics") as resp:
                    text = await resp.text()
                assert f'cx_total{{id="0",listen="127.0.0.1:{eg_port}",side="egress",type="mapping"}} 1.0' in text
                assert "live 1.0" in text
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode()[-2000:]


async def test_daemon_config_error_names_the_path(tmp_path):
    path = tmp_path / "tng.json"
    path.write_text(json.dumps({"add_egress": [{"netfilter": {"captur_dst": {"port": 8080}}, "no_ra": True}]}))
    proc = await _cai("--config", str(path))
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert "add_egress[0].netfilter.captur_dst" in err.decode()
    assert "Traceback" not in err.decode()
