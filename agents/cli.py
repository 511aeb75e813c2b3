"""The ``cai`` command.

This module is the composition root of the suite: it is the one place in ``agents`` that refers to
the daemon packages, and it does so lazily by module name so that ``agents`` itself stays at the
bottom of the import graph and ``cai --help`` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from agents import __version__


@dataclass(frozen=True)
class Command:
    name: str
    module: str  # provides add_arguments(parser) and main(args) -> int
    help: str
    description: str


COMMANDS: tuple[Command, ...] = (
    Command("cdh", "data_hub.daemon", "run the data hub daemon (resources into /run/cai/resources)",
            "Confidential data hub: attests to one or more Trustees through the attestation agent, writes "
            "model-key, alt-key and configured resources atomically (0400) to a tmpfs directory, refreshes "
            "them, unseals sealed secrets and serves the CDH API on a Unix socket."),
    Command("get-resource", "data_hub.cli_get_resource", "fetch one Trustee resource into a file (operators)",
            "Fetch one kbs:/// resource through the running attestation agent and write it atomically "
            "with mode 0400 to -o FILE (a memory filesystem unless overridden), or to stdout with -o -."),
    Command("aa", "attestation_agent.daemon", "run the attestation agent daemon",
            "Attestation agent: serves TEE evidence and Trustee KBS tokens on a Unix socket and on the "
            "CoCo api-server-rest compatible loopback port 8006."),
    Command("attest", "attestation_agent.cli_attest", "attest once to a Trustee KBS and optionally fetch a resource",
            "Operator check: run the RCAR handshake against a Trustee (dialect auto-detected), print what "
            "happened as JSON and, with --resource, fetch one resource (its value is never printed, only "
            "its size and SHA-256)."),
    Command("gateway", "gateway.daemon", "run the TNG-compatible gateway (rats-tls egress, verifying ingress)",
            "Gateway: runs the add_egress/add_ingress entries of a TNG JSON config (--config, the file "
            "`tng launch -c` takes) or an egress derived from cai.env MODEL_SERVICE_PORT and caiOptions "
            "tng-http-secure-ports; serves /livez /readyz /metrics on control_interface.restful."),
    Command("cachefs", "cachefs.daemon", "mount the decrypted model read-only (gocryptfs volumes); 'encrypt' makes one",
            "cachefs: serves a gocryptfs-encrypted model (local directory or object storage) as a read-only FUSE "
            "mount at MODEL_MOUNT_POINT once the model key is available; 'cai cachefs encrypt SRC DST --passfile F' "
            "writes a gocryptfs-compatible volume (and optionally a manifest)."),
    Command("standin", "trustee_standin.cli", "run the local Trustee stand-in (development and tests only)",
            "A protocol-exact local stand-in for Trustee (KBS in protocol 0.1.0 or 0.4.0, gateway /api "
            "prefix, attestation service). For development and tests only: it holds test keys."),
    Command("inject", "agents.inject", "add the four CAI sidecars to a Kubernetes manifest with caiOptions",
            "Read a Pod or Deployment manifest (YAML or JSON, FILE or - for stdin) whose caiOptions annotation "
            "(JSON) configures confidential AI, and print it with the attestation agent, data hub, cachefs and "
            "gateway sidecars, their volumes and mount propagation added."),
    Command("healthcheck", "agents.healthcheck", "exit 0 if a daemon's /readyz answers 200 (container probes)",
            "Ask a daemon's health endpoint over its Unix socket (/run/cai/aa.sock, /run/cai/cdh.sock, "
            "/run/cai/cachefs.sock) or a HOST:PORT listener (the gateway's control interface); exit 0 on 200, "
            "1 otherwise. Used by the compose healthchecks and the Kubernetes probes."),
    Command("up", "agents.up", "start the daemons from a cai.env in order and supervise them",
            "Start the attestation agent, then (as cai.env asks) the data hub, cachefs and the gateway, each "
            "after the previous one reported ready; if one dies, stop the others and exit 1 (fail closed). "
            "For VMs without the systemd units; same order as systemd/ and compose/."),
    Command("status", "agents.status", "show each daemon's readiness",
            "Probe each daemon's /readyz (and status) endpoint: ready, not ready with the reason, or not "
            "running. Exit 0 when every running daemon is ready, 1 when one is not, 3 when none runs."),
    Command("demo", "agents.demo", "run the whole chain locally with the sample TEE and a local Trustee stand-in",
            "Local demonstration with no TEE hardware: starts Trustee stand-ins, the attestation agent "
            "(sample TEE explicitly allowed), attests in both KBS protocol dialects and fetches resources, "
            "printing each step with timings. Development only."),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cai", description="CAI sidecar suite for confidential AI inference (Intel TDX + NVIDIA GPUs).")
    parser.add_argument("--version", action="version", version=f"cai {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        sub.add_parser(command.name, help=command.help, description=command.description)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    by_name = {command.name: command for command in COMMANDS}
    first = next((i for i, arg in enumerate(argv) if not arg.startswith("-")), None)
    if first is None or argv[first] not in by_name:
        build_parser().parse_args(argv)  # prints help, version or a usage error and exits
        return 2
    command = by_name[argv[first]]
    # Each daemon module declares its own options; import it only when its command runs.
    module = importlib.import_module(command.module)
    parser = argparse.ArgumentParser(prog=f"cai {command.name}", description=command.description)
    module.add_arguments(parser)
    args = parser.parse_args(argv[first + 1:])
    return int(module.main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
