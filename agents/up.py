"""``cai up``: start the suite's daemons from a cai.env, in dependency order, and supervise them.

For bare VMs without systemd units and for debugging: the same order and readiness rules as
systemd/ and compose/ — the attestation agent first; the data hub once the agent is ready; cachefs
once the data hub has the model key; the gateway once the agent is ready. A daemon that dies takes
the others down (fail closed: no attestation, no secret, no mount, no port) and ``cai up`` exits 1.
Which daemons run follows cai.env: the data hub when MODEL_KEY_ID or ALT_KEY_ID is set, cachefs when
MODEL_MOUNT_POINT is set, the gateway when MODEL_SERVICE_PORT is set.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path
from typing import Any

from agents.config import load_cai_env
from agents.errors import ConfigError
from agents.lifecycle import Lifecycle, run
from agents.logsetup import configure_logging, get_logger
from agents.supervisor import DaemonSupervisor

log = get_logger("up")

DAEMONS = ("aa", "cdh", "cachefs", "gateway")
GATEWAY_CONTROL = "127.0.0.1:8007"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env-file", default="/etc/cai/cai.env", help="cai.env (default /etc/cai/cai.env)")
    parser.add_argument("--config", help="TOML/JSON config file with [aa], [cdh], [cachefs] sections")
    parser.add_argument("--run-dir", default="/run/cai",
                        help="directory of the sockets and (tmpfs!) resources (default /run/cai)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(DAEMONS)} (default: from cai.env)")
    parser.add_argument("--capture", choices=("mapping", "netfilter"), default="netfilter",
                        help="gateway capture of MODEL_SERVICE_PORT (default netfilter, as in compose)")
    parser.add_argument("--timeout", type=float, default=900.0,
                        help="seconds each daemon may take to become ready (cachefs may download)")
    parser.add_argument("--log-dir", help="write each daemon's log to <dir>/<daemon>.log (default: stderr)")


def plan(env: dict[str, Any], only: str | None) -> list[str]:
    """Which daemons to run, in start order."""
    if only:
        chosen = [name.strip() for name in only.split(",") if name.strip()]
        unknown = sorted(set(chosen) - set(DAEMONS))
        if unknown:
            raise ConfigError(f"--only names unknown daemon(s) {unknown}", hint="choose from " + ", ".join(DAEMONS))
        return [name for name in DAEMONS if name in chosen]
    names = ["aa"]
    if env.get("MODEL_KEY_ID") or env.get("ALT_KEY_ID"):
        names.append("cdh")
    if env.get("MODEL_MOUNT_POINT"):
        if "cdh" not in names:
            raise ConfigError("MODEL_MOUNT_POINT is set but MODEL_KEY_ID is not: cachefs would wait for a key "
                              "that nobody fetches", hint="set MODEL_KEY_ID (and TRUSTEE_URL) in cai.env")
        names.append("cachefs")
    if env.get("MODEL_SERVICE_PORT"):
        names.append("gateway")
    return names


def commands(names: list[str], args: argparse.Namespace) -> dict[str, tuple[list[str], dict[str, str]]]:
    """argv and environment per daemon; sockets and resources under --run-dir."""
    run_dir = Path(args.run_dir)
    common = ["--env-file", args.env_file] if args.env_file else []
    with_config = common + (["--config", args.config] if args.config else [])
    env = {
        "CAI_AA_SOCKET": str(run_dir / "aa.sock"), "CAI_AA_CDH_SOCKET": str(run_dir / "cdh.sock"),
        "CAI_CDH_SOCKET": str(run_dir / "cdh.sock"), "CAI_CDH_AA_SOCKET": str(run_dir / "aa.sock"),
        "CAI_CDH_RESOURCES_DIR": str(run_dir / "resources"),
        "CAI_CACHEFS_SOCKET": str(run_dir / "cachefs.sock"),
        "CAI_CACHEFS_KEY_FILE": str(run_dir / "resources" / "model-key"),
    }
    table = {
        "aa": (["aa", *with_config], env),
        "cdh": (["cdh", *with_config], env),
        "cachefs": (["cachefs", *with_config], env),
        "gateway": (["gateway", *common, "--capture", args.capture, "--aa-socket", str(run_dir / "aa.sock"),
                     "--control-listen", GATEWAY_CONTROL], env),
    }
    return {name: table[name] for name in names}


async def supervise(args: argparse.Namespace) -> int:
    env_file = args.env_file if args.env_file and Path(args.env_file).exists() else None
    if args.env_file and env_file is None:
        raise ConfigError(f"cai.env not found at {args.env_file}", hint="pass --env-file, see compose/cai.env.example")
    names = plan(load_cai_env(env_file=env_file), args.only)
    log_dir = Path(args.log_dir) if args.log_dir else None
    Path(args.run_dir).mkdir(parents=True, exist_ok=True, mode=0o755)
    state_dir = log_dir or Path(args.run_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    async with Lifecycle("up") as lifecycle, contextlib.AsyncExitStack() as stack:
        supervisor = DaemonSupervisor(stack, state_dir, args.timeout, log_to_files=log_dir is not None)
        for name, (argv, env) in commands(names, args).items():
            starting = asyncio.ensure_future(supervisor.start(name, argv, env))
            stopping = asyncio.ensure_future(lifecycle.wait_stopped())
            done, _ = await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping in done:
                starting.cancel()
                await asyncio.gather(starting, return_exceptions=True)
                log.info("up.interrupted", during=name)
                await supervisor.stop_all()
                return 0
            stopping.cancel()
            try:
                detail = starting.result()
            except (RuntimeError, TimeoutError) as exc:
                log.error("up.start_failed", daemon=name, error=str(exc))
                await supervisor.stop_all()
                return 1
            log.info("up.started", daemon=name, detail=detail)
        lifecycle.mark_ready("all daemons ready: " + ", ".join(names))
        log.info("up.ready", daemons=names)
        exited = asyncio.ensure_future(supervisor.first_exit())
        stopping = asyncio.ensure_future(lifecycle.wait_stopped())
        done, _ = await asyncio.wait({exited, stopping}, return_when=asyncio.FIRST_COMPLETED)
        code = 0
        if exited in done:
            name, rc = exited.result()
            log.error("up.daemon_exited", daemon=name, exit_code=rc, message="stopping the others (fail closed)")
            code = 1
        for task in (exited, stopping):
            task.cancel()
        codes = await supervisor.stop_all()
        log.info("up.stopped", exit_codes=codes)
        return code


def main(args: argparse.Namespace) -> int:
    configure_logging(level="info", fmt="json", service="up")
    return run(lambda: supervise(args))

