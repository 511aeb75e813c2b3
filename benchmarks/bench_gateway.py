"""Gateway benchmark: one bulk stream through our rats-tls egress vs nginx ``stream`` TLS termination vs
direct, small-request round-trip latency, new TLS connections per second, and OHTTP throughput.

Run: ``.venv/bin/python benchmarks/bench_gateway.py [--mib 256] [--rounds 2000]``. The egress runs as
``cai gateway`` (a separate process, ``no_ra``: attestation is not on the data path, certificates are
made in the background; the data path is the protocol splice of ``gateway/splice.py``) so client and
gateway do not share an event loop; nginx needs the Debian module ``libnginx-mod-stream``. Every figure
comes from this run; ratios are against the anchors of this run. The machine is shared: treat numbers as indicative.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHUNK = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def source_server(port: int, total: int) -> None:
    """Backend: on 'B' send ``total`` bytes and close; on 'E' echo fixed 100-byte messages forever."""
    srv = socket.create_server(("127.0.0.1", port), backlog=128)
    payload = os.urandom(CHUNK)

    def serve(conn: socket.socket) -> None:
        # A client that resets its connection (the connections/s test closes without close_notify)
        # has the reset passed on to the backend by the gateway, on purpose: not a benchmark failure.
        with conn, contextlib.suppress(ConnectionResetError, BrokenPipeError):
            mode = conn.recv(1)
            if mode == b"B":
                sent = 0
                while sent < total:
                    conn.sendall(payload)
                    sent += len(payload)
            elif mode == b"E":
                while data := conn.recv(65536):
                    conn.sendall(data)

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def client_context(alpn: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    if alpn:
        ctx.set_alpn_protocols([alpn])
    return ctx


def connect(port: int, tls: ssl.SSLContext | None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return tls.wrap_socket(sock, server_hostname="bench") if tls else sock


def bulk(port: int, tls: ssl.SSLContext | None, total: int) -> float:
    sock = connect(port, tls)
    buf = bytearray(CHUNK)
    start = time.perf_counter()
    sock.sendall(b"B")
    got = 0
    while got < total:
        n = sock.recv_into(buf)
        if not n:
            break
        got += n
    elapsed = time.perf_counter() - start
    sock.close()
    assert got >= total, f"stream ended after {got} of {total} bytes"
    return got / elapsed / 1e6


def latency(port: int, tls: ssl.SSLContext | None, rounds: int) -> list[float]:
    sock = connect(port, tls)
    sock.sendall(b"E")
    msg = b"x" * 100
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        sock.sendall(msg)
        got = 0
        while got < len(msg):
            got += len(sock.recv(4096))
        out.append(time.perf_counter() - t0)
    sock.close()
    return out


def connections_per_second(port: int, tls: ssl.SSLContext, seconds: float = 2.0) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        sock = connect(port, tls)
        sock.sendall(b"E")
        sock.close()
        n += 1
    return n / (time.perf_counter() - t0)


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"port {port} did not open")


def start_nginx(workdir: Path, listen: int, backend: int) -> subprocess.Popen[bytes] | None:
    module = Path("/usr/lib/nginx/modules/ngx_stream_module.so")
    nginx = shutil.which("nginx")
    if nginx is None or not module.exists():
        print("nginx stream module missing (Debian: apt-get install libnginx-mod-stream); no nginx anchor")
        return None
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(workdir / "k.pem"), "-out", str(workdir / "c.pem"), "-subj", "/CN=bench",
                    "-days", "1"], check=True, capture_output=True)
    conf = workdir / "nginx.conf"
    conf.write_text(f"""load_module {module};
worker_processes 1; daemon off; pid {workdir}/nginx.pid; error_log {workdir}/error.log;
events {{ worker_connections 1024; }}
stream {{ server {{ listen 127.0.0.1:{listen} ssl; ssl_protocols TLSv1.3;
  ssl_certificate {workdir}/c.pem; ssl_certificate_key {workdir}/k.pem; proxy_buffer_size 256k;
  proxy_pass 127.0.0.1:{backend}; }} }}
