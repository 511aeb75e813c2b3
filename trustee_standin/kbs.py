"""The stand-in KBS: ``/kbs/v0/{auth,attest,resource/...,resources}`` as Trustee serves them.

Development and tests only. Behaviour follows reference section 1 (openanolis Trustee v1.5.2 for
0.1.0, Trustee >= 1.6 / CoCo for 0.4.0):

* ``/auth`` deserializes in the server's own dialect *before* the exact version check, so a
  0.4.0-shaped body sent to a 0.1.0 KBS fails without ``expect =`` while a 0.1.0-shaped body to a
  0.4.0 KBS names the expected version.
* ``/attest`` binds the evidence to the session nonce and TEE key (0.1.0: ``H({nonce,tee-pubkey})``;
  0.4.0: ``H(P)`` for the primary TEE, ``H(D)`` per additional device) and issues a Simple token;
  every failure is 1.5's opaque ``RCAR handshake Attest failed`` (the cause is only logged).
* Resource reads authenticate by session cookie, else ``Authorization: Bearer``; then the
  resource policy; then the file; then the JWE in the dialect's encoding (1.5: RSA1_5 only, any
  other key alg is a 400 ``JweError`` at this point, not at attestation time).

All protocol bodies come from ``attestation_agent.kbs`` so client and stand-in cannot drift.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import Any, NoReturn

from aiohttp import web

from agents.logsetup import get_logger
from attestation_agent.errors import ProtocolError
from attestation_agent.kbs.canonical import binding_v0_1_0, device_binding_v0_4_0, primary_binding_v0_4_0
from attestation_agent.kbs.cookies import session_id_from_cookie_header
from attestation_agent.kbs.dialect import Dialect
from attestation_agent.kbs.jwe import encrypt_resource
from attestation_agent.kbs.messages import (
    TEE_TYPES,
    challenge,
    parse_additional_evidence,
    parse_attest_request,
    parse_auth_request,
)
from attestation_agent.kbs.resource import ResourcePath
from attestation_agent.kbs.tee_key import public_key_from_jwk
from trustee_standin.appraisal import appraise
from trustee_standin.body import read_body
from trustee_standin.errors import (
    ATTEST_FAILED,
    AUTH_FAILED,
    KbsHttpError,
    invalid_path,
    token_invalid,
    token_not_found,
)
from trustee_standin.policies import resource_allowed
from trustee_standin.sessions import Session
from trustee_standin.state import STATE, StandinState
from trustee_standin.tokens import KBS_TOKEN_ALG, TokenError
from trustee_standin.verifiers import VerificationError

log = get_logger("trustee_standin.kbs")

KBS_PREFIX = "/kbs/v0/"
GATEWAY_PREFIX = "/api"
KBS_POLICY_ID = "default"  # the KBS always evaluates attestation with policy id "default"


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, text=json.dumps(obj), content_type="application/json")


def _via_gateway(request: web.Request) -> bool:
    return request.path.startswith(GATEWAY_PREFIX + "/")


def _set_cookie(state: StandinState, request: web.Request, response: web.Response, session: Session) -> None:
    value = session.set_cookie_value()
    response.headers.add("Set-Cookie", value)
    if state.config.duplicate_set_cookie and _via_gateway(request):
        response.headers.add("Set-Cookie", value)  # trustee-gateway copies headers and re-adds cookies


def _method_not_allowed(request: web.Request, allowed: list[str]) -> NoReturn:
    raise web.HTTPMethodNotAllowed(request.method, allowed)


def _kbs_tail(request: web.Request) -> str:
    """The raw (still percent-encoded) path after ``/kbs/v0/``, without the query string."""
    raw = request.raw_path.split("?", 1)[0]
    if raw.startswith(GATEWAY_PREFIX + KBS_PREFIX):
        raw = raw[len(GATEWAY_PREFIX):]
    return raw[len(KBS_PREFIX):] if raw.startswith(KBS_PREFIX) else ""


async def dispatch(request: web.Request) -> web.StreamResponse:
    """One entry point for ``/kbs/v0/*`` (like Trustee's actix route), dispatching on the first segment."""
    state = request.app[STATE]
    tail = _kbs_tail(request)
    base, _, rest = tail.partition("/")
    method = request.method
    try:
        if base == "auth" and not rest:
            if method != "POST":
                _method_not_allowed(request, ["POST"])
            return await state.faults.run("auth", request, _auth)
        if base == "attest" and not rest:
            if method != "POST":
                _method_not_allowed(request, ["POST"])
            return await state.faults.run("attest", request, _attest)
        if base == "resources" and not rest:
            if method != "GET":
                _method_not_allowed(request, ["GET"])
            return await state.faults.run("resources", request, _list_resources)
        if base == "resource":
            if method == "GET":
                return await state.faults.run("resource", request, _get_resource)
            if method in ("POST", "DELETE"):
                return await state.faults.run("admin", request, _admin_resource)
            _method_not_allowed(request, ["GET", "POST", "DELETE"])
        raise KbsHttpError("PluginNotFound", f"Plugin {urllib.parse.unquote(base)} not found")
    except KbsHttpError as exc:
        log.warning("kbs request failed", path=request.path[:200], method=method, variant=exc.variant,
                    cause=exc.cause or exc.detail)
        return exc.response(state.config.error_style)


def _resource_path(request: web.Request) -> ResourcePath:
    """Validate ``resource/<repo>/<type>/<tag>`` on the raw path: encoded slashes and dots stay invalid."""
    tail = _kbs_tail(request)
    additional = tail[len("resource"):]
    segments = additional.split("/")[1:] if additional.startswith("/") else []
    if len(segments) != 3:
        raise invalid_path(additional)
    try:
        return ResourcePath(*(urllib.parse.unquote(s) for s in segments))
    except ValueError:
        raise invalid_path(additional) from None


# --- /auth -------------------------------------------------------------------------------------

async def _auth(request: web.Request) -> web.Response:
    state = request.app[STATE]
    dialect = state.config.dialect
    body = await read_body(request)
    try:
        auth = parse_auth_request(body, dialect)
    except ProtocolError as exc:
        raise KbsHttpError("AttestationError", f"{AUTH_FAILED}: deserialize Request",
                           cause=str(exc)) from None
    if auth.version != dialect.value:
        raise KbsHttpError(
            "AttestationError",
            f"{AUTH_FAILED}: KBS Client Protocol Version Mismatch: expect ={dialect.value} "
            f"while the request is {auth.version}",
        )
    session = state.sessions.create(auth.tee, dialect)
    log.info("kbs auth", tee=auth.tee, dialect=dialect.value)
    response = _json(challenge(session.nonce))
    _set_cookie(state, request, response, session)
    return response


# --- /attest -----------------------------------------------------------------------------------

def _attest_failed(cause: str) -> KbsHttpError:
    return KbsHttpError("AttestationError", ATTEST_FAILED, cause=cause)


async def _attest(request: web.Request) -> web.Response:
    state = request.app[STATE]
    session = state.sessions.get(session_id_from_cookie_header(request.headers.get("Cookie")))
    if session is None:
        raise _attest_failed("session cookie is missing, unknown or expired")
    body = await read_body(request)
    if session.token is None:
        session.token = _verify_and_issue(state, session, body)
        log.info("kbs attest: token issued", tee=session.tee)
    response = _json({"token": session.token})
    _set_cookie(state, request, response, session)
    return response


def _verify_and_issue(state: StandinState, session: Session, body: bytes) -> str:
    dialect = session.dialect
    try:
        attestation = parse_attest_request(body, dialect)
    except ProtocolError as exc:
        raise _attest_failed(f"deserialize Attestation: {exc}") from None
    pubkey = attestation.tee_pubkey
    if dialect is Dialect.V0_1_0 and pubkey.get("kty") != "RSA":
        raise _attest_failed("protocol 0.1.0 tee-pubkey must be an RSA key")
    try:
        public_key_from_jwk(pubkey)
    except ValueError as exc:
        raise _attest_failed(f"invalid tee-pubkey: {exc}") from None

    additional: dict[str, Any] = {}
    if dialect is Dialect.V0_4_0:
        if attestation.nonce != session.nonce:
            raise _attest_failed("runtime-data nonce does not match the session nonce")
        try:
            additional = parse_additional_evidence(attestation.additional_evidence)
        except ProtocolError as exc:
            raise _attest_failed(str(exc)) from None
        primary_digest = primary_binding_v0_4_0(session.nonce, pubkey, attestation.additional_evidence)
    else:
        primary_digest = binding_v0_1_0(session.nonce, pubkey)

    allowed = state.config.allowed_tees
    try:
        primary = appraise(session.tee, attestation.primary_evidence, primary_digest, allowed)
        tee_claims = [(session.tee, primary)]
        if additional:
            device_digest = device_binding_v0_4_0(session.nonce, pubkey)
            for device_tee, evidence in additional.items():
                if device_tee not in TEE_TYPES[Dialect.V0_4_0]:
                    raise VerificationError(f"unknown variant {device_tee!r} in additional_evidence")
                tee_claims.append((device_tee, appraise(device_tee, evidence, device_digest, allowed)))
    except VerificationError as exc:
        raise _attest_failed(f"evidence verification failed: {exc}") from None
    if KBS_POLICY_ID not in state.config.attestation_policies:
        raise _attest_failed(f"attestation policy {KBS_POLICY_ID!r} is not configured")
    return state.tokens.issue(
        tee_claims=tee_claims,
        runtime_data={"nonce": session.nonce, "tee-pubkey": pubkey},
        init_data=attestation.init_data,
        policy_ids=[KBS_POLICY_ID],
        alg=KBS_TOKEN_ALG,
    )


# --- resources ---------------------------------------------------------------------------------

def _presented_token(state: StandinState, request: web.Request) -> str:
    """Trustee's order: the session's token if the cookie names an attested session, else Bearer."""
    session = state.sessions.get(session_id_from_cookie_header(request.headers.get("Cookie")))
    if session is not None and session.token is not None:
        return session.token
    authorization = request.headers.get("Authorization", "")
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    raise token_not_found()


async def _get_resource(request: web.Request) -> web.Response:
    state = request.app[STATE]
    resource = _resource_path(request)
    token = _presented_token(state, request)
    try:
        claims = state.tokens.verify(token)
    except TokenError as exc:
        raise token_invalid(str(exc)) from None
    if not resource_allowed(state.config.resource_policy, resource):
        raise KbsHttpError("PolicyDeny", "Access denied by policy",
                           cause=f"resource policy denies {resource}")
    try:
        plaintext = state.repository.read(resource)
    except OSError as exc:
        raise KbsHttpError("PluginInternalError", "Plugin internal error",
                           cause=f"reading {resource}: {type(exc).__name__}") from None
    runtime_data = (claims.get("customized_claims") or {}).get("runtime_data")
    tee_pubkey = runtime_data.get("tee-pubkey") if isinstance(runtime_data, dict) else None
    if not isinstance(tee_pubkey, dict):
        raise KbsHttpError("JweError", "JWE failed",
                           cause="token carries no customized_claims.runtime_data.tee-pubkey")
    try:
        sealed = encrypt_resource(plaintext, tee_pubkey, state.config.dialect)
    except ValueError as exc:
        raise KbsHttpError("JweError", "JWE failed", cause=str(exc)) from None
    log.info("kbs resource released", resource=str(resource))
    return _json(sealed)


async def _list_resources(request: web.Request) -> web.Response:
    state = request.app[STATE]
    rows = state.repository.list(request.query.get("repository"), request.query.get("type"))
    return _json(rows)


async def _admin_resource(request: web.Request) -> web.Response:
    state = request.app[STATE]
    resource = _resource_path(request)
    state.admin.check(request.headers.get("Authorization"))
    if request.method == "DELETE":
        try:
            state.repository.delete(resource)
        except OSError as exc:
            raise KbsHttpError("PluginInternalError", "Plugin internal error",
                               cause=f"deleting {resource}: {type(exc).__name__}") from None
        log.info("kbs resource deleted", resource=str(resource))
        return web.Response(status=200)
    data = await read_body(request)
    try:
        state.repository.write(resource, data)
    except OSError as exc:
        raise KbsHttpError("PluginInternalError", "Plugin internal error",
                           cause=f"writing {resource}: {type(exc).__name__}") from None
    log.info("kbs resource stored", resource=str(resource), size=len(data))
    return web.Response(status=200)
