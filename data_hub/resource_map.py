"""Which Trustee serves which resource, and under which file name it lands (sans-IO).

Entries come from cai.env (``MODEL_KEY_ID`` at ``TRUSTEE_URL`` → ``model-key``, ``ALT_KEY_ID`` at
``ALT_TRUSTEE_URL`` → ``alt-key``: file names users already depend on) and from ``[[cdh.resources]]``
tables of the config file. Resources at the same (normalised) Trustee URL share one attested session.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agents import validators
from agents.errors import ConfigError
from agents.settings import REQUIRED, Setting, parse_settings
from attestation_agent.errors import KbsError
from attestation_agent.kbs.client import normalize_base_url
from data_hub.uri import ResourceUri, check_file_name, default_file_name, parse_kbs_uri

MODEL_KEY_FILE = "model-key"
ALT_KEY_FILE = "alt-key"
MAX_ENTRIES = 256


@dataclass(frozen=True)
class ResourceEntry:
    """One resource to materialise: ``uri`` fetched from ``trustee_url`` into ``<dir>/<file>``."""

    file: str
    uri: ResourceUri
    trustee_url: str
    required: bool = True
    source: str = ""  # where it was configured, for error messages and /cdh/status

    def describe(self) -> dict[str, Any]:
        """A JSON-able description (no values: there are none here)."""
        return {"file": self.file, "uri": str(self.uri), "trustee": self.trustee_url,
                "required": self.required, "source": self.source}


ENTRY_SETTINGS: tuple[Setting, ...] = (
    Setting("uri", str, REQUIRED, "Resource URI, kbs:///<repo>/<type>/<tag> or kbs://<host>:<port>/<repo>/<type>/<tag>.",
            validator=validators.kbs_uri),
    Setting("trustee_url", str, None, "Trustee serving it; default: http://<host>:<port> from the URI if it has one, "
            "else TRUSTEE_URL.", validator=validators.http_url),
    Setting("file", str, None, "File name under resources_dir; default: the resource tag.",
            validator=lambda name: _file_name(name)),
    Setting("required", bool, True, "Whether readiness waits for this resource."),
)


def _file_name(name: str) -> str:
    """Setting validator form of :func:`check_file_name` (validators signal with ValueError)."""
    try:
        return check_file_name(name)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _normalize(url: str, where: str) -> str:
    try:
        return normalize_base_url(url)
    except KbsError as exc:
        raise ConfigError(f"{where}: {exc.message}", hint=exc.hint) from None


def _trustee_for(uri: ResourceUri, explicit: str | None, default: str | None, where: str) -> str:
    if explicit:
        return _normalize(explicit, where)
    if uri.host is not None:
        return _normalize(f"http://{uri.authority}", where)
    if default:
        return _normalize(default, where)
    raise ConfigError(f"{where}: no Trustee for {uri}",
                      hint="set TRUSTEE_URL, give the entry a trustee_url, or write kbs://<host>:<port>/...")


def entries_from_env(env: Mapping[str, Any]) -> list[ResourceEntry]:
    """The two cai.env resources (``model-key``, ``alt-key``) when their IDs are set."""
    entries: list[ResourceEntry] = []
    for id_key, url_key, file in (("MODEL_KEY_ID", "TRUSTEE_URL", MODEL_KEY_FILE),
                                  ("ALT_KEY_ID", "ALT_TRUSTEE_URL", ALT_KEY_FILE)):
        uri_text = env.get(id_key)
        if not uri_text:
            continue
        uri = parse_kbs_uri(uri_text)
        url = env.get(url_key)
        if not url:
            raise ConfigError(f"cai.env sets {id_key} but not {url_key}",
                              hint=f"set {url_key} to the Trustee that holds {uri}")
        entries.append(ResourceEntry(file=file, uri=uri, trustee_url=_normalize(url, f"cai.env {url_key}"),
                                     required=True, source=f"cai.env {id_key}"))
    return entries


def entries_from_config(raw: Sequence[Any], *, default_trustee: str | None, where: str) -> list[ResourceEntry]:
    """Entries of ``[[cdh.resources]]`` (each a table with ``uri``, ``trustee_url``, ``file``, ``required``)."""
    if not isinstance(raw, list | tuple):
        raise ConfigError(f"{where}: 'resources' must be an array of tables ([[cdh.resources]])")
    if len(raw) > MAX_ENTRIES:
        raise ConfigError(f"{where}: more than {MAX_ENTRIES} resources configured")
    entries: list[ResourceEntry] = []
    for index, item in enumerate(raw):
        here = f"{where} resources[{index}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{here} must be a table with at least 'uri'")
        values = parse_settings(item, ENTRY_SETTINGS, where=here)
        uri = parse_kbs_uri(values["uri"])
        entries.append(ResourceEntry(
            file=values["file"] or default_file_name(uri), uri=uri,
            trustee_url=_trustee_for(uri, values["trustee_url"], default_trustee, here),
            required=values["required"], source=here))
    return entries


def build_resource_map(env: Mapping[str, Any], extra: Iterable[ResourceEntry] = ()) -> tuple[ResourceEntry, ...]:
    """All entries, checking that no two write the same file."""
    entries = [*entries_from_env(env), *extra]
    seen: dict[str, ResourceEntry] = {}
    for entry in entries:
        previous = seen.get(entry.file)
        if previous is not None:
            raise ConfigError(f"two resources would be written to the same file {entry.file!r}: "
                              f"{previous.source} and {entry.source}", hint="give one of them another 'file'")
        seen[entry.file] = entry
    return tuple(entries)


def trustees(entries: Iterable[ResourceEntry]) -> list[str]:
    """Distinct Trustee URLs, in configuration order (one attested session each)."""
    return list(dict.fromkeys(entry.trustee_url for entry in entries))
