"""The stand-in attestation service (AS) REST API: ``/attestation``, ``/certificate``, ``/challenge``.

Development and tests only. ``POST /attestation`` accepts both request shapes Trustee has used:

* openanolis <= 1.5.2 (TNG <= 2.2.4), flat: ``{"tee", "evidence": b64url(evidence JSON),
  "runtime_data": {"raw": b64url} | {"structured": ...}, "init_data", "runtime_data_hash_algorithm",
  "init_data_hash_algorithm", "policy_ids": [...]}``;
* Trustee >= 1.6: ``{"verification_requests": [{"tee", "evidence", "runtime_data", "init_data",
  "runtime_data_hash_algorithm"}, ...], "policy_ids": [...]}``.

Raw runtime data is the expected report data itself; structured runtime data is hashed as
canonical JSON with ``runtime_data_hash_algorithm`` (default sha384) and copied into the token's
``customized_claims.runtime_data``. The answer is the token text, signed (RS384 or ES256) by a
leaf certificate under the stand-in's test root CA, with the chain in ``jwk.x5c``.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from agents import jsonutil
from agents.logsetup import get_logger
from attestation_agent.kbs.canonical import HASH_ALGORITHMS, runtime_data_digest
from attestation_agent.kbs.encoding import b64url_decode
from trustee_standin.appraisal import appraise
from trustee_standin.body import read_body
from trustee_standin.errors import KbsHttpError
from trustee_standin.state import STATE
from trustee_standin.verifiers import VerificationError

log = get_logger("trustee_standin.attestation_service")

DEFAULT_POLICY_ID = "default"
MAX_REQUESTS = 16


class AsRequestError(Exception):
    """The request is malformed or names something unknown (400, plain-text message)."""


@dataclass(frozen=True)
class VerificationRequest:
    tee: str
    evidence: Any
    expected_report_data: bytes | None
    runtime_data_claims: Any
    init_data_claims: Any


def _data(value: Any, what: str, *, new_init: bool = False) -> tuple[bytes | None, Any, str | None]:
    """Parse ``{"raw": b64url} | {"structured": v}`` (or the 1.6 init-data variants)."""
    if value is None:
        return None, None, None
    kinds = ("init_data_digest", "init_data_toml") if new_init else ("raw", "structured")
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in kinds:
        raise AsRequestError(f"Json deserialize error: {what} must be one of {{{', '.join(kinds)}}}")
    kind, inner = next(iter(value.items()))
    if kind in ("raw", "init_data_digest"):
        if not isinstance(inner, str):
            raise AsRequestError(f"Json deserialize error: {what}.{kind} must be a string")
        try:
            return b64url_decode(inner), None, kind
        except ValueError:
            raise AsRequestError(f"base64 decode {what} failed: use base64url without padding") from None
    if kind == "init_data_toml":
        if not isinstance(inner, str):
            raise AsRequestError(f"Json deserialize error: {what}.init_data_toml must be a string")
        return inner.encode("utf-8"), None, kind
    return None, inner, kind


def _individual(obj: Any, *, flat: bool) -> VerificationRequest:
    if not isinstance(obj, dict):
        raise AsRequestError("Json deserialize error: each verification request must be a JSON object")
    for name in ("tee", "evidence"):
        if name not in obj:
            raise AsRequestError(f"Json deserialize error: missing field `{name}`")
        if not isinstance(obj[name], str):
            raise AsRequestError(f"Json deserialize error: `{name}` must be a string")
    algorithm = obj.get("runtime_data_hash_algorithm") or "sha384"
    if algorithm not in HASH_ALGORITHMS:
        raise AsRequestError(f"unsupported runtime_data_hash_algorithm {algorithm!r}; use one of "
                             f"{sorted(HASH_ALGORITHMS)}")
    try:
        evidence_bytes = b64url_decode(obj["evidence"])
    except ValueError:
        raise AsRequestError("base64 decode evidence failed: use base64url without padding") from None
    try:
        evidence = jsonutil.loads(evidence_bytes)
    except (ValueError, UnicodeDecodeError):
        evidence = evidence_bytes  # the verifier decides; the sample verifier rejects non-JSON
    raw, structured, kind = _data(obj.get("runtime_data"), "runtime_data")
    if kind == "structured":
        expected: bytes | None = runtime_data_digest(structured, algorithm)
    else:
        expected = raw
    _, init_structured, _ = _data(obj.get("init_data"), "init_data", new_init=not flat)
    return VerificationRequest(obj["tee"], evidence, expected, structured, init_structured)


def parse_attestation_request(body: bytes, accepted: str) -> tuple[list[VerificationRequest], list[str]]:
    """Parse either request shape; ``accepted`` is the config's ``as_api``."""
    try:
        obj = jsonutil.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise AsRequestError("Json deserialize error: body is not valid JSON") from None
    if not isinstance(obj, dict):
        raise AsRequestError("Json deserialize error: body must be a JSON object")
    listed = "verification_requests" in obj
    if (listed and accepted == "flat") or (not listed and accepted == "verification_requests"):
        missing = "tee" if accepted == "flat" else "verification_requests"
        raise AsRequestError(f"Json deserialize error: missing field `{missing}`")
    policy_ids = obj.get("policy_ids")
    if "policy_ids" not in obj:
        raise AsRequestError("Json deserialize error: missing field `policy_ids`")
    if not isinstance(policy_ids, list) or not all(isinstance(p, str) for p in policy_ids):
        raise AsRequestError("Json deserialize error: `policy_ids` must be a list of strings")
    if listed:
        items = obj["verification_requests"]
        if not isinstance(items, list) or not items or len(items) > MAX_REQUESTS:
            raise AsRequestError(f"`verification_requests` must be a list of 1..{MAX_REQUESTS} requests")
        requests = [_individual(item, flat=False) for item in items]
    else:
        requests = [_individual(obj, flat=True)]
    return requests, policy_ids or [DEFAULT_POLICY_ID]


