"""Per-daemon settings: a ``[section]`` of the config file overlaid by ``CAI_<SECTION>_<KEY>`` variables.

Containers and systemd units are configured through the environment, bare VMs through
``/etc/cai/cai.toml``; both reach the same validated settings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agents.config import load_config_file
from agents.errors import ConfigError
from agents.settings import Setting, parse_settings


def read_section(section: str, config_file: str | Path | None) -> tuple[dict[str, Any], str]:
    """The raw ``[section]`` table of ``config_file`` (empty without a file) and its name for errors."""
    if config_file is None:
        return {}, f"[{section}]"
    data = load_config_file(config_file)
    block = data.get(section, {})
    if not isinstance(block, dict):
        raise ConfigError(f"[{section}] in {config_file} must be a table/object")
    return block, f"[{section}] ({config_file})"


def load_section(
    section: str,
    settings: Sequence[Setting],
    *,
    config_file: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    tables: Sequence[str] = (),
) -> dict[str, Any]:
    """Validated settings of ``section``: file, then environment, then explicit (CLI) overrides.

    ``tables`` names keys of the section that are not scalar settings (e.g. ``[[cdh.resources]]``);
    the caller reads them with :func:`read_section` and validates them itself.
    """
    environ = os.environ if environ is None else environ
    block, where = read_section(section, config_file)
    raw: dict[str, Any] = {key: value for key, value in block.items() if key not in tables}
    prefix = f"CAI_{section.upper()}_"
    env_names = {prefix + s.name.upper(): s.name for s in settings}
    for env_name, key in env_names.items():
        if env_name in environ:
            raw[key] = environ[env_name]
    unknown_env = [name for name in environ if name.startswith(prefix) and name not in env_names]
    if unknown_env:
        raise ConfigError(f"unknown environment variable {unknown_env[0]}",
                          hint="valid: " + ", ".join(sorted(env_names)))
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
    return parse_settings(raw, settings, where=where)
