"""Configuration sources shared by every daemon: ``cai.env``, the environment, TOML/JSON files.

The ``cai.env`` variables are a contract with existing deployment guides (see DESIGN.md), so
their names, formats and defaults are declared once here in :data:`CAI_ENV_SETTINGS` and
validated up front: a daemon refuses to start on bad config instead of failing later and
obscurely (e.g. mid-attestation).
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agents import jsonutil, validators
from agents.envfile import load_env_file
from agents.errors import ConfigError
from agents.settings import REQUIRED, Setting, coerce, parse_settings

__all__ = [
    "CAI_ENV_SETTINGS",
    "REQUIRED",
    "Setting",
    "coerce",
    "load_cai_env",
    "load_config_file",
    "load_env_file",
    "parse_settings",
]


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Load a ``.toml`` or ``.json`` config file into a dict (the top level must be a table)."""
    source = str(path)
    suffix = Path(path).suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ConfigError(f"unsupported config file type {source}", hint="use a .toml or .json file")
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {source}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{source}, line {line}: not valid UTF-8") from None
    parsed: Any
    if suffix == ".toml":
        try:
            parsed = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            # tomllib's message carries "(at line L, column C)" and never the offending value.
            raise ConfigError(f"invalid TOML in {source}: {exc}") from None
        except RecursionError:
            raise ConfigError(f"invalid TOML in {source}: nested too deeply") from None
    else:
        try:
            parsed = jsonutil.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"invalid JSON in {source}: {exc.msg} (at line {exc.lineno}, column {exc.colno})"
            ) from None
    if not isinstance(parsed, dict):
        raise ConfigError(f"{source}: the top level must be an object/table, not {type(parsed).__name__}")
    return parsed


CAI_ENV_SETTINGS: tuple[Setting, ...] = (
    Setting(
        "TRUSTEE_URL",
        str,
        doc="Trustee that releases the model key: a KBS URL or a Trustee gateway with the /api "
        "prefix, e.g. http://1.2.3.4:8081/api.",
        validator=validators.http_url,
    ),
    Setting(
        "MODEL_KEY_ID",
        str,
        doc="Resource URI of the model decryption key, kbs://[host[:port]]/<repo>/<type>/<tag>, "
        "e.g. kbs:///default/aliyun/model-decryption-key. Lands at /run/cai/resources/model-key.",
        validator=validators.kbs_uri,
    ),
    Setting(
        "MODEL_OSS_BUCKET_PATH",
        str,
        doc="Where the encrypted model lives in object storage, <bucket>:<path>, "
        "e.g. conf-ai:/qwen2.5-3b-gocryptfs/.",
        validator=validators.oss_bucket_path,
    ),
    Setting(
        "MODEL_OSS_ENDPOINT",
        str,
        doc="Object-storage endpoint, as a URL or a host name (OSS and S3 speak the same API).",
        validator=validators.url_or_host,
    ),
    Setting(
        "MODEL_OSS_ACCESS_KEY_ID",
        str,
        doc="Object-storage access key ID; leave unset for public-read buckets.",
    ),
    Setting(
        "MODEL_OSS_SECRET_ACCESS_KEY",
        str,
        doc="Object-storage secret access key; leave unset for public-read buckets.",
        secret=True,
    ),
    Setting(
        "MODEL_OSS_SESSION_TOKEN",
        str,
        doc="Object-storage STS session token, for temporary credentials only.",
        secret=True,
    ),
    Setting(
        "MODEL_ENCRYPTION_METHOD",
        str,
        default="gocryptfs",
        doc="How the model is encrypted at rest.",
        choices=("gocryptfs", "sam"),
    ),
    Setting(
        "MODEL_MOUNT_POINT",
        str,
        doc="Absolute path where the decrypted model appears (FUSE), e.g. /tmp/model.",
        validator=validators.absolute_path,
    ),
    Setting(
        "ALT_TRUSTEE_URL",
        str,
        doc="Second Trustee (e.g. the data owner's, for the RAG master key), same format as TRUSTEE_URL.",
        validator=validators.http_url,
    ),
    Setting(
        "ALT_KEY_ID",
        str,
        doc="Resource URI fetched from ALT_TRUSTEE_URL, e.g. kbs:///default/aliyun/crag-master-key. "
        "Lands at /run/cai/resources/alt-key.",
        validator=validators.kbs_uri,
    ),
    Setting(
        "MODEL_SERVICE_PORT",
        int,
        doc="Port of the inference service whose traffic is transparently protected, e.g. 8080.",
        validator=validators.port,
    ),
    Setting(
        "TRUSTEE_POLICY",
        str,
        default="default",
        doc="Attestation policy ID Trustee evaluates the evidence against.",
    ),
    Setting(
        "MODEL_SHARING_PEER",
        list,
        doc="Space-separated IP addresses of peer VMs allowed to share the model.",
        validator=validators.ip_list,
    ),
)


def load_cai_env(
    environ: Mapping[str, str] | None = None,
    env_file: str | Path | None = None,
) -> dict[str, Any]:
    """Read the cai.env variables from ``env_file`` and the environment (the environment wins).

    Other environment variables are ignored: the process environment is full of unrelated
    names. Secret values are registered for log redaction as they are parsed.
    """
    env = os.environ if environ is None else environ
    names = {setting.name for setting in CAI_ENV_SETTINGS}
    merged: dict[str, str] = {}
    if env_file is not None:
        merged.update({k: v for k, v in load_env_file(env_file).items() if k in names})
    merged.update({k: v for k, v in env.items() if k in names})
    where = str(env_file) if env_file is not None else "cai.env"
    return parse_settings(merged, CAI_ENV_SETTINGS, where=where, allow_unknown=True)
