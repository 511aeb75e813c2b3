"""``cai cdh``: the data hub daemon.

Start-up order: config (fail fast, exit 2) → resources directory (refuse non-memory filesystems,
exit 1) → API socket(s) → fetch every resource concurrently, retrying while Trustees are down
(not ready meanwhile, never exits) → ready (sd_notify READY=1, ``/readyz`` 200, ``.ready`` marker)
→ optional refresh loop until SIGTERM.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from typing import Any

from agents.health import HealthState, Metrics
from agents.http import start_site
from agents.lifecycle import Lifecycle, run
from agents.logsetup import configure_logging, get_logger
from agents.peercred import guard_from_settings
from agents.retry import Backoff
from agents.settings import Setting
from attestation_agent.kbs.trust import trustee_ssl_context
from data_hub.api import build_app
from data_hub.config import CDH_SETTINGS, HubConfig, load_hub_config
from data_hub.errors import ResourceUnavailableError
from data_hub.hub import DataHub, HubOptions
from data_hub.store import ResourceStore, resolve_owner
from data_hub.trustees import TrusteePool, default_config_factory
from data_hub.unseal import Unsealer
from data_hub.uri import ResourceUri

log = get_logger("cdh")


def _option(setting: Setting) -> str:
    return "--" + setting.name.replace("_", "-")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per ``[cdh]`` setting (same name with dashes), so --help documents every key."""
    parser.add_argument("--config", metavar="FILE", help="TOML/JSON config file with a [cdh] section and "
                        "optional [[cdh.resources]] tables (uri, trustee_url, file, required)")
    parser.add_argument("--env-file", metavar="FILE", help="cai.env file (TRUSTEE_URL, MODEL_KEY_ID, "
                        "ALT_TRUSTEE_URL, ALT_KEY_ID, ...)")
    for setting in CDH_SETTINGS:
        default = f" (default: {setting.default})" if setting.default not in (None, "") else ""
        help_text = setting.doc.replace("%", "%%") + default
        if setting.kind is bool:
            parser.add_argument(_option(setting), dest=setting.name, action=argparse.BooleanOptionalAction,
                                default=None, help=help_text)
        else:
            parser.add_argument(_option(setting), dest=setting.name, default=None, choices=setting.choices,
                                metavar=setting.name.upper() if setting.choices is None else None, help=help_text)


def load(args: argparse.Namespace) -> HubConfig:
    overrides = {setting.name: getattr(args, setting.name, None) for setting in CDH_SETTINGS}
    return load_hub_config(config_file=args.config, env_file=args.env_file, overrides=overrides)


def build_store(settings: Mapping[str, Any]) -> ResourceStore:
    uid, gid = resolve_owner(settings["owner"], settings["group"])
    return ResourceStore(settings["resources_dir"], file_mode=int(settings["file_mode"], 8), uid=uid, gid=gid,
                         allow_persistent=settings["allow_persistent_storage"])


async def serve(config: HubConfig, *, pool: TrusteePool | None = None) -> int:
    settings = config.settings
    health, metrics = HealthState(), Metrics()
    store = build_store(settings)
    store.prepare()
    store.set_ready(False)
    if pool is None:
        pool = TrusteePool.over_aa(settings["aa_socket"], config_factory=default_config_factory(
            dialect=settings["kbs_dialect"], timeout=settings["kbs_timeout"],
            ssl=trustee_ssl_context(settings["kbs_ca_cert"])), metrics=metrics)
    options = HubOptions(refresh_interval=settings["refresh_interval"], attempt_timeout=settings["attempt_timeout"],
                         startup_backoff=Backoff(initial=settings["startup_retry_initial"],
                                                 maximum=max(settings["startup_retry_max"],
                                                             settings["startup_retry_initial"]),
                                                 attempts=sys.maxsize))
    hub = DataHub(config.entries, store, pool.fetch, options=options, health=health, metrics=metrics)
    default_trustee = config.default_trustee

    async def fetch_default(uri: ResourceUri) -> bytes:
        if default_trustee is None:
            raise ResourceUnavailableError(f"no Trustee configured to fetch {uri}",
                                           hint="set TRUSTEE_URL or sealed_trustee_url")
        return await hub.fetch_bounded(default_trustee, uri)  # an API client waits: one attempt's bound

    unsealer = Unsealer(fetch_default, keys_dir=settings["sealed_keys_dir"],
                        skip_verification=settings["skip_sealed_secret_verification"])
    runners = []
    async with Lifecycle("cdh") as lifecycle:
        try:
            runners.append(await start_site(
                build_app(hub, unsealer, health, metrics, on_demand=fetch_default if default_trustee else None),
                unix_path=settings["socket"], socket_mode=int(settings["socket_mode"], 8),
                peer_guard=guard_from_settings(settings, section="cdh", metrics=metrics, logger=log)))
            if settings["rest_listen"] != "off":
                host, _, port = settings["rest_listen"].rpartition(":")
                runners.append(await start_site(
                    build_app(hub, unsealer, health, metrics,
                              on_demand=fetch_default if default_trustee else None, rest_bridge=True),
                    host=host.strip("[]"), port=int(port)))
            health.mark_started()
            log.info("cdh.starting", resources=[entry.describe() for entry in config.entries],
                     trustees=sorted({entry.trustee_url for entry in config.entries}), socket=settings["socket"],
                     rest=settings["rest_listen"], resources_dir=str(store.directory))

            async def become_ready() -> None:
                await hub.ready_event.wait()
                lifecycle.mark_ready(f"{len(config.entries)} resource(s) in {store.directory}")
                log.info("cdh.ready", resources_dir=str(store.directory),
                         present=[name for name, state in hub.states.items() if state.present])

            lifecycle.spawn(become_ready(), name="cdh-ready")
            lifecycle.spawn(_start_then_refresh(hub), name="cdh-resources")
            await lifecycle.wait_stopped()
        finally:
            for runner in reversed(runners):
                await runner.cleanup()
            await pool.close()
    log.info("cdh.stopped")
    return 0


async def _start_then_refresh(hub: DataHub) -> None:
    await hub.start()
    if hub.options.refresh_interval > 0:
        await hub.refresh_forever()


def main(args: argparse.Namespace) -> int:
    async def amain() -> int:
        config = load(args)
        configure_logging(level=config.settings["log_level"], fmt=config.settings["log_format"], service="cdh")
        return await serve(config)

    return run(amain)

