"""Netfilter capture of the service port (egress ``netfilter`` mode), like TNG's egress.

Rules (nat table, inserted at position 1 so container-runtime DNAT rules cannot shadow them):

    iptables -t nat -N CAI_EGRESS_<id>
    iptables -t nat -A CAI_EGRESS_<id> -p tcp -m mark --mark <so_mark> -j RETURN
    iptables -t nat -A CAI_EGRESS_<id> -p tcp -m addrtype ! --src-type LOCAL --dst-type LOCAL \\
             --dport <port> -j REDIRECT --to-ports <listen_port>
    iptables -t nat -I PREROUTING 1 -p tcp -j CAI_EGRESS_<id>
    iptables -t nat -I OUTPUT 1 -p tcp -j CAI_EGRESS_<id>

``! --src-type LOCAL`` (``capture_local_traffic: false``) leaves traffic from this network namespace
alone, so other sidecars and probes inside the pod keep plaintext access. The listener reads the
original destination with ``SO_ORIGINAL_DST`` and connects there with ``SO_MARK`` set, so its own
connection RETURNs instead of being captured again. ``rule_commands``/``cleanup_commands`` are pure;
``apply``/``remove`` run them. Cleanup runs before apply too, which removes what a crashed
predecessor left behind.
"""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess

from gateway.config import Netfilter
from gateway.errors import GatewayError

SO_ORIGINAL_DST = 80
SO_MARK = 36


def chain_name(ident: int) -> str:
    return f"CAI_EGRESS_{ident}"


def rule_commands(ident: int, netfilter: Netfilter, listen_port: int) -> list[list[str]]:
    chain = chain_name(ident)
    cmds = [["-t", "nat", "-N", chain],
            ["-t", "nat", "-A", chain, "-p", "tcp", "-m", "mark", "--mark", str(netfilter.so_mark), "-j", "RETURN"]]
    for dst in netfilter.capture_dst:
        rule = ["-t", "nat", "-A", chain, "-p", "tcp", "-m", "addrtype"]
        if not netfilter.capture_local_traffic:
            rule += ["!", "--src-type", "LOCAL"]
        if dst.host:
            rule += ["-d", dst.host]
        else:
            rule += ["--dst-type", "LOCAL"]
        port = f"{dst.port}:{dst.port_end}" if dst.port_end else str(dst.port)
        rule += ["--dport", port, "-j", "REDIRECT", "--to-ports", str(listen_port)]
        cmds.append(rule)
    cmds.append(["-t", "nat", "-I", "PREROUTING", "1", "-p", "tcp", "-j", chain])
    cmds.append(["-t", "nat", "-I", "OUTPUT", "1", "-p", "tcp", "-j", chain])
    return cmds


def cleanup_commands(ident: int) -> list[list[str]]:
    chain = chain_name(ident)
    return [["-t", "nat", "-D", "PREROUTING", "-p", "tcp", "-j", chain],
            ["-t", "nat", "-D", "OUTPUT", "-p", "tcp", "-j", chain],
            ["-t", "nat", "-F", chain],
            ["-t", "nat", "-X", chain]]


def _iptables() -> str:
    path = shutil.which("iptables")
    if path is None:
        raise GatewayError("netfilter capture needs the iptables binary", hint="install iptables, or use 'mapping'")
    return path


def remove(ident: int) -> None:
    """Delete our chain and its jumps; missing pieces are fine (nothing to clean)."""
    binary = _iptables()
    for cmd in cleanup_commands(ident):
        while subprocess.run([binary, "-w", *cmd], capture_output=True, check=False).returncode == 0 \
                and cmd[2] == "-D":
            pass  # a jump may have been inserted twice by crashed runs


def apply(ident: int, netfilter: Netfilter, listen_port: int) -> None:
    binary = _iptables()
    remove(ident)
    for cmd in rule_commands(ident, netfilter, listen_port):
        result = subprocess.run([binary, "-w", *cmd], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            remove(ident)
            raise GatewayError(f"iptables {' '.join(cmd)} failed: {result.stderr.strip()[:300]}",
                               hint="the gateway needs CAP_NET_ADMIN in the pod's network namespace")


def original_destination(sock: socket.socket) -> tuple[str, int]:
    """The address a REDIRECTed connection was originally sent to."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port = struct.unpack_from("!H", raw, 2)[0]
    return socket.inet_ntoa(raw[4:8]), int(port)


def marked_socket(mark: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)
    sock.setblocking(False)
    return sock
