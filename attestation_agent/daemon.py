"""``cai aa``: the attestation agent daemon."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from agents.config import load_cai_env
from agents.health import HealthState, Metrics
from agents.http import start_site
from agents.lifecycle import Lifecycle, run
from agents.logsetup import configure_logging, get_logger
from agents.peercred import guard_from_settings
from agents.sections import load_section
from attestation_agent.api import build_app
from attestation_agent.attesters.base import DeviceAttester
from attestation_agent.attesters.select import select_attester
from attestation_agent.config import AA_SETTINGS, DEFAULT_REST_LISTEN, DEFAULT_SOCKET
from attestation_agent.errors import AttestationError, KbsAttestationRejectedError
from attestation_agent.kbs.client import KbsClientConfig
from attestation_agent.kbs.dialect import Dialect
from attestation_agent.kbs.tee_key import KeyAlgorithm
from attestation_agent.kbs.trust import trustee_ssl_context
from attestation_agent.service import AgentOptions, AttestationAgent

log = get_logger("aa")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TOML/JSON config file with an [aa] section")
    parser.add_argument("--env-file", metavar="FILE", help="cai.env file (TRUSTEE_URL, ...)")
    parser.add_argument("--socket", help=f"Unix socket for the AA API (default {DEFAULT_SOCKET})")
    parser.add_argument("--rest-listen", metavar="HOST:PORT",
                        help=f"api-server-rest compatible listener, or 'off' (default {DEFAULT_REST_LISTEN})")
    parser.add_argument("--cdh-socket", help="data hub socket that /cdh/resource/... on the REST listener is "
                        "forwarded to, or 'off' (default /run/cai/cdh.sock)")
    parser.add_argument("--tee", choices=("auto", "tdx", "tpm", "sample"), help="TEE to use (default: auto)")
    parser.add_argument("--allow-sample", action="store_true", default=None,
                        help="allow the sample TEE (no hardware root of trust; development only)")
    parser.add_argument("--kbs-url", help="Trustee KBS URL (default: TRUSTEE_URL)")
    parser.add_argument("--kbs-dialect", choices=("auto", "0.1.0", "0.4.0"), help="pin the KBS protocol version")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"))
    parser.add_argument("--log-format", choices=("json", "console"))


def kbs_config(url: str | None, settings: dict[str, Any]) -> KbsClientConfig | None:
    if not url:
        return None
    dialect = None if settings["kbs_dialect"] == "auto" else Dialect(settings["kbs_dialect"])
    alg = None if settings["kbs_key_algorithm"] == "auto" else KeyAlgorithm(settings["kbs_key_algorithm"])
    return KbsClientConfig(url=url, dialect=dialect, key_algorithm=alg, timeout=settings["kbs_timeout"],
                           ssl=trustee_ssl_context(settings["kbs_ca_cert"]))


def select_devices(settings: dict[str, Any]) -> tuple[DeviceAttester, ...]:
    """Additional devices to attest alongside the primary TEE (caiOptions gpu-ra-enable)."""
    if not settings["gpu_ra_enable"]:
        return ()
    from attestation_agent.attesters.nvidia import NvidiaGpuAttester  # NVML only where GPUs are attested

    return (NvidiaGpuAttester(set_ready=settings["gpu_set_ready"]),)


def load_settings(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    env = load_cai_env(env_file=args.env_file)
    overrides = {"socket": args.socket, "rest_listen": args.rest_listen, "tee": args.tee,
                 "cdh_socket": args.cdh_socket,
                 "allow_sample": args.allow_sample, "kbs_url": args.kbs_url, "kbs_dialect": args.kbs_dialect,
                 "log_level": args.log_level, "log_format": args.log_format}
    return load_section("aa", AA_SETTINGS, config_file=args.config, overrides=overrides), env


async def serve(settings: dict[str, Any], env: dict[str, Any]) -> int:
    health, metrics = HealthState(), Metrics()
    attester = select_attester(settings["tee"], allow_sample=settings["allow_sample"], settings=settings)
    if attester.development_only:
        log.warning("aa.development_tee", tee=attester.tee_type,
                    message="the sample TEE proves nothing; never use it in production")
    agent = AttestationAgent(attester, AgentOptions(kbs=kbs_config(settings["kbs_url"] or env.get("TRUSTEE_URL"),
                                                                    settings)),
                             devices=select_devices(settings), metrics=metrics)
    runners = []
    async with Lifecycle("aa") as lifecycle:
        try:
            runners.append(await start_site(build_app(agent, health, metrics), unix_path=settings["socket"],
                                            socket_mode=0o660, peer_guard=guard_from_settings(
                                                settings, section="aa", metrics=metrics, logger=log)))
            if settings["rest_listen"] != "off":
                host, _, port = settings["rest_listen"].rpartition(":")
                runners.append(await start_site(build_app(agent, health, metrics, rest_bridge=True,
                                                          cdh_socket=None if settings["cdh_socket"] == "off"
                                                          else settings["cdh_socket"]),
                                                host=host.strip("[]"), port=int(port)))
            await agent.evidence(b"\0" * 32)  # self-test: the TEE interface answers
            if agent.additional_tees and agent.options.kbs is not None:
                # Devices (GPUs) become usable only after a Trustee accepted them: attest once now.
                lifecycle.spawn(_initial_attestation(agent), name="initial-attestation")
            health.set_check("attester", True, attester.tee_type)
            health.mark_started()
            lifecycle.mark_ready(f"attesting with {attester.tee_type}")
            log.info("aa.ready", tee=attester.tee_type, socket=settings["socket"], rest=settings["rest_listen"],
                     kbs=agent.options.kbs.url if agent.options.kbs else None)
            await lifecycle.wait_stopped()
        finally:
            for runner in reversed(runners):
                await runner.cleanup()
            await agent.close()
    log.info("aa.stopped")
    return 0


async def _initial_attestation(agent: AttestationAgent) -> None:
    """Attest until the Trustee answers (it may start after us); a refusal is final and logged."""
    delay = 1.0
    while True:
        try:
            await agent.token("kbs")
            log.info("aa.devices_attested", devices=agent.additional_tees)
            return
        except KbsAttestationRejectedError as exc:
            log.error("aa.devices_rejected", devices=agent.additional_tees, error=str(exc))
            return
        except AttestationError as exc:
            log.warning("aa.initial_attestation_retry", error=str(exc), retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 60.0)


def main(args: argparse.Namespace) -> int:
    def entry() -> Any:
        settings, env = load_settings(args)
        configure_logging(level=settings["log_level"], fmt=settings["log_format"], service="aa")
        return serve(settings, env)

    async def amain() -> int:
        return await entry()

    return run(amain)
