"""KBS RCAR message codecs for both dialects (sans-IO: dicts and bytes in, dicts and values out).

Client builders and server parsers sit side by side so the client and the Trustee stand-in share
one definition of every body. Server parsers reproduce Trustee's strictness: the body is
deserialized in the server's own dialect *before* the version is checked, which is what makes a
0.4.0-shaped ``/auth`` fail with no version hint on Trustee 1.5.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agents import jsonutil
from attestation_agent.errors import ProtocolError
from attestation_agent.kbs.dialect import Dialect

SUPPORTED_HASH_ALGORITHMS = ["sha256", "sha384", "sha512"]
MAX_NONCE = 1024
MAX_MESSAGE = 1024 * 1024
TEE_TYPES_V0_1_0 = frozenset(
    {"azsnpvtpm", "aztdxvtpm", "sev", "sgx", "snp", "tdx", "cca", "csv", "se", "sample", "tpm", "system"}
)
TEE_TYPES_V0_4_0 = TEE_TYPES_V0_1_0 | {"nvidia", "hygondcu", "sampledevice", "hygontpm"}
TEE_TYPES = {Dialect.V0_1_0: TEE_TYPES_V0_1_0, Dialect.V0_4_0: TEE_TYPES_V0_4_0}


def _json(body: bytes | str, what: str) -> Any:
    if len(body) > MAX_MESSAGE:
        raise ProtocolError(f"{what} is larger than {MAX_MESSAGE} bytes")
    try:
        return jsonutil.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(f"{what} is not valid JSON") from None


# --- /auth -------------------------------------------------------------------------------------

def auth_request(dialect: Dialect, tee: str) -> dict[str, Any]:
    """The ``Request`` body; 0.1.0 carries ``extra-params`` as a JSON *string*."""
    params = {"supported-hash-algorithms": SUPPORTED_HASH_ALGORITHMS}
    extra: Any = json.dumps(params, separators=(",", ":")) if dialect is Dialect.V0_1_0 else params
    return {"version": dialect.value, "tee": tee, "extra-params": extra}


@dataclass(frozen=True)
class AuthRequest:
    version: str
    tee: str
    extra_params: Any


def parse_auth_request(body: bytes | str, server: Dialect) -> AuthRequest:
    """Deserialize ``/auth`` as a server of dialect ``server`` does (no version check yet)."""
    obj = _json(body, "auth request")
    if not isinstance(obj, dict):
        raise ProtocolError("auth request is not a JSON object")
    version, tee = obj.get("version"), obj.get("tee")
    if not isinstance(version, str) or not isinstance(tee, str) or "extra-params" not in obj:
        raise ProtocolError("auth request needs string 'version', string 'tee' and 'extra-params'")
    if tee not in TEE_TYPES[server]:
        raise ProtocolError(f"unknown variant {tee!r} for 'tee'")
    extra = obj["extra-params"]
    if server is Dialect.V0_1_0 and not isinstance(extra, str):
        raise ProtocolError("'extra-params' must be a string in protocol 0.1.0")
    return AuthRequest(version=version, tee=tee, extra_params=extra)


@dataclass(frozen=True)
class Challenge:
    nonce: str
    extra_params: Any


def challenge(nonce: str) -> dict[str, Any]:
    return {"nonce": nonce, "extra-params": ""}


def parse_challenge(body: bytes | str) -> Challenge:
    obj = _json(body, "KBS challenge")
    if not isinstance(obj, dict) or not isinstance(obj.get("nonce"), str):
        raise ProtocolError("KBS challenge has no string 'nonce'")
    nonce = obj["nonce"]
    if not nonce or len(nonce) > MAX_NONCE:
        raise ProtocolError(f"KBS challenge nonce is empty or longer than {MAX_NONCE} characters")
    return Challenge(nonce=nonce, extra_params=obj.get("extra-params"))


# --- /attest -----------------------------------------------------------------------------------

def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def attest_request(
    dialect: Dialect,
    *,
    nonce: str,
    tee_pubkey: dict[str, Any],
    primary_evidence: dict[str, Any],
    additional_evidence: str = "",
    init_data: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The ``Attestation`` body. In 0.1.0 the evidence is a JSON string and devices are embedded."""
    if dialect is Dialect.V0_1_0:
        if additional_evidence:
            raise ValueError("protocol 0.1.0 has no additional evidence; embed devices in the TEE evidence")
        return {"tee-pubkey": tee_pubkey, "tee-evidence": compact_json(primary_evidence)}
    return {
        "runtime-data": {"nonce": nonce, "tee-pubkey": tee_pubkey},
        "tee-evidence": {"primary_evidence": primary_evidence, "additional_evidence": additional_evidence},
        "init-data": init_data,
    }


