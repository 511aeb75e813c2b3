"""The attester interface shared by every TEE and device.

An attester turns *report data* (the runtime-data digest the verifier expects, at most 64 bytes)
into evidence JSON in the exact shape Trustee's verifier for ``tee_type`` parses. Primary
attesters (``tdx``, ``tpm``, ``sample``) describe the VM; device attesters (NVIDIA GPUs) are
additional evidence. How devices travel depends on the KBS dialect: Trustee 1.5 (0.1.0) embeds
them in the primary evidence under a field named by the device (``gpu_evidence``), 0.4.0 sends
them as ``additional_evidence`` keyed by the device's TEE name.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass
from typing import Any

MAX_REPORT_DATA = 64


class MeasurementResult(enum.StrEnum):
    """CoCo's ``RuntimeMeasurementResult``."""

    OK = "OK"
    NOT_SUPPORTED = "NOT_SUPPORTED"
    NOT_ENABLED = "NOT_ENABLED"


@dataclass(frozen=True)
class RuntimeEvent:
    """One runtime-measurement event (AA event log line ``<domain> <operation> <content>``)."""

    domain: str
    operation: str
    content: str
    register_index: int | None = None


class Attester(abc.ABC):
    """A primary TEE attester."""

    #: kbs-types wire name of the TEE (``tdx``, ``tpm``, ``sample``, ...)
    tee_type: str
    #: True only for attesters without a hardware root of trust (refused unless allowed)
    development_only: bool = False

    @abc.abstractmethod
    async def evidence(self, report_data: bytes) -> dict[str, Any]:
        """Evidence binding ``report_data`` (<= 64 bytes), as Trustee's verifier expects it."""

    async def extend_runtime_measurement(self, event: RuntimeEvent) -> MeasurementResult:
        """Record ``event`` in the event log and extend the runtime register."""
        return MeasurementResult.NOT_SUPPORTED

    def describe(self) -> dict[str, Any]:
        """Non-secret facts for status output."""
        return {"tee": self.tee_type, "development_only": self.development_only}


class DeviceAttester(abc.ABC):
    """An additional device (e.g. an NVIDIA GPU) attested alongside the primary TEE."""

    #: name of the device's verifier in protocol 0.4.0 ``additional_evidence`` (e.g. ``nvidia``)
    tee_type: str
    #: field inside the primary evidence used by Trustee 1.5 (e.g. ``gpu_evidence``), if any
    embedded_field: str | None = None

    @abc.abstractmethod
    async def evidence(self, report_data: bytes) -> dict[str, Any]:
        """Evidence binding ``report_data``, in the 0.4.0 ``additional_evidence`` shape."""

    async def evidence_embedded(self, report_data: bytes) -> dict[str, Any]:
        """Evidence in the shape embedded in the primary evidence (Trustee 1.5); same by default."""
        return await self.evidence(report_data)

    async def attestation_result(self, accepted: bool) -> None:
        """Told after the Trustee accepted (or refused) evidence, e.g. to set a GPU's ready state."""
        return None

    async def close(self) -> None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"tee": self.tee_type, "embedded_field": self.embedded_field}


def check_report_data(report_data: bytes) -> bytes:
    if not isinstance(report_data, bytes | bytearray):
        raise TypeError("report data must be bytes")
    if len(report_data) > MAX_REPORT_DATA:
        raise ValueError(f"report data is {len(report_data)} bytes; at most {MAX_REPORT_DATA} fit in a TEE report")
    return bytes(report_data)
