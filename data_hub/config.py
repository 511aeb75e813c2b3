"""Settings of the data hub: ``[cdh]`` of the config file, ``CAI_CDH_*`` variables, ``cai cdh`` options.

``[[cdh.resources]]`` tables (extra resources) live in the same section but are not scalar settings,
so they are split off before the scalar keys go through :func:`agents.sections.load_section`.
"""

from __future__ import annotations

import grp
import os
import pwd
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents import peercred, validators
from agents.config import load_cai_env
from agents.errors import ConfigError
from agents.sections import load_section, read_section
from agents.settings import Setting
from attestation_agent.kbs.trust import KBS_CA_CERT_DOC
from data_hub.resource_map import ResourceEntry, build_resource_map, entries_from_config

SECTION = "cdh"
DEFAULT_RESOURCES_DIR = "/run/cai/resources"
DEFAULT_SOCKET = "/run/cai/cdh.sock"
DEFAULT_AA_SOCKET = "/run/cai/aa.sock"
DEFAULT_SEALED_KEYS_DIR = "/run/cai/sealed-secret-keys"


def _listen(value: str) -> str:
    if value in ("", "off"):
        return "off"
    return validators.host_port(value)


def _file_mode(value: str) -> str:
    try:
        mode = int(value, 8)
    except ValueError:
        raise ValueError(f"{value!r} is not an octal file mode such as 0400") from None
    if mode & ~0o440 or not mode & 0o400:
        raise ValueError(f"file mode {value!r} must be owner-readable and may add group read only "
                         "(0400 or 0440): secret files are never writable, executable or world-readable")
    return value


def _owner(value: str) -> str:
    if not value.isdigit():
        try:
            pwd.getpwnam(value)
        except KeyError:
            raise ValueError(f"unknown user {value!r}") from None
    return value


def _group(value: str) -> str:
    if not value.isdigit():
        try:
            grp.getgrnam(value)
        except KeyError:
            raise ValueError(f"unknown group {value!r}") from None
    return value


def _non_negative(value: float) -> float:
    if value < 0:
        raise ValueError(f"{value!r} must not be negative")
    return value


CDH_SETTINGS: tuple[Setting, ...] = (
    Setting("resources_dir", str, DEFAULT_RESOURCES_DIR,
            "Directory the resources are written to (mode 0700); must be on tmpfs/ramfs.",
            validator=validators.absolute_path),
    Setting("socket", str, DEFAULT_SOCKET, "Unix socket of the CDH API (GET /cdh/resource, POST /cdh/unseal, "
            "GET /cdh/status, /readyz, /metrics).", validator=validators.absolute_path),
    Setting("socket_mode", str, "0660", "Permissions of the CDH API socket (octal)."),
    Setting(peercred.SETTING, list, None, peercred.SETTING_DOC, validator=peercred.validate_allowed_peers),
    Setting("aa_socket", str, DEFAULT_AA_SOCKET, "Unix socket of the attestation agent API (evidence source).",
            validator=validators.absolute_path),
    Setting("rest_listen", str, "off", "host:port of an api-server-rest compatible loopback listener serving "
            "GET /cdh/resource/<repo>/<type>/<tag>; 'off' (default) disables it. Only loopback peers are served.",
            validator=_listen),
    Setting("owner", str, None, "User (name or uid) that owns the resources directory and files; default: "
            "the daemon's user.", validator=_owner),
    Setting("group", str, None, "Group (name or gid) of the resources directory and files.", validator=_group),
    Setting("file_mode", str, "0400", "Mode of resource files: 0400, or 0440 to let the group read.",
            validator=_file_mode),
    Setting("refresh_interval", float, 0.0, "Seconds between re-fetches of every resource; 0 disables refresh.",
            validator=_non_negative),
    Setting("allow_persistent_storage", bool, False,
            "Write secrets even if resources_dir is not on a memory filesystem (logs a loud warning)."),
    Setting("startup_retry_initial", float, 0.5, "First delay (s) between start-up fetch attempts.",
            validator=validators.positive),
    Setting("startup_retry_max", float, 30.0, "Longest delay (s) between start-up fetch attempts "
            "(retries never stop while the daemon runs).", validator=validators.positive),
    Setting("attempt_timeout", float, 90.0, "Upper bound (s) of one fetch attempt, attestation included.",
            validator=validators.positive),
    Setting("kbs_dialect", str, "auto", "KBS protocol version: auto, 0.1.0 (Trustee <= 1.5), 0.4.0 (>= 1.6).",
            choices=("auto", "0.1.0", "0.4.0")),
    Setting("kbs_timeout", float, 30.0, "Seconds to wait for each KBS request.", validator=validators.positive),
    Setting("kbs_ca_cert", str, None, KBS_CA_CERT_DOC + " Applies to every Trustee (a bundle may hold several CAs).",
            validator=validators.absolute_path),
    Setting("sealed_keys_dir", str, DEFAULT_SEALED_KEYS_DIR,
            "Directory of local sealed-secret verification keys (JWK or PEM), looked up by the JWS 'kid'.",
            validator=validators.absolute_path),
    Setting("sealed_trustee_url", str, None, "Trustee for kbs:/// URIs inside sealed secrets and for on-demand "
            "API reads of unconfigured resources; default TRUSTEE_URL.", validator=validators.http_url),
    Setting("skip_sealed_secret_verification", bool, False,
            "Accept sealed secrets without checking their ES256 signature (CoCo's "
            "SKIP_SEALED_SECRET_VERIFICATION). Insecure; logs a loud warning."),
    Setting("log_level", str, "info", "Log level.", choices=("debug", "info", "warning", "error")),
    Setting("log_format", str, "json", "Log format: json or console.", choices=("json", "console")),
)


@dataclass(frozen=True)
class HubConfig:
    """Everything the daemon needs, validated."""

    settings: Mapping[str, Any]
    entries: tuple[ResourceEntry, ...]
    default_trustee: str | None


def load_hub_config(
    *,
    config_file: str | Path | None = None,
    env_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> HubConfig:
    """cai.env + ``[cdh]`` (+ ``[[cdh.resources]]``) + environment + CLI overrides, all validated."""
    environ = os.environ if environ is None else environ
    env = load_cai_env(environ=environ, env_file=env_file)
    block, where = read_section(SECTION, config_file)
    settings = load_section(SECTION, CDH_SETTINGS, config_file=config_file, environ=environ, overrides=overrides,
                            tables=("resources",))
    for name in ("socket_mode",):
        try:
            int(settings[name], 8)
        except ValueError:
            raise ConfigError(f"invalid value for {name!r} in {where}: {settings[name]!r} is not octal") from None
    default_trustee = settings["sealed_trustee_url"] or env.get("TRUSTEE_URL")
    extra = entries_from_config(block.get("resources", []), default_trustee=env.get("TRUSTEE_URL"), where=where)
    return HubConfig(settings=settings, entries=build_resource_map(env, extra), default_trustee=default_trustee)