@dataclass(frozen=True)
class AttestRequest:
    tee_pubkey: dict[str, Any]
    primary_evidence: Any
    additional_evidence: str
    nonce: str | None  # 0.4.0 only
    init_data: Any


def parse_attest_request(body: bytes | str, server: Dialect) -> AttestRequest:
    obj = _json(body, "attest request")
    if not isinstance(obj, dict) or "tee-evidence" not in obj:
        raise ProtocolError("attest request is not a JSON object with 'tee-evidence'")
    if server is Dialect.V0_1_0:
        pubkey, evidence = obj.get("tee-pubkey"), obj["tee-evidence"]
        if not isinstance(pubkey, dict) or not isinstance(evidence, str):
            raise ProtocolError("0.1.0 attest request needs object 'tee-pubkey' and string 'tee-evidence'")
        return AttestRequest(pubkey, _json(evidence, "tee-evidence"), "", None, None)
    runtime, evidence = obj.get("runtime-data"), obj["tee-evidence"]
    if not isinstance(runtime, dict) or not isinstance(runtime.get("tee-pubkey"), dict):
        raise ProtocolError("0.4.0 attest request needs 'runtime-data' with 'tee-pubkey'")
    if not isinstance(runtime.get("nonce"), str):
        raise ProtocolError("0.4.0 attest request needs a string 'runtime-data.nonce'")
    if not isinstance(evidence, dict) or "primary_evidence" not in evidence:
        raise ProtocolError("0.4.0 'tee-evidence' must be an object with 'primary_evidence'")
    additional = evidence.get("additional_evidence", "")
    if not isinstance(additional, str):
        raise ProtocolError("0.4.0 'additional_evidence' must be a string")
    return AttestRequest(runtime["tee-pubkey"], evidence["primary_evidence"], additional, runtime["nonce"],
                         obj.get("init-data"))


def parse_additional_evidence(text: str) -> dict[str, Any]:
    """Split the 0.4.0 ``additional_evidence`` string into ``{tee: evidence}``."""
    if text == "":
        return {}
    obj = _json(text, "additional_evidence")
    if not isinstance(obj, dict):
        raise ProtocolError("additional_evidence must encode a JSON object")
    return obj


def parse_attest_response(body: bytes | str) -> str:
    obj = _json(body, "attest response")
    if not isinstance(obj, dict) or not isinstance(obj.get("token"), str) or not obj["token"]:
        raise ProtocolError("attest response has no string 'token'")
    return obj["token"]


# --- errors ------------------------------------------------------------------------------------

ERROR_TYPE_PREFIX = "https://github.com/confidential-containers/kbs/errors/"


@dataclass(frozen=True)
class ErrorInfo:
    """A KBS error body ``{"type": ".../<Variant>", "detail"}`` or a gateway ``{"error"}``."""

    variant: str
    detail: str


def error_body(variant: str, detail: str) -> dict[str, str]:
    return {"type": ERROR_TYPE_PREFIX + variant, "detail": detail}


def parse_error(body: bytes | str) -> ErrorInfo | None:
    """Best-effort parse of an error body; None when it is not one of the known shapes."""
    try:
        obj = jsonutil.loads(body[:MAX_MESSAGE])
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("type"), str) and isinstance(obj.get("detail"), str):
        return ErrorInfo(obj["type"].rsplit("/", 1)[-1], obj["detail"][:2000])
    if isinstance(obj.get("error"), str):
        return ErrorInfo("Gateway", obj["error"][:2000])
    return None
