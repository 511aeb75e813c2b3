"""The stand-in's ``tdx`` verifier (Trustee 1.5 evidence shape) — development and tests only.

Checks, in Trustee 1.5's order (``deps/verifier/src/tdx/mod.rs``):

1. ``quote`` (base64 std) parses as a TDX quote v4/v5; its signature verifies with the attestation
   key inside it; the QE report binds that key; the QE report is signed by the PCK leaf; the PCK
   chain links verify. **No Intel collateral**: there is no PCS/PCCS, no TCB status, no CRL and no
   QE identity check, and the PCK root is *not* pinned to Intel's (tests sign with a test CA). The
   claims say so under ``verifier``. A real Trustee runs Intel's QVL instead.
2. REPORTDATA must equal the expected binding digest zero-padded to 64 bytes.
3. ``cc_eventlog`` (if present) parses as a TCG2 log and its SHA-384 replay of CC MR 1..3 equals
   RTMR0..2 (Trustee 1.5 leaves RTMR3 to the AA event log so runtime extends never break this).
4. ``aa_eventlog`` (if present) parses with Trustee 1.5's rules and replays to RTMR3.
5. ``gpu_evidence`` (if present, Alibaba's embedded GPU evidence) goes to :data:`GPU_VERIFIER`, or
   to ``trustee_standin.verifiers.nvidia.verify_embedded_gpu_evidence`` when that module exists;
   with neither, the evidence is rejected (fail closed; Trustee 1.5 would only log a warning).

Claims follow Trustee's nesting (the token layer flattens them to ``tdx.quote.body.mr_td`` etc.):
``quote.header.*``, ``quote.body.*`` (hex, incl. ``rtmr_0..3``), ``td_attributes``, ``report_data``,
``init_data`` (= MRCONFIGID), ``uefi_event_logs``, ``aael`` (Trustee 1.5: ``{"<domain>/<op>":
[content, ...]}``) and ``AA.eventlog.<domain>.<operation>`` (the reference's naming; last content).
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Callable, Mapping
from typing import Any

from attestation_agent import eventlog
from attestation_agent.eventlog import AaEventLogError
from attestation_agent.kbs.canonical import tdx_report_data
from attestation_agent.kbs.encoding import b64std_decode
from attestation_agent.tdx import ccel
from attestation_agent.tdx.errors import TdxFormatError
from attestation_agent.tdx.quote import Quote, parse_quote
from attestation_agent.tdx.quote_verify import verify_quote
from trustee_standin.verifiers.registry import VerificationError, register_verifier

#: ``fn(gpu_evidence, report_data_digest) -> claims``; None = use ``verifiers.nvidia`` if installed.
GPU_VERIFIER: Callable[[Any, bytes | None], dict[str, Any]] | None = None


def _fail(message: str) -> VerificationError:
    return VerificationError(f"TDX Verifier: {message}")


def _decode(evidence: Mapping[str, Any], name: str, required: bool) -> bytes | None:
    value = evidence.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise _fail(f"'{name}' must be a non-empty base64 string" if required
                    else f"'{name}' must be a string or null")
    try:
        return b64std_decode(value)
    except ValueError:
        raise _fail(f"'{name}' is not standard base64") from None


def quote_claims(quote: Quote) -> dict[str, Any]:
    h, b = quote.header, quote.body
    header = {"version": quote.version.to_bytes(2, "little").hex(),
              "att_key_type": h.att_key_type.to_bytes(2, "little").hex(),
              "tee_type": h.tee_type.to_bytes(4, "little").hex(), "reserved": h.reserved.hex(),
              "vendor_id": h.qe_vendor_id.hex(), "user_data": h.user_data.hex()}
    body = {"tcb_svn": b.tee_tcb_svn.hex(), "mr_seam": b.mr_seam.hex(), "mrsigner_seam": b.mrsigner_seam.hex(),
            "seam_attributes": b.seam_attributes.hex(), "td_attributes": b.td_attributes.hex(), "xfam": b.xfam.hex(),
            "mr_td": b.mr_td.hex(), "mr_config_id": b.mr_config_id.hex(), "mr_owner": b.mr_owner.hex(),
            "mr_owner_config": b.mr_owner_config.hex(), "report_data": b.report_data.hex(),
            **{f"rtmr_{i}": value.hex() for i, value in enumerate(b.rtmrs)}}
    if b.tee_tcb_svn2 is not None:
        body["tee_tcb_svn2"] = b.tee_tcb_svn2.hex()
        body["mr_servicetd"] = (b.mr_servicetd or b"").hex()
    claims: dict[str, Any] = {"header": header, "body": body}
    if quote.version == 5:
        claims["type"] = quote.body_type.to_bytes(2, "little").hex()
        claims["size"] = len(b.to_bytes()).to_bytes(4, "little").hex()
    return claims


def event_log_claims(log: ccel.EventLog) -> list[dict[str, Any]]:
    """Trustee's ``uefi_event_logs`` entries (without the per-type ``details`` decoding)."""
    return [{"index": e.mr_index, "type_name": e.type_name, "event": _b64(e.data),
             "digests": [{"alg": ccel.ALGORITHM_NAMES.get(a, hex(a)), "digest": d.hex()} for a, d in e.digests],
             "digest_matches_event": e.digest_matches_data()} for e in log.events]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _gpu_verifier() -> Callable[[Any, bytes | None], dict[str, Any]] | None:
    if GPU_VERIFIER is not None:
        return GPU_VERIFIER
    try:
        from trustee_standin.verifiers import nvidia  # the GPU engineer's module, if installed
    except ImportError:
        return None
    return getattr(nvidia, "verify_embedded_gpu_evidence", None)


