"""``cai get-resource kbs:///repo/type/tag -o FILE``: fetch one resource for an operator.

Attests through the running attestation agent (like the daemon) and writes the value atomically
with mode 0400. It goes to stdout only when asked explicitly with ``-o -``, so a secret never lands
in a terminal scrollback or a log by accident.
"""

from __future__ import annotations

import argparse
import os
import sys

from agents.config import load_cai_env
from agents.errors import ConfigError
from agents.lifecycle import run
from agents.logsetup import configure_logging, get_logger
from data_hub import memfs
from data_hub.config import DEFAULT_AA_SOCKET
from data_hub.errors import StorageError
from data_hub.resource_map import entries_from_config
from data_hub.store import atomic_write
from data_hub.trustees import TrusteePool, default_config_factory

log = get_logger("cdh.get_resource")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("uri", help="resource URI, kbs:///<repo>/<type>/<tag> or kbs://<host>:<port>/<repo>/<type>/<tag>")
    parser.add_argument("-o", "--output", required=True, metavar="FILE",
                        help="write the value to FILE (mode 0400, atomically); '-' writes it to stdout")
    parser.add_argument("--kbs-url", help="Trustee URL (default: the URI's host, else TRUSTEE_URL)")
    parser.add_argument("--aa-socket", default=DEFAULT_AA_SOCKET,
                        help=f"attestation agent socket for evidence (default {DEFAULT_AA_SOCKET})")
    parser.add_argument("--env-file", metavar="FILE", help="cai.env file providing TRUSTEE_URL")
    parser.add_argument("--kbs-dialect", choices=("auto", "0.1.0", "0.4.0"), default="auto")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per KBS request")
    parser.add_argument("--allow-persistent-storage", action="store_true",
                        help="allow writing FILE outside tmpfs/ramfs (the secret may then survive on disk)")


async def fetch_to(args: argparse.Namespace) -> int:
    env = load_cai_env(env_file=args.env_file)
    entry = entries_from_config([{"uri": args.uri, "trustee_url": args.kbs_url}],
                                default_trustee=env.get("TRUSTEE_URL"), where="command line")[0]
    target = None
    if args.output != "-":
        target = os.path.abspath(args.output)
        directory = os.path.dirname(target)
        if not os.path.isdir(directory):
            raise ConfigError(f"output directory {directory} does not exist")
        if not memfs.is_memory_filesystem(directory) and not args.allow_persistent_storage:
            raise StorageError(f"refusing to write a secret to {target}: not on a memory filesystem",
                               hint="write under /run (tmpfs), use -o - for stdout, or --allow-persistent-storage")
    pool = TrusteePool.over_aa(args.aa_socket, config_factory=default_config_factory(
        dialect=args.kbs_dialect, timeout=args.timeout))
    try:
        value = await pool.fetch(entry.trustee_url, entry.uri)
    finally:
        await pool.close()
    if target is None:
        sys.stdout.buffer.write(value)
        sys.stdout.buffer.flush()
    else:
        atomic_write(target, value, mode=0o400)
        print(f"wrote {len(value)} bytes of {entry.uri} from {entry.trustee_url} to {target} (mode 0400)",
              file=sys.stderr)
    return 0


def main(args: argparse.Namespace) -> int:
    configure_logging(level="warning", fmt="console", service="get-resource")

    async def amain() -> int:
        return await fetch_to(args)

    return run(amain)
