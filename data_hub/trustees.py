"""One attested KBS session per Trustee, all getting evidence from the attestation agent.

The data hub never touches TEE interfaces: every ``KbsClient`` uses the AA's API as its evidence
source (CoCo's CDH does the same over ttrpc). Resources at the same Trustee share its session, so
N resources cost one RCAR handshake, and a 401 (Trustee restarted, session expired) re-attests once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agents.health import Metrics
from agents.logsetup import register_secret
from attestation_agent.aa_client import AaClient
from attestation_agent.evidence import EvidenceSource
from attestation_agent.kbs.client import DIALECTS, DialectMemory, KbsClient, KbsClientConfig, normalize_base_url
from attestation_agent.kbs.dialect import Dialect
from data_hub.uri import ResourceUri

ConfigFactory = Callable[[str], KbsClientConfig]


def default_config_factory(*, dialect: str = "auto", timeout: float = 30.0, ssl: Any = None) -> ConfigFactory:
    """Client settings shared by every Trustee (the URL differs); ``ssl``: see ``kbs/trust.py``."""
    pinned = None if dialect == "auto" else Dialect(dialect)

    def factory(url: str) -> KbsClientConfig:
        return KbsClientConfig(url=url, dialect=pinned, timeout=timeout, ssl=ssl)

    return factory


class TrusteePool:
    """Lazily created ``KbsClient`` per normalised Trustee URL, sharing one evidence source."""

    def __init__(self, evidence: EvidenceSource, *, config_factory: ConfigFactory | None = None,
                 dialects: DialectMemory = DIALECTS, metrics: Metrics | None = None) -> None:
        self._evidence = evidence
        self._factory = config_factory or default_config_factory()
        self._dialects = dialects
        self._metrics = metrics  # KBS retries per Trustee (cai_kbs_retries_total)
        self._clients: dict[str, KbsClient] = {}

    @classmethod
    def over_aa(cls, aa_socket: str, **kwargs: object) -> TrusteePool:
        """The production pool: evidence from the attestation agent at ``aa_socket``."""
        return cls(AaClient(aa_socket), **kwargs)  # type: ignore[arg-type]

    def client(self, trustee_url: str) -> KbsClient:
        url = normalize_base_url(trustee_url)
        client = self._clients.get(url)
        if client is None:
            client = self._clients[url] = KbsClient(self._factory(url), self._evidence, dialects=self._dialects,
                                                    metrics=self._metrics)
        return client

    async def fetch(self, trustee_url: str, uri: ResourceUri) -> bytes:
        """Fetch and decrypt ``uri`` from ``trustee_url``; the value is registered for log redaction."""
        value = await self.client(trustee_url).get_resource(uri.path)
        register_secret(value)
        return value

    @property
    def urls(self) -> list[str]:
        return list(self._clients)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()
        self._clients.clear()
        close = getattr(self._evidence, "close", None)
        if close is not None:
            await close()
