"""Evidence composition: the runtime-data binding per dialect and where each device's evidence goes.

Protocol 0.1.0 (Trustee 1.5): one digest ``H({nonce, tee-pubkey})`` is the report data of the
primary TEE, and devices are embedded in the primary evidence (Alibaba's ``gpu_evidence``).
Protocol 0.4.0: devices are bound to ``H(D)`` first, their evidence map is serialized to the
``additional_evidence`` string, and the primary TEE is bound to ``H(P)`` which covers that string.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from attestation_agent.attesters.base import Attester, DeviceAttester
from attestation_agent.errors import EvidenceError
from attestation_agent.kbs import canonical
from attestation_agent.kbs.dialect import Dialect


class EvidenceSource(Protocol):
    """Where a KBS client gets evidence: local attesters, or the attestation agent's API."""

    async def tee_type(self) -> str: ...

    async def primary_evidence(self, report_data: bytes, *, embed_devices: bool) -> dict[str, Any]: ...

    async def additional_evidence(self, report_data: bytes) -> dict[str, Any]: ...


@dataclass
class LocalEvidence:
    """An EvidenceSource backed by attesters in this process."""

    primary: Attester
    devices: tuple[DeviceAttester, ...] = ()

    async def tee_type(self) -> str:
        return self.primary.tee_type

    async def primary_evidence(self, report_data: bytes, *, embed_devices: bool) -> dict[str, Any]:
        evidence = await self.primary.evidence(report_data)
        if embed_devices:
            for device in self.devices:
                if device.embedded_field is None:
                    raise EvidenceError(
                        f"device {device.tee_type!r} cannot be embedded in {self.primary.tee_type} evidence",
                        hint="this device needs KBS protocol 0.4.0 (Trustee >= 1.6)",
                    )
                evidence[device.embedded_field] = await device.evidence_embedded(report_data)
        return evidence

    async def additional_evidence(self, report_data: bytes) -> dict[str, Any]:
        return {device.tee_type: await device.evidence(report_data) for device in self.devices}


@dataclass(frozen=True)
class ComposedEvidence:
    tee: str
    primary: dict[str, Any]
    additional: str  # the exact string sent (0.4.0), "" when none


async def compose(source: EvidenceSource, dialect: Dialect, nonce: str, tee_pubkey: dict[str, Any]) -> ComposedEvidence:
    """Collect evidence bound to the challenge ``nonce`` and ``tee_pubkey`` for ``dialect``."""
    tee = await source.tee_type()
    if dialect is Dialect.V0_1_0:
        digest = canonical.binding_v0_1_0(nonce, tee_pubkey)
        return ComposedEvidence(tee, await source.primary_evidence(digest, embed_devices=True), "")
    device_digest = canonical.device_binding_v0_4_0(nonce, tee_pubkey)
    devices = await source.additional_evidence(device_digest)
    additional = json.dumps(devices, separators=(",", ":")) if devices else ""
    digest = canonical.primary_binding_v0_4_0(nonce, tee_pubkey, additional)
    return ComposedEvidence(tee, await source.primary_evidence(digest, embed_devices=False), additional)