""")
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(workdir)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(listen)
    return proc


def start_gateway(workdir: Path, listen: int, backend: int) -> subprocess.Popen[bytes]:
    config = {"add_egress": [{"mapping": {"in": {"host": "127.0.0.1", "port": listen},
                                          "out": {"host": "127.0.0.1", "port": backend}}, "no_ra": True}]}
    path = workdir / "gw.json"
    path.write_text(json.dumps(config))
    proc = subprocess.Popen([sys.executable, "-m", "agents.cli", "gateway", "--config", str(path),
                             "--log-level", "warning"], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(listen)
    return proc


def ohttp_throughput(total: int) -> float:
    """One OHTTP request/response of ``total`` bytes through OhttpEgress (in-process, aiohttp)."""
    from aiohttp import web

    from agents.health import Metrics
    from agents.http import start_site
    from gateway import bhttp
    from gateway.config import parse_config
    from gateway.metrics import GatewayMetrics
    from gateway.ohttp import ClientRequest, ResponseDecoder, decode_key_config_list, encode_metadata
    from gateway.ohttp_egress import OhttpEgress

    async def run() -> float:
        import aiohttp

        blob = os.urandom(CHUNK)

        async def big(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse()
            await resp.prepare(request)
            for _ in range(total // CHUNK):
                await resp.write(blob)
            return resp

        app = web.Application()
        app.router.add_get("/big", big)
        be_port, eg_port = free_port(), free_port()
        be = await start_site(app, host="127.0.0.1", port=be_port)
        cfg = parse_config({"add_egress": [{"mapping": {"in": {"port": eg_port}, "out": {"port": be_port}},
                                            "ohttp": {}, "no_ra": True}]})
        egress = OhttpEgress(cfg.egress[0], None, GatewayMetrics(Metrics()), f"127.0.0.1:{be_port}")
        eg = await start_site(egress.app("bench"), host="127.0.0.1", port=eg_port)
        try:
            async with aiohttp.ClientSession() as http:
                async with http.post(f"http://127.0.0.1:{eg_port}/", headers={"x-tng-ohttp-api": "/tng/key-config"},
                                     json={"attestation_request": None}) as resp:
                    import base64

                    kc = (await resp.json())["hpke_key_config"]["encoded_key_config_list"]
                config = decode_key_config_list(base64.b64decode(kc))[0]
                client = ClientRequest(config)
                inner = bhttp.encode_request(bhttp.Request("GET", "http", "bench", "/big"))
                meta = encode_metadata(config.public_key)
                body = len(meta).to_bytes(4, "big") + meta + client.header() + client.chunk(inner) + client.final()
                decoder = ResponseDecoder(client)
                got = 0
                t0 = time.perf_counter()
                async with http.post(f"http://127.0.0.1:{eg_port}/", data=body,
                                     headers={"x-tng-ohttp-api": "/tng/tunnel"}) as resp:
                    async for data in resp.content.iter_any():
                        for piece in decoder.feed(data):
                            got += len(piece)
                decoder.finish()
                return got / (time.perf_counter() - t0) / 1e6
        finally:
            await eg.cleanup()
            await be.cleanup()

    return asyncio.run(run())


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mib", type=int, default=256, help="bulk stream size (MiB)")
    parser.add_argument("--rounds", type=int, default=2000, help="small request round trips")
    args = parser.parse_args()
    total = args.mib * CHUNK
    backend = free_port()
    threading.Thread(target=source_server, args=(backend, total), daemon=True).start()
    wait_port(backend)
    workdir = Path(tempfile.mkdtemp(prefix="bench-gw-"))
    gw_port, nginx_port = free_port(), free_port()
    gateway = start_gateway(workdir, gw_port, backend)
    nginx = start_nginx(workdir, nginx_port, backend)
    tls = client_context("rats-tls")
    plain_tls = client_context(None)
    try:
        direct = max(bulk(backend, None, total) for _ in range(2))
        ours = max(bulk(gw_port, tls, total) for _ in range(2))
        anchor = max(bulk(nginx_port, plain_tls, total) for _ in range(2)) if nginx else None
        print(f"bulk, one stream, {args.mib} MiB (best of 2):")
        print(f"  direct TCP             {direct:8.0f} MB/s")
        if anchor:
            print(f"  nginx stream TLS 1.3   {anchor:8.0f} MB/s")
        vs_nginx = f"   ratio vs nginx {ours / anchor:.2f}x" if anchor else ""
        print(f"  cai gateway rats-tls   {ours:8.0f} MB/s{vs_nginx}   ratio vs direct {ours / direct:.2f}x")
        lat_direct = latency(backend, None, args.rounds)
        lat_ours = latency(gw_port, tls, args.rounds)
        print(f"small request round trip (100 B, keep-alive, {args.rounds} rounds):")
        print(f"  direct      p50 {pct(lat_direct, .5):.3f} ms  p99 {pct(lat_direct, .99):.3f} ms")
        print(f"  gateway     p50 {pct(lat_ours, .5):.3f} ms  p99 {pct(lat_ours, .99):.3f} ms  "
              f"added p50 {pct(lat_ours, .5) - pct(lat_direct, .5):.3f} ms")
        if nginx:
            lat_nginx = latency(nginx_port, plain_tls, args.rounds)
            print(f"  nginx       p50 {pct(lat_nginx, .5):.3f} ms  p99 {pct(lat_nginx, .99):.3f} ms")
        cps_ours = connections_per_second(gw_port, tls)
        line = f"new TLS connections per second: gateway {cps_ours:.0f}"
        if nginx:
            line += f", nginx {connections_per_second(nginx_port, plain_tls):.0f}"
        print(line)
        print(f"OHTTP one response of {min(args.mib, 64)} MiB through OhttpEgress: "
              f"{ohttp_throughput(min(args.mib, 64) * CHUNK):.0f} MB/s")
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(10)
        if nginx:
            nginx.terminate()
            nginx.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
