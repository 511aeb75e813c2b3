"""``cai gateway``: run the egress/ingress entries of a TNG-style JSON config.

``cai gateway --config tng.json`` takes the file ``tng launch -c`` takes. Without ``--config`` the
egress is derived from cai.env (``MODEL_SERVICE_PORT``) and the caiOptions annotation
(``--cai-options '{"tng-http-secure-ports":[{"port":8080}]}'``), which is how the sidecar runs in
ACK-CAI. ``/livez``, ``/readyz`` and ``/metrics`` are served on ``control_interface.restful`` (or
``--control-listen``); the process is ready once every egress holds an attested certificate.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from aiohttp import web

from agents.config import load_cai_env
from agents.health import HealthState, Metrics, add_health_routes
from agents.http import start_site
from agents.lifecycle import Lifecycle, run
from agents.logsetup import configure_logging, get_logger
from gateway.attester import EvidenceProvider, provider_for
from gateway.cert_manager import AttestedCertManager
from gateway.config import (
    DERIVED_PROTOCOLS,
    MAX_CONFIG_BYTES,
    EgressConfig,
    GatewayConfig,
    derive_egress_config,
    parse_config,
    parse_config_json,
)
from gateway.egress import Egress
from gateway.errors import GatewayConfigError
from gateway.ingress import Ingress
from gateway.metrics import GatewayMetrics
from gateway.ohttp_egress import OhttpEgress
from gateway.verifier import PeerVerifier

log = get_logger("gateway.daemon")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE", help="TNG-style JSON config (add_egress/add_ingress/...)")
    parser.add_argument("--env-file", metavar="FILE", help="cai.env (MODEL_SERVICE_PORT) when --config is absent")
    parser.add_argument("--cai-options", metavar="JSON|@FILE", help="caiOptions annotation (tng-http-secure-ports)")
    parser.add_argument("--aa-socket", default=None, help="attestation agent socket for a derived egress")
    parser.add_argument("--capture", choices=("mapping", "netfilter"), default="mapping",
                        help="capture mode for a derived egress (default mapping: listen on 40000+i)")
    parser.add_argument("--protocol", choices=DERIVED_PROTOCOLS, default="rats-tls",
                        help="protocol of a derived egress: rats-tls (TNG >= 2.7 clients), ohttp (TNG >= 2.2.6 "
                        "clients with encap_in_http), h2c-2.2.4 (TNG <= 2.2.4 clients with encap_in_http)")
    parser.add_argument("--control-listen", metavar="HOST:PORT", help="health/metrics listener "
                        "(default: control_interface.restful, else off)")
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info")
    parser.add_argument("--log-format", choices=("json", "console"), default="json")


def load_gateway_config(args: argparse.Namespace) -> GatewayConfig:
    if args.config:
        try:
            text = Path(args.config).read_bytes()[:MAX_CONFIG_BYTES + 1]
        except OSError as exc:
            raise GatewayConfigError(f"cannot read gateway config {args.config}: {exc.strerror}") from None
        return parse_config_json(text)
    options: Any = args.cai_options
    if options and options.startswith("@"):
        try:
            options = Path(options[1:]).read_text()
        except OSError as exc:
            raise GatewayConfigError(f"cannot read caiOptions file {options[1:]}: {exc.strerror}") from None
    env = load_cai_env(env_file=args.env_file)
    extra = {"aa_addr": "unix://" + args.aa_socket} if args.aa_socket else {}
    derived = derive_egress_config(env, options, capture=args.capture,
                                   protocol=getattr(args, "protocol", "rats-tls"), **extra)
    log.info("gateway.config.derived", config=json.dumps(derived))
    return parse_config(derived)


async def serve(config: GatewayConfig, control: tuple[str, int] | None) -> int:
    health, metrics = HealthState(), Metrics()
    gw_metrics = GatewayMetrics(metrics)
    providers: list[EvidenceProvider] = []
    managers: list[AttestedCertManager] = []
    egresses: list[Egress] = []
    ingresses: list[Ingress] = []
    runner: web.AppRunner | None = None
    runners: list[web.AppRunner] = []
    async with Lifecycle("gateway") as lifecycle:
        try:
            if control is not None:
                app = web.Application()
                add_health_routes(app, health, metrics)
                runner = await start_site(app, host=control[0], port=control[1])
            for entry in config.egress:
                attest = entry.security.attest
                provider = provider_for(attest) if attest is not None else None
                if provider is not None:
                    providers.append(provider)
                if entry.security.ohttp is not None:
                    runners.extend(await _start_ohttp(entry, provider, gw_metrics))
                    health.set_check(f"egress{entry.id}", True, "ohttp listening")
                    continue
                certs = AttestedCertManager(provider, alpn=entry.security.alpn, binding=entry.security.binding,
                                            refresh_interval=attest.refresh_interval if attest else 600)
                egress = Egress(entry, certs, gw_metrics)  # validates the mode before attesting
                await certs.start()
                managers.append(certs)
                gw_metrics.attestation.labels(side="egress", result="certificate").inc()
                gw_metrics.watch_certificate(entry.id, certs)
                await egress.start()
                egresses.append(egress)
                health.set_check(f"egress{entry.id}", True, f"listening on {egress.ports}")
                health.add_probe(f"egress{entry.id}.certificate", certs.probe)
            for ientry in config.ingress:
                verifier = (PeerVerifier(ientry.security.verify, binding=ientry.security.binding)
                            if ientry.security.verify else None)
                ingress = Ingress(ientry, gw_metrics, verifier)
                await ingress.start()
                ingresses.append(ingress)
                health.set_check(f"ingress{ientry.id}", True, f"listening on {ingress.ports}")
            health.mark_started()
            lifecycle.mark_ready("gateway listening")
            log.info("gateway.ready", egress=[e.ports for e in egresses], ingress=[i.ports for i in ingresses])
            await lifecycle.wait_stopped()
        finally:
            for ingress in ingresses:
                await ingress.stop()
            for ohttp_runner in runners:
                await ohttp_runner.cleanup()
            for egress in egresses:
                await egress.stop()
            for certs in managers:
                await certs.stop()
            for provider in providers:
                await provider.close()
            if runner is not None:
                await runner.cleanup()
            gw_metrics.live.set(0)
    log.info("gateway.stopped")
    return 0


async def _start_ohttp(entry: EgressConfig, provider: EvidenceProvider | None, metrics: GatewayMetrics
                       ) -> list[web.AppRunner]:
    """One OHTTP server per mapping rule (netfilter capture is implemented for rats-tls only)."""
    if entry.netfilter is not None:
        raise GatewayConfigError(f"add_egress[{entry.id}].netfilter: netfilter capture is implemented for "
                                 "rats-tls only",
                                 hint="use 'mapping'")
    started = []
    for rule in entry.mapping:
        egress = OhttpEgress(entry, provider, metrics, f"{rule.target.host}:{rule.target.port}")
        listen = f"{rule.listen.host}:{rule.listen.port}"
        started.append(await start_site(egress.app(listen), host=rule.listen.host, port=rule.listen.port))
        log.info("gateway.egress.listening", id=entry.id, listen=listen, protocol="ohttp",
                 backend=f"{rule.target.host}:{rule.target.port}")
    return started


def _control(args: argparse.Namespace, config: GatewayConfig) -> tuple[str, int] | None:
    if args.control_listen:
        host, _, port = args.control_listen.rpartition(":")
        if not port.isdigit():
            raise GatewayConfigError(f"--control-listen {args.control_listen!r} is not HOST:PORT")
        return host.strip("[]") or "127.0.0.1", int(port)
    if config.control_interface is not None:
        return config.control_interface.host, config.control_interface.port
    return None


def main(args: argparse.Namespace) -> int:
    async def amain() -> int:
        configure_logging(level=args.log_level, fmt=args.log_format, service="gateway")
        config = load_gateway_config(args)
        return await serve(config, _control(args, config))

    return run(amain)