def verify_tdx(evidence: Any, expected_report_data: bytes | None) -> dict[str, Any]:
    if not isinstance(evidence, Mapping):
        raise _fail("Deserialize TDX Evidence failed: evidence is not a JSON object")
    quote_bytes = _decode(evidence, "quote", required=True)
    assert quote_bytes is not None
    try:
        quote = parse_quote(quote_bytes)
        verification = verify_quote(quote)
    except TdxFormatError as exc:
        raise _fail(f"quote: {exc}") from None

    if expected_report_data is not None:
        if not hmac.compare_digest(tdx_report_data(expected_report_data), quote.report_data):
            raise _fail("REPORT_DATA is different from that in TDX Quote")

    claims: dict[str, Any] = {"quote": quote_claims(quote), "td_attributes": quote.body.td_attribute_flags(),
                              "report_data": quote.report_data.hex(), "init_data": quote.body.mr_config_id.hex()}

    cc = _decode(evidence, "cc_eventlog", required=False)
    if cc is not None:
        try:
            log = ccel.parse_event_log(cc)
            replayed = ccel.replay_rtmrs(log.events)
        except TdxFormatError as exc:
            raise _fail(f"Parse CC Eventlog failed: {exc}") from None
        for i in range(3):
            if not hmac.compare_digest(replayed[i], quote.rtmrs[i]):
                raise _fail(f"RTMR 0, 1, 2 values from TD quote is not equal with the values from EventLog "
                            f"(RTMR{i}: log {replayed[i].hex()[:16]}..., quote {quote.rtmrs[i].hex()[:16]}...)")
        claims["uefi_event_logs"] = event_log_claims(log)

    aa_text = evidence.get("aa_eventlog")
    if aa_text is not None:
        if not isinstance(aa_text, str):
            raise _fail("'aa_eventlog' must be a string or null")
        try:
            aa_log = eventlog.parse_text(aa_text)
        except AaEventLogError as exc:
            raise _fail(f"Parse AA Eventlog failed: {exc}") from None
        if not aa_log.matches(quote.rtmrs[3]):
            raise _fail(f"AA eventlog does not pass check. AAEL value : {aa_log.replay().hex()}, "
                        f"Quote value {quote.rtmrs[3].hex()}")
        claims["aael"] = aa_log.to_claims()
        nested: dict[str, dict[str, str]] = {}
        for event in aa_log.events:
            nested.setdefault(event.domain, {})[event.operation] = event.content
        claims["AA"] = {"eventlog": nested}

    gpu_evidence = evidence.get("gpu_evidence")
    if gpu_evidence is not None:
        verifier = _gpu_verifier()
        if verifier is None:
            raise _fail("gpu_evidence is present but this stand-in has no GPU verifier")
        gpu_claims = verifier(gpu_evidence, expected_report_data)
        if not isinstance(gpu_claims, dict):
            raise _fail("GPU verifier returned claims that are not a JSON object")
        claims.update(gpu_claims)

    claims["verifier"] = {
        "collateral": "none: offline quote signature, QE binding and PCK chain links only; no TCB status",
        "pck_root": verification.root_subject,
    }
    return claims


register_verifier("tdx", verify_tdx)
