"""The two JSON shapes NVIDIA GPU evidence travels in, built and parsed here (sans-IO).

- **0.4.0 additional evidence** (upstream CoCo Trustee ``nvidia`` verifier), key ``"nvidia"`` of
  ``additional_evidence``: ``{"device_evidence_list": [{"arch", "uuid", "evidence",
  "certificate"}]}`` — ``evidence`` is base64 (Trustee also accepts hex) of request ‖ response,
  ``certificate`` base64 of the PEM chain.
- **Embedded** (Alibaba Trustee 1.5, KBS 0.1.0), field ``gpu_evidence`` inside the TDX evidence:
  ``{"evidence_list": [{"index", "uuid", "name", "driver_version", "vbios_version",
  "attestation_report", "certificate", "cc_enabled"}], "collection_time": RFC3339 UTC}``.
  Trustiflux fills ``certificate`` with NVML's device-identity ``certChain``; we send the
  *attestation* chain (the one whose leaf signs the report), because that is what makes the
  signature checkable — Trustee 1.5 checks neither, so it accepts both.
"""

from __future__ import annotations

import binascii
import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from attestation_agent.kbs.encoding import b64std_decode, b64std_encode
from attestation_agent.nvidia.errors import GpuEvidenceError

MAX_DEVICES = 64  # 8 GPUs + 4 NVSwitches on HGX; generous, bounded
KNOWN_ARCHES = {"HOPPER": "HOPPER", "BLACKWELL": "BLACKWELL", "LS10": "LS10"}
_HEX_RE = re.compile(r"^[0-9a-fA-F]*$")


@dataclass(frozen=True)
class DeviceEvidence:
    """One device's evidence, decoded: report bytes and certificate-chain bytes (PEM)."""

    arch: str
    uuid: str
    report: bytes
    cert_chain: bytes
    index: int | None = None
    name: str | None = None
    driver_version: str | None = None
    vbios_version: str | None = None
    cc_enabled: bool | None = None


def rfc3339_utc(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def additional_evidence(devices: Sequence[DeviceEvidence]) -> dict[str, Any]:
    """The 0.4.0 ``nvidia`` additional-evidence value."""
    return {"device_evidence_list": [
        {"arch": d.arch, "uuid": d.uuid, "evidence": b64std_encode(d.report),
         "certificate": b64std_encode(d.cert_chain)}
        for d in devices
    ]}


def embedded_evidence(devices: Sequence[DeviceEvidence], collected_at: dt.datetime) -> dict[str, Any]:
    """The Trustee 1.5 ``gpu_evidence`` value (``collection_time`` is mandatory there)."""
    return {
        "evidence_list": [
            {"index": d.index if d.index is not None else n, "uuid": d.uuid, "name": d.name or "",
             "driver_version": d.driver_version or "", "vbios_version": d.vbios_version or "",
             "attestation_report": b64std_encode(d.report), "certificate": b64std_encode(d.cert_chain),
             "cc_enabled": bool(d.cc_enabled)}
            for n, d in enumerate(devices)
        ],
        "collection_time": rfc3339_utc(collected_at),
    }


def _list(value: Any, key: str, where: str) -> list[Any]:
    if not isinstance(value, Mapping):
        raise GpuEvidenceError(f"{where} must be a JSON object")
    items = value.get(key)
    if not isinstance(items, list) or not items:
        raise GpuEvidenceError(f"{where} needs a non-empty '{key}' list")
    if len(items) > MAX_DEVICES:
        raise GpuEvidenceError(f"{where} lists {len(items)} devices; at most {MAX_DEVICES} are accepted")
    return items


def _str(entry: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    value = entry.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise GpuEvidenceError(f"{where}: '{key}' must be a string")
    return value


def _report(text: str, where: str) -> bytes:
    """base64 as sent by agents; hex as Trustee also accepts (and as fixture files are written)."""
    try:
        return b64std_decode(text)
    except ValueError:
        pass
    if _HEX_RE.match(text) and len(text) % 2 == 0 and text:
        try:
            return binascii.unhexlify(text)
        except binascii.Error:
            pass
    raise GpuEvidenceError(f"{where}: the report is neither standard base64 nor hex")


def parse_additional_evidence(value: Any) -> list[DeviceEvidence]:
    """Parse a 0.4.0 ``nvidia`` value; ``uuid`` defaults to "unknown" as in Trustee."""
    devices = []
    for n, entry in enumerate(_list(value, "device_evidence_list", "nvidia evidence")):
        where = f"nvidia evidence device {n}"
        if not isinstance(entry, Mapping):
            raise GpuEvidenceError(f"{where} must be a JSON object")
        arch = _str(entry, "arch", where)
        assert arch is not None
        canonical = KNOWN_ARCHES.get(arch.upper())
        if canonical is None:
            raise GpuEvidenceError(f"{where}: unknown architecture {arch[:32]!r}; expected HOPPER, BLACKWELL or LS10")
        uuid = _str(entry, "uuid", where, required=False) or "unknown"
        report = _report(_str(entry, "evidence", where) or "", where)
        try:
            chain = b64std_decode(_str(entry, "certificate", where) or "")
        except ValueError:
            raise GpuEvidenceError(f"{where}: 'certificate' is not standard base64") from None
        devices.append(DeviceEvidence(canonical, uuid[:128], report, chain))
    return devices


def parse_embedded_evidence(value: Any) -> tuple[list[DeviceEvidence], dt.datetime]:
    """Parse a Trustee 1.5 ``gpu_evidence`` value (report and certificate required here)."""
    items = _list(value, "evidence_list", "gpu_evidence")
    collection_time = value.get("collection_time")
    if not isinstance(collection_time, str):
        raise GpuEvidenceError("gpu_evidence needs 'collection_time' (RFC3339 UTC)")
    try:
        collected = dt.datetime.fromisoformat(collection_time.replace("Z", "+00:00"))
    except ValueError:
        raise GpuEvidenceError(f"gpu_evidence 'collection_time' {collection_time[:40]!r} is not RFC3339") from None
    if collected.tzinfo is None:
        raise GpuEvidenceError("gpu_evidence 'collection_time' must carry a time zone (UTC)")
    devices = []
    for n, entry in enumerate(items):
        where = f"gpu_evidence entry {n}"
        if not isinstance(entry, Mapping):
            raise GpuEvidenceError(f"{where} must be a JSON object")
        index = entry.get("index")
        if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 2**32:
            raise GpuEvidenceError(f"{where}: 'index' must be an unsigned integer")
        fields = {key: _str(entry, key, where) for key in ("uuid", "name", "driver_version", "vbios_version")}
        report_text = _str(entry, "attestation_report", where, required=False)
        cert_text = _str(entry, "certificate", where, required=False)
        if report_text is None or cert_text is None:
            raise GpuEvidenceError(f"{where} has no attestation report or certificate; it cannot be verified",
                                   hint="collect GPU evidence with confidential computing enabled")
        cc_enabled = entry.get("cc_enabled")
        if not isinstance(cc_enabled, bool):
            raise GpuEvidenceError(f"{where}: 'cc_enabled' must be a boolean")
        try:
            report, chain = b64std_decode(report_text), b64std_decode(cert_text)
        except ValueError:
            raise GpuEvidenceError(f"{where}: report or certificate is not standard base64") from None
        devices.append(DeviceEvidence("HOPPER", (fields["uuid"] or "")[:128], report, chain, index,
                                      fields["name"], fields["driver_version"], fields["vbios_version"], cc_enabled))
    return devices, collected
