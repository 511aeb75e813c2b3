"""The ``sample`` TEE: Trustee's no-hardware attester, for development and CI only.

Its evidence proves nothing (anyone can produce it), so it is never chosen unless the operator
allows it explicitly; see ``attestation_agent.attesters.select``.
"""

from __future__ import annotations

from typing import Any

from attestation_agent.attesters.base import Attester, check_report_data
from attestation_agent.kbs.encoding import b64std_encode


class SampleAttester(Attester):
    tee_type = "sample"
    development_only = True

    def __init__(self, svn: str = "1") -> None:
        self.svn = svn

    async def evidence(self, report_data: bytes) -> dict[str, Any]:
        # Trustee's sample verifier compares base64(report_data) with base64 of the exact digest,
        # so the report data is not padded (unlike TDX).
        return {"svn": self.svn, "report_data": b64std_encode(check_report_data(report_data))}


class SampleDeviceAttester:
    """Upstream's ``sampledevice`` additional evidence (0.4.0 only); used to test composition."""

    tee_type = "sampledevice"
    embedded_field = None

    def __init__(self, svn: str = "1") -> None:
        self.svn = svn

    async def evidence(self, report_data: bytes) -> dict[str, Any]:
        return {"svn": self.svn, "report_data": b64std_encode(check_report_data(report_data))}

    def describe(self) -> dict[str, Any]:
        return {"tee": self.tee_type, "embedded_field": None}
