"""``cai attest``: one RCAR handshake (and optionally one resource) for operators and the demo."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from typing import Any

from agents.lifecycle import run
from agents.logsetup import configure_logging
from attestation_agent.aa_client import AaClient
from attestation_agent.attesters.select import select_attester
from attestation_agent.evidence import EvidenceSource, LocalEvidence
from attestation_agent.kbs import token as token_codec
from attestation_agent.kbs.client import KbsClient, KbsClientConfig
from attestation_agent.kbs.dialect import Dialect


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kbs-url", required=True, help="Trustee URL, e.g. http://10.0.0.5:8081/api")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--aa-socket", help="get evidence from a running attestation agent (default: "
                        "attest directly with the local TEE)")
    source.add_argument("--allow-sample", action="store_true",
                        help="allow the sample TEE when attesting directly (development only)")
    parser.add_argument("--dialect", choices=("auto", "0.1.0", "0.4.0"), default="auto")
    parser.add_argument("--resource", action="append", default=[], metavar="REPO/TYPE/TAG",
                        help="also fetch this resource (repeatable); prints size and SHA-256 only")
    parser.add_argument("--timeout", type=float, default=30.0)


async def attest(args: argparse.Namespace) -> dict[str, Any]:
    source: EvidenceSource
    aa = None
    if args.aa_socket:
        aa = source = AaClient(args.aa_socket)
    else:
        source = LocalEvidence(select_attester("auto" if not args.allow_sample else "sample",
                                               allow_sample=args.allow_sample))
    config = KbsClientConfig(url=args.kbs_url, timeout=args.timeout,
                             dialect=None if args.dialect == "auto" else Dialect(args.dialect))
    report: dict[str, Any] = {"kbs_url": args.kbs_url}
    try:
        async with KbsClient(config, source) as client:
            started = time.monotonic()
            attestation = await client.attest()
            claims = token_codec.unverified_claims(attestation.token)
            report.update(dialect=attestation.dialect.value, tee=attestation.tee,
                          attest_ms=round((time.monotonic() - started) * 1000, 1),
                          token={"iss": claims.get("iss"), "exp": claims.get("exp"), "tee": claims.get("tee")},
                          resources=[])
            for path in args.resource:
                started = time.monotonic()
                value = await client.get_resource(path)
                report["resources"].append({"resource": path, "size": len(value),
                                            "sha256": hashlib.sha256(value).hexdigest(),
                                            "fetch_ms": round((time.monotonic() - started) * 1000, 1)})
    finally:
        if aa is not None:
            await aa.close()
    return report


def main(args: argparse.Namespace) -> int:
    configure_logging(level="warning", fmt="console", service="attest")

    async def amain() -> int:
        print(json.dumps(await attest(args), indent=2), file=sys.stdout)
        return 0

    return run(amain)
