"""The attestation agent's operations, independent of how they are exposed (HTTP API, CLI)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization

from agents.health import Metrics
from agents.logsetup import get_logger
from attestation_agent.attesters.base import Attester, DeviceAttester, MeasurementResult, RuntimeEvent
from attestation_agent.errors import (
    AttestationError,
    KbsAttestationRejectedError,
    KbsNotConfiguredError,
    UnsupportedTokenTypeError,
)
from attestation_agent.evidence import LocalEvidence
from attestation_agent.kbs.client import KbsClient, KbsClientConfig

log = get_logger("aa")

TOKEN_TYPES = ("kbs",)


@dataclass
class AgentOptions:
    kbs: KbsClientConfig | None  # None: no Trustee configured (evidence still works)


class AttestationAgent:
    """Evidence, tokens and runtime measurements for this TEE."""

    def __init__(self, attester: Attester, options: AgentOptions, *, devices: tuple[DeviceAttester, ...] = (),
                 metrics: Metrics | None = None) -> None:
        self.attester = attester
        self.evidence_source = LocalEvidence(attester, devices)
        self.options = options
        self.metrics = metrics or Metrics()
        self._kbs: KbsClient | None = None
        self._evidence_total = self.metrics.counter("cai_aa_evidence_requests_total",
                                                    "Evidence requests served", ("kind", "result"))
        self._attest_total = self.metrics.counter("cai_aa_attestations_total", "KBS attestations", ("result",))
        self._attest_seconds = self.metrics.histogram("cai_aa_attestation_seconds", "KBS attestation duration")

    @property
    def tee(self) -> str:
        return self.attester.tee_type

    @property
    def additional_tees(self) -> list[str]:
        return [device.tee_type for device in self.evidence_source.devices]

    async def evidence(self, report_data: bytes, *, embed_devices: bool = False) -> bytes:
        try:
            result = await self.evidence_source.primary_evidence(report_data, embed_devices=embed_devices)
        except Exception:
            self._evidence_total.labels("primary", "error").inc()
            raise
        self._evidence_total.labels("primary", "ok").inc()
        return json.dumps(result, separators=(",", ":")).encode()

    async def additional_evidence(self, report_data: bytes) -> bytes:
        devices = await self.evidence_source.additional_evidence(report_data)
        self._evidence_total.labels("additional", "ok").inc()
        return json.dumps(devices, separators=(",", ":")).encode() if devices else b""

    def _client(self) -> KbsClient:
        if self.options.kbs is None:
            raise KbsNotConfiguredError("no Trustee KBS is configured",
                           hint="set TRUSTEE_URL in cai.env (or kbs_url in [aa])")
        if self._kbs is None:
            self._kbs = KbsClient(self.options.kbs, self.evidence_source)
        return self._kbs

    async def token(self, token_type: str) -> bytes:
        """CoCo ``GetToken``: for ``kbs`` the JSON ``{"token", "tee_keypair"}`` (a secret)."""
        if token_type not in TOKEN_TYPES:
            raise UnsupportedTokenTypeError(f"token type {token_type[:32]!r} is not supported",
                                            hint="supported: " + ", ".join(f"token_type={t}" for t in TOKEN_TYPES))
        started = time.monotonic()
        try:
            attestation = await self._client().attestation()
        except KbsAttestationRejectedError:
            self._attest_total.labels("rejected").inc()
            await self._tell_devices(False)
            raise
        except AttestationError:
            self._attest_total.labels("error").inc()
            raise
        self._attest_total.labels("ok").inc()
        await self._tell_devices(True)
        self._attest_seconds.observe(time.monotonic() - started)
        pem = attestation.key.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        ).decode()
        return json.dumps({"token": attestation.token, "tee_keypair": pem}).encode()

    async def _tell_devices(self, accepted: bool) -> None:
        """Devices act on the verdict (an accepted GPU is set CC-ready; a refused one never is)."""
        for device in self.evidence_source.devices:
            try:
                await device.attestation_result(accepted)
            except AttestationError as exc:
                log.error("aa.device_result_failed", device=device.tee_type, error=str(exc))

    async def extend(self, event: RuntimeEvent) -> MeasurementResult:
        result = await self.attester.extend_runtime_measurement(event)
        log.info("aa.extend", domain=event.domain, operation=event.operation, result=result.value)
        return result

    def describe(self) -> dict[str, Any]:
        return {"tee": self.tee, "additional_tees": self.additional_tees,
                "kbs_url": self.options.kbs.url if self.options.kbs else None}

    async def close(self) -> None:
        if self._kbs is not None:
            await self._kbs.close()
            self._kbs = None
        for device in self.evidence_source.devices:
            await device.close()
