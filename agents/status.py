"""``cai status``: each daemon's readiness (and what it is waiting for), from its health endpoint.

Reads only health and status endpoints: never a secret, a token or a resource value.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents import jsonutil
from agents.healthcheck import parse_target, probe


@dataclass(frozen=True)
class DaemonEndpoint:
    name: str
    target: str
    status_path: str | None  # extra JSON status worth summarising


def endpoints(run_dir: str, gateway: str) -> list[DaemonEndpoint]:
    root = Path(run_dir)
    return [
        DaemonEndpoint("attestation-agent", str(root / "aa.sock"), "/aa/tee"),
        DaemonEndpoint("data-hub", str(root / "cdh.sock"), "/cdh/status"),
        DaemonEndpoint("cachefs", str(root / "cachefs.sock"), "/status"),
        DaemonEndpoint("gateway", gateway, None),
    ]


def _summary(name: str, body: str) -> str:
    try:
        info: Any = jsonutil.loads(body)
    except ValueError:
        return ""
    if name == "attestation-agent" and isinstance(info, dict):
        extra = info.get("additional_tees") or []
        return f"tee={info.get('tee')}" + (f" devices={','.join(extra)}" if extra else "")
    if name == "data-hub" and isinstance(info, dict):
        items = info.get("resources") or []
        present = [r.get("file") for r in items if isinstance(r, dict) and r.get("present")]
        missing = [r.get("file") for r in items if isinstance(r, dict) and not r.get("present")]
        return f"present={','.join(map(str, present)) or '-'}" + (f" missing={','.join(map(str, missing))}"
                                                                   if missing else "")
    if name == "cachefs" and isinstance(info, dict):
        download = info.get("download") or {}
        percent = download.get("percent") if isinstance(download, dict) else None
        return f"mounted={info.get('mounted')}" + (f" download={percent}%" if percent is not None else "")
    return ""


def collect(run_dir: str, gateway: str, timeout: float) -> list[dict[str, Any]]:
    rows = []
    for endpoint in endpoints(run_dir, gateway):
        target = parse_target(endpoint.target)
        try:
            code, body = probe(target, "/readyz", timeout, full_body=True)
        except OSError as exc:
            rows.append({"daemon": endpoint.name, "endpoint": endpoint.target, "state": "not running",
                         "detail": type(exc).__name__})
            continue
        state = "ready" if code == 200 else "not ready"
        detail = ""
        if code != 200:
            try:
                failing = jsonutil.loads(body).get("failing") or {}
                detail = "; ".join(f"{k}: {v}" for k, v in failing.items())
            except (ValueError, AttributeError):
                detail = body[:200]
        elif endpoint.status_path:
            try:
                scode, sbody = probe(target, endpoint.status_path, timeout, full_body=True)
                detail = _summary(endpoint.name, sbody) if scode == 200 else ""
            except OSError:
                detail = ""
        rows.append({"daemon": endpoint.name, "endpoint": endpoint.target, "state": state, "detail": detail})
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-dir", default="/run/cai", help="directory of the daemons' sockets")
    parser.add_argument("--gateway", default="127.0.0.1:8007", help="the gateway's control listener")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--timeout", type=float, default=3.0)


def main(args: argparse.Namespace) -> int:
    rows = collect(args.run_dir, args.gateway, args.timeout)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for row in rows:
            print(f"{row['daemon']:<18} {row['state']:<12} {row['detail']}")
    # Exit 0 only when every daemon that runs is ready (absent daemons are reported, not failed,
    # because a deployment may not use all four); 1 when one is running but not ready.
    running = [row for row in rows if row["state"] != "not running"]
    if not running:
        print("no CAI daemon is running under " + args.run_dir, file=sys.stderr)
        return 3
    return 0 if all(row["state"] == "ready" for row in running) else 1
