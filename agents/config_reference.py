"""Render ``docs/configuration.md`` from the :class:`~agents.settings.Setting` schemas.

The daemons parse their configuration from the same declarations this module documents, and a
test compares the committed reference with :func:`render` — so the reference cannot drift from
what the code accepts. Regenerate with ``python scripts/gen-config-reference.py``.

The daemon packages are imported lazily, by name, so ``agents`` stays at the bottom of the import
graph. A daemon without a ``Setting`` schema (the gateway, configured by a TNG JSON file and
command-line options) is documented from its ``argparse`` options instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agents.settings import REQUIRED, Setting

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"


@dataclass(frozen=True)
class Section:
    """One ``[section]`` of the config file (``CAI_<SECTION>_<KEY>`` variables)."""

    name: str
    title: str
    module: str
    attribute: str
    intro: str


SECTIONS: tuple[Section, ...] = (
    Section("aa", "Attestation agent — `cai aa`", "attestation_agent.config", "AA_SETTINGS",
            "Serves evidence and Trustee tokens on `/run/cai/aa.sock` and the api-server-rest compatible "
            "port `127.0.0.1:8006`."),
    Section("cdh", "Data hub — `cai cdh`", "data_hub.config", "CDH_SETTINGS",
            "Writes `model-key` and `alt-key` (and any `[[cdh.resources]]`) to `/run/cai/resources`. Extra "
            "resources are `[[cdh.resources]]` tables in the config file with keys `uri`, `trustee_url`, "
            "`file` and `required`; they have no environment form."),
    Section("cachefs", "Model filesystem — `cai cachefs`", "cachefs.daemon", "CACHEFS_SETTINGS",
            "Mounts the decrypted model read-only at `MODEL_MOUNT_POINT` once the data hub has written the key."),
)

GATEWAY_MODULE = "gateway.daemon"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default(setting: Setting) -> str:
    value = setting.default
    if value is REQUIRED:
        return "**required**"
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list | tuple):
        return "`" + " ".join(str(v) for v in value) + "`" if value else "empty"
    if value == "":
        return "empty"
    return f"`{value}`"


def _kind(setting: Setting) -> str:
    names = {str: "string", int: "integer", bool: "boolean", float: "number", list: "list"}
    return names.get(setting.kind, setting.kind.__name__)


def _description(setting: Setting) -> str:
    text = setting.doc.strip()
    if setting.choices is not None:
        text += " One of: " + ", ".join(f"`{choice}`" for choice in setting.choices) + "."
    if setting.secret:
        text += " *Secret: never logged.*"
    # Placeholders such as <bucket> would vanish as unknown HTML tags in rendered Markdown.
    return _cell(text.replace("<", "&lt;").replace(">", "&gt;"))


def _load(module: str, attribute: str) -> Any:
    return getattr(importlib.import_module(module), attribute)


def render_env(settings: Sequence[Setting]) -> list[str]:
    lines = ["## cai.env", "",
             "The deployment guides' variables. Every daemon reads them from its environment (systemd "
             "`EnvironmentFile=/etc/cai/cai.env`, compose `env_file`, Kubernetes `env`) or from "
             "`--env-file FILE`; the environment wins. `KEY=` (empty) means unset. "
             "See `compose/cai.env.example`.", "",
             "| Variable | Type | Default | Description |", "|---|---|---|---|"]
    for setting in settings:
        lines.append(f"| `{setting.name}` | {_kind(setting)} | {_default(setting)} | {_description(setting)} |")
    return [*lines, ""]


def render_section(section: Section, settings: Sequence[Setting]) -> list[str]:
    prefix = f"CAI_{section.name.upper()}_"
    lines = [f"## [{section.name}] {section.title}", "", _cell(section.intro), "",
             f"Each key is `{section.name}.<key>` in the TOML/JSON file given with `--config`, or the "
             f"environment variable `{prefix}<KEY>`; command-line options win over both, the environment "
             "over the file.", "",
             "| Key | Environment | Type | Default | Description |", "|---|---|---|---|---|"]
    for setting in settings:
        lines.append(f"| `{setting.name}` | `{prefix}{setting.name.upper()}` | {_kind(setting)} | "
                     f"{_default(setting)} | {_description(setting)} |")
    return [*lines, ""]


def render_options(title: str, module_name: str, command: str, intro: str) -> list[str]:
    """A daemon configured by command-line options: document them from its argparse parser."""
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"cai {command}", add_help=False)
    module.add_arguments(parser)
    lines = [f"## {title}", "", _cell(intro), "", "| Option | Default | Description |", "|---|---|---|"]
    for action in parser._actions:  # argparse has no public accessor for its options
        if not action.option_strings:
            continue
        option = ", ".join(f"`{o}`" for o in action.option_strings)
        if action.metavar is not None:
            option += f" `{action.metavar}`"
        elif action.choices is not None:
            option += " `" + "|".join(str(c) for c in action.choices) + "`"
        elif action.nargs != 0:
            option += f" `{action.dest.upper()}`"
        default = "unset" if action.default in (None, False) else f"`{action.default}`"
        help_text = (action.help or "").replace("<", "&lt;").replace(">", "&gt;")
        lines.append(f"| {_cell(option)} | {default} | {_cell(help_text)} |")
    return [*lines, ""]


def render() -> str:
    """The whole reference as Markdown (deterministic: same schemas, same text)."""
    env_settings = _load("agents.config", "CAI_ENV_SETTINGS")
    out = ["<!-- Generated by scripts/gen-config-reference.py from the Setting schemas. Do not edit: "
           "tests/unit/test_deploy_config_reference.py fails when this file and the code disagree. -->", "",
           "# Configuration reference", "",
           "Every setting of every daemon, generated from the schemas the daemons parse their configuration "
           "with. Bad values stop a daemon at start-up with one error naming the key (exit code 2).", "",
           "Sources, lowest precedence first: the `[section]` of a TOML/JSON file (`--config`), the "
           "environment (`CAI_<SECTION>_<KEY>`, and the cai.env variables), command-line options. An unknown "
           "`CAI_<SECTION>_*` variable or file key is an error, so a typo cannot be silently ignored.", ""]
    out += render_env(env_settings)
    for section in SECTIONS:
        schema = _load(section.module, section.attribute)
        out += render_section(section, schema)
    gateway_settings = getattr(importlib.import_module("gateway.config"), "GATEWAY_SETTINGS", None)
    if gateway_settings is not None:
        out += render_section(Section("gateway", "Gateway — `cai gateway`", "gateway.config", "GATEWAY_SETTINGS",
                                      "The TNG-compatible gateway."), gateway_settings)
    else:
        out += render_options(
            "Gateway — `cai gateway`", GATEWAY_MODULE, "gateway",
            "The gateway takes the TNG JSON file `tng launch -c` takes (`--config`; keys `add_egress`, "
            "`add_ingress`, `control_interface`, `metric`, see docs/gateway.md). Without `--config` it derives "
            "one egress per protected port from cai.env `MODEL_SERVICE_PORT` and the caiOptions "
            "`tng-http-secure-ports`. Its command-line options:")
    return "\n".join(out).rstrip("\n") + "\n"


def cli(argv: Sequence[str] | None = None) -> int:
    """``scripts/gen-config-reference.py [--check] [-o FILE]``."""
    parser = argparse.ArgumentParser(prog="gen-config-reference",
                                     description="Write docs/configuration.md from the Setting schemas.")
    parser.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT, help="file to write ('-': stdout)")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from the schemas")
    args = parser.parse_args(argv)
    text = render()
    if str(args.output) == "-":
        sys.stdout.write(text)
        return 0
    if args.check:
        try:
            current = args.output.read_text(encoding="utf-8")
        except OSError as exc:
            print(f"cannot read {args.output}: {exc.strerror}", file=sys.stderr)
            return 1
        if current != text:
            print(f"{args.output} is out of date: run python scripts/gen-config-reference.py", file=sys.stderr)
            return 1
        return 0
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}")
    return 0
