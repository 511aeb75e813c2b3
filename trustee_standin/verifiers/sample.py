"""Trustee's ``sample`` and ``sampledevice`` verifiers (no hardware; development and tests only).

Mirrors ``deps/verifier/src/sample/mod.rs``: evidence ``{"svn": str, "report_data": base64-std}``
(``report_data``/``init_data`` default to ""), the only check is that ``report_data`` decodes to
exactly the expected runtime-data bytes (48-byte digest, no padding to 64), claims are
``{"svn", "report_data", "init_data"}``. A stock Trustee 1.5 accepts this TEE, which is why the
stand-in does too unless ``allowed_tees`` says otherwise.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from attestation_agent.kbs.encoding import b64std_decode
from trustee_standin.verifiers.registry import VerificationError


def verify_sample(evidence: Any, expected_report_data: bytes | None) -> dict[str, Any]:
    if not isinstance(evidence, Mapping):
        raise VerificationError("Deserialize Quote failed: sample evidence is not a JSON object")
    svn = evidence.get("svn")
    report_data = evidence.get("report_data", "")
    init_data = evidence.get("init_data", "")
    if not isinstance(svn, str) or not isinstance(report_data, str) or not isinstance(init_data, str):
        raise VerificationError("Deserialize Quote failed: 'svn' (required), 'report_data' and 'init_data' "
                                "must be strings")
    if expected_report_data is not None:
        try:
            actual = b64std_decode(report_data)
        except ValueError:
            raise VerificationError("base64 decode report data for sample evidence failed") from None
        if not hmac.compare_digest(actual, expected_report_data):
            raise VerificationError("REPORT_DATA is different from that in Sample Quote")
    return {"svn": svn, "report_data": report_data, "init_data": init_data}