def _text(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=text)


async def attestation(request: web.Request) -> web.Response:
    state = request.app[STATE]
    body = await read_body(request)
    try:
        requests, policy_ids = parse_attestation_request(body, state.config.as_api)
        unknown = [p for p in policy_ids if p not in state.config.attestation_policies]
        if unknown:
            known = sorted(state.config.attestation_policies)
            raise AsRequestError(f"unknown attestation policy id(s) {unknown}; this attestation service "
                                 f"knows {known}")
    except AsRequestError as exc:
        log.warning("as attestation request rejected", reason=str(exc))
        return _text(400, str(exc))
    try:
        tee_claims = [(r.tee, appraise(r.tee, r.evidence, r.expected_report_data, state.config.allowed_tees))
                      for r in requests]
    except VerificationError as exc:
        log.warning("as attestation failed", reason=str(exc))
        return _text(500, f"An internal error occured: \n0: Verification failed\n1: {exc}")
    token = state.tokens.issue(
        tee_claims=tee_claims,
        runtime_data=requests[0].runtime_data_claims,
        init_data=requests[0].init_data_claims,
        policy_ids=policy_ids,
        alg=state.config.as_token_alg,
    )
    log.info("as attestation: token issued", tee=requests[0].tee, policy_ids=policy_ids)
    return _text(200, token)


async def certificate(request: web.Request) -> web.Response:
    """The token signer's chain, leaf first (usable as trust anchors, as TNG does)."""
    state = request.app[STATE]
    pem = state.tokens.signer(state.config.as_token_alg).chain_pem()
    return web.Response(status=200, body=pem, content_type="application/x-pem-file")


async def challenge(request: web.Request) -> web.Response:
    """Trustee >= 1.6 AS challenge: a nonce plus a signed challenge JWT, which TNG >= 2.2.6 (OHTTP
    background check) requires as ``extra-params.jwt``."""
    await read_body(request)
    state = request.app[STATE]
    nonce = base64.b64encode(os.urandom(32)).decode("ascii")
    jwt = state.tokens.challenge_jwt(nonce, alg=state.config.as_token_alg)
    return web.json_response({"nonce": nonce, "extra-params": {"jwt": jwt}})


_ROUTES = {"attestation": ("POST", "as", attestation), "certificate": ("GET", "certificate", certificate),
           "challenge": ("POST", "challenge", challenge)}


async def dispatch(request: web.Request) -> web.StreamResponse:
    """Serve ``<prefix>/{attestation,certificate,challenge}`` for every AS prefix."""
    state = request.app[STATE]
    name = request.match_info.get("as_route", "")
    if name not in _ROUTES:
        raise web.HTTPNotFound(text=f"no attestation-service route {name!r}")
    method, route, handler = _ROUTES[name]
    if request.method != method:
        raise web.HTTPMethodNotAllowed(request.method, [method])
    try:
        return await state.faults.run(route, request, handler)
    except KbsHttpError as exc:  # only PayloadTooLarge can get here
        return _text(exc.status(state.config.error_style), exc.detail)
