"""Async Trustee KBS client: RCAR handshake, attestation token, resource reads.

The protocol itself lives in the sans-IO modules of this package; this shell adds HTTP, the
session cookie, dialect detection, token reuse until ``exp``, bounded retries with backoff on
connection errors and 5xx, timeouts on every call and response-size limits.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from agents.health import Metrics
from agents.http import BodyTooLarge, connection_failure, read_body_limited
from agents.logsetup import get_logger
from agents.retry import Backoff, retry_call
from attestation_agent.errors import (
    KbsAttestationRejectedError,
    KbsError,
    KbsPolicyDeniedError,
    KbsResourceNotFoundError,
    KbsUnauthorizedError,
    KbsUnavailableError,
    KbsVersionMismatchError,
    ProtocolError,
)
from attestation_agent.evidence import EvidenceSource, compose
from attestation_agent.kbs import cookies, jwe, messages
from attestation_agent.kbs import token as token_codec
from attestation_agent.kbs.dialect import PROBE_DIALECT, Dialect, expected_version
from attestation_agent.kbs.resource import ResourcePath
from attestation_agent.kbs.tee_key import ALLOWED_ALGORITHMS, DEFAULT_ALGORITHM, KeyAlgorithm, TeeKey

log = get_logger("kbs")

MAX_SMALL_RESPONSE = 256 * 1024  # auth/attest/error bodies
DEFAULT_SESSION_LIFETIME = 300.0  # Trustee's default session timeout (5 min)


def normalize_base_url(url: str) -> str:
    """Validate a KBS base URL (``http://host:8081/api`` or ``http://host:8080``)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise KbsError(f"KBS URL {url!r} is not an http(s) URL",
                       hint="use e.g. http://<trustee-ip>:8081/api (gateway) or http://<trustee-ip>:8080")
    if parts.query or parts.fragment:
        raise KbsError(f"KBS URL {url!r} must not have a query or fragment")
    return url.strip().rstrip("/")


class DialectMemory:
    """The dialect learned per KBS base URL, shared by every client in the process."""

    def __init__(self) -> None:
        self._known: dict[str, Dialect] = {}

    def get(self, url: str) -> Dialect | None:
        return self._known.get(url)

    def remember(self, url: str, dialect: Dialect) -> None:
        self._known[url] = dialect


DIALECTS = DialectMemory()


@dataclass(frozen=True)
class KbsClientConfig:
    url: str
    dialect: Dialect | None = None  # None: detect
    key_algorithm: KeyAlgorithm | None = None  # None: the dialect's default
    timeout: float = 30.0  # per HTTP request; trustee-gateway itself gives up after 30 s
    connect_timeout: float = 10.0
    max_resource_size: int = 16 * 1024 * 1024
    backoff: Backoff = field(default_factory=lambda: Backoff(initial=0.5, maximum=8.0, attempts=4))
    token_margin: float = 30.0  # re-attest this long before the token (or session) expires
    session_lifetime: float = DEFAULT_SESSION_LIFETIME
    ssl: Any = None  # ssl.SSLContext for https with a pinned KBS certificate


@dataclass
class Attestation:
    """The outcome of one RCAR handshake. ``token`` and ``key`` are secrets: never log them."""

    dialect: Dialect
    tee: str
    token: str
    key: TeeKey
    session_id: str
    expires_at: float  # monotonic deadline (min of token exp and session lifetime) minus margin

    def __repr__(self) -> str:
        return f"Attestation(dialect={self.dialect.value}, tee={self.tee})"


@dataclass
class _Reply:
    status: int
    body: bytes
    set_cookie: list[str]


class KbsClient:
    """One attested session with one Trustee KBS."""

    def __init__(
        self,
        config: KbsClientConfig,
        evidence: EvidenceSource,
        *,
        session: aiohttp.ClientSession | None = None,
        dialects: DialectMemory = DIALECTS,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.base_url = normalize_base_url(config.url)
        self._evidence = evidence
        self._session = session
        self._own_session = session is None
        self._dialects = dialects
        self._attestation: Attestation | None = None
        self._keys: dict[KeyAlgorithm, TeeKey] = {}
        self._lock = asyncio.Lock()
        # Retries absorbed inside one call are invisible in the caller's result: count them, so a
        # Trustee answering 5xx bursts shows up in /metrics even when every fetch succeeds.
        self._retries = (metrics.counter("cai_kbs_retries_total", "KBS requests retried after a connection "
                                         "error, timeout or transient 5xx", ("trustee", "route"))
                         if metrics is not None else None)
        if config.key_algorithm and config.dialect and config.key_algorithm not in ALLOWED_ALGORITHMS[config.dialect]:
            raise KbsError(f"TEE key algorithm {config.key_algorithm.value} cannot be used with KBS protocol "
                           f"{config.dialect.value}", hint="Trustee 1.5 (0.1.0) wraps resources only with RSA1_5")

    # --- plumbing --------------------------------------------------------------------------

    async def __aenter__(self) -> KbsClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
        self._session = None
        self._attestation = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.config.timeout, sock_connect=self.config.connect_timeout)
            # No cookie jar: the session cookie is handled explicitly (IP hosts, duplicates).
            self._session = aiohttp.ClientSession(timeout=timeout, cookie_jar=aiohttp.DummyCookieJar())
            self._own_session = True
        return self._session

    def _endpoint(self, path: str) -> str:
        return f"{self.base_url}/kbs/v0/{path}"

    async def _request_once(self, method: str, path: str, *, json_body: Any = None,
                            headers: dict[str, str] | None = None, limit: int) -> _Reply:
        url = self._endpoint(path)
        try:
            async with self._http().request(method, url, json=json_body, headers=headers,
                                            ssl=self.config.ssl, allow_redirects=False,
                                            timeout=aiohttp.ClientTimeout(total=self.config.timeout,
                                                                          sock_connect=self.config.connect_timeout)
                                            ) as resp:
                body = await read_body_limited(resp, limit, what=f"KBS response to {method} /kbs/v0/{_route(path)}")
                reply = _Reply(resp.status, body, resp.headers.getall("Set-Cookie", []))
        except BodyTooLarge as exc:
            raise ProtocolError(exc.message, hint=f"check that {self.base_url} is a Trustee KBS") from None
        except TimeoutError:
            raise KbsUnavailableError(f"KBS at {self.base_url} did not answer {method} /kbs/v0/{_route(path)} "
                                      f"within {self.config.timeout:g} s",
                                      hint="check the Trustee is up and reachable from this VM") from None
        except aiohttp.ClientError as exc:
            raise KbsUnavailableError(f"cannot reach KBS at {self.base_url}: {connection_failure(exc)}",
                                      hint="check TRUSTEE_URL and that the Trustee is up") from None
        if reply.status >= 500 and _is_transient(reply):
            info = messages.parse_error(reply.body)
            raise KbsUnavailableError(
                f"KBS at {self.base_url} answered {reply.status} to {method} /kbs/v0/{_route(path)}"
                + (f": {info.detail}" if info else ""), status=reply.status)
        return reply

    async def _request(self, method: str, path: str, **kwargs: Any) -> _Reply:
        def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
            log.warning("kbs.retry", url=self.base_url, route=_route(path), attempt=attempt,
                        delay_s=round(delay, 3), error=str(exc))
            if self._retries is not None:
                self._retries.labels(self.base_url, _route(path)).inc()

        return await retry_call(lambda: self._request_once(method, path, **kwargs), self.config.backoff,
                                retry_on=lambda e: isinstance(e, KbsUnavailableError), on_retry=on_retry)

    # --- RCAR ------------------------------------------------------------------------------

    def _key_for(self, dialect: Dialect) -> TeeKey:
        alg = self.config.key_algorithm or DEFAULT_ALGORITHM[dialect]
        if alg not in ALLOWED_ALGORITHMS[dialect]:
            alg = DEFAULT_ALGORITHM[dialect]
        if alg not in self._keys:  # one key per client, reused across re-handshakes (as Trustiflux)
            self._keys[alg] = TeeKey.generate(alg)
        return self._keys[alg]

    async def _auth(self, dialect: Dialect, tee: str) -> tuple[Dialect, messages.Challenge, str]:
        """``/auth``, switching dialect once if the KBS names the version it expects."""
        switched = False
        while True:
            reply = await self._request("POST", "auth", json_body=messages.auth_request(dialect, tee),
                                        limit=MAX_SMALL_RESPONSE)
            if reply.status == 200:
                challenge = messages.parse_challenge(reply.body)
                session_id = cookies.session_id_from_set_cookie(reply.set_cookie)
                if session_id is None:
                    raise ProtocolError(f"KBS at {self.base_url} did not set the kbs-session-id cookie on /auth")
                return dialect, challenge, session_id
            info = messages.parse_error(reply.body)
            detail = info.detail if info else ""
            wanted = expected_version(detail)
            if wanted is not None and wanted != dialect.value:
                try:
                    other = Dialect.parse(wanted)
                except ValueError:
                    raise KbsVersionMismatchError(
                        f"KBS at {self.base_url} speaks protocol {wanted}; this client speaks "
                        + ", ".join(d.value for d in Dialect),
                        hint="use Trustee <= 1.5.x (0.1.0) or >= 1.6 (0.4.0)", status=reply.status) from None
                if self.config.dialect is not None:
                    raise KbsVersionMismatchError(
                        f"KBS at {self.base_url} expects protocol {wanted} but the client is pinned to "
                        f"{self.config.dialect.value}", hint="remove the pinned kbs dialect or set it to " + wanted,
                        status=reply.status)
                if switched:
                    raise KbsVersionMismatchError(f"KBS at {self.base_url} rejected both protocol versions",
                                                  status=reply.status)
                log.info("kbs.dialect_switch", url=self.base_url, sent=dialect.value, expected=wanted)
                dialect, switched = other, True
                continue
            raise _status_error(reply, self.base_url, "/auth", info)

    async def attest(self) -> Attestation:
        """Run a full RCAR handshake now and keep the session."""
        async with self._lock:
            return await self._attest_locked()

    async def _attest_locked(self) -> Attestation:
        started = time.monotonic()
        tee = await self._evidence.tee_type()
        dialect = self.config.dialect or self._dialects.get(self.base_url) or PROBE_DIALECT
        dialect, challenge, session_id = await self._auth(dialect, tee)
        self._dialects.remember(self.base_url, dialect)
        key = self._key_for(dialect)
        pubkey = key.public_jwk()
        composed = await compose(self._evidence, dialect, challenge.nonce, pubkey)
        body = messages.attest_request(dialect, nonce=challenge.nonce, tee_pubkey=pubkey,
                                       primary_evidence=composed.primary, additional_evidence=composed.additional)
        reply = await self._request("POST", "attest", json_body=body, limit=MAX_SMALL_RESPONSE,
                                    headers={"Cookie": cookies.cookie_header(session_id)})
        if reply.status != 200:
            info = messages.parse_error(reply.body)
            if reply.status in (401, 403) or (reply.status >= 500 and info is not None
                                              and info.variant == "AttestationError"):
                raise KbsAttestationRejectedError(
                    f"KBS at {self.base_url} rejected the {tee} evidence (HTTP {reply.status}"
                    + (f": {info.detail}" if info else "") + ")",
                    hint="Trustee 1.5 hides the cause: check the Trustee logs, its attestation policy and "
                    "reference values", status=reply.status, error_type=info.variant if info else None)
            raise _status_error(reply, self.base_url, "/attest", info)
        token = messages.parse_attest_response(reply.body)
        now_wall, now_mono = time.time(), time.monotonic()
        lifetime = self.config.session_lifetime
        exp = token_codec.expiry(token)
        if exp is not None:
            lifetime = min(lifetime, exp - now_wall)
        self._attestation = Attestation(dialect=dialect, tee=tee, token=token, key=key, session_id=session_id,
                                        expires_at=now_mono + lifetime - self.config.token_margin)
        log.info("kbs.attested", url=self.base_url, dialect=dialect.value, tee=tee,
                 duration_ms=round((time.monotonic() - started) * 1000, 1),
                 valid_for_s=round(max(0.0, lifetime), 1))
        return self._attestation

    async def attestation(self) -> Attestation:
        """The current attestation, re-attesting when missing or about to expire."""
        async with self._lock:
            current = self._attestation
            if current is None or time.monotonic() >= current.expires_at:
                current = await self._attest_locked()
            return current

    async def token(self) -> str:
        return (await self.attestation()).token

    def invalidate(self) -> None:
        """Forget the session (e.g. after a 401): the next call re-attests."""
        self._attestation = None

    # --- resources -------------------------------------------------------------------------

    async def get_resource(self, resource: ResourcePath | str, *, use_bearer: bool = False) -> bytes:
        """Fetch and decrypt one resource; re-attests once when the KBS says 401."""
        path = resource if isinstance(resource, ResourcePath) else _parse_resource(resource)
        for attempt in (1, 2):
            current = await self.attestation()
            headers = ({"Authorization": f"Bearer {current.token}"} if use_bearer
                       else {"Cookie": cookies.cookie_header(current.session_id)})
            reply = await self._request("GET", f"resource/{path}", headers=headers,
                                        limit=self.config.max_resource_size)
            if reply.status == 200:
                value = jwe.decrypt_resource(reply.body, current.key)
                log.info("kbs.resource", url=self.base_url, resource=str(path), size=len(value))
                return value
            info = messages.parse_error(reply.body)
            if reply.status == 401 and attempt == 1:
                log.info("kbs.reattest", url=self.base_url, reason=info.variant if info else "401")
                async with self._lock:
                    if self._attestation is current:
                        self._attestation = None
                continue
            if reply.status == 401:
                raise KbsUnauthorizedError(f"KBS at {self.base_url} refused the fresh session for {path}",
                                           status=401, error_type=info.variant if info else None)
            if reply.status == 403:
                raise KbsPolicyDeniedError(f"KBS at {self.base_url} resource policy denies {path} to this TEE",
                                           hint="ask the Trustee operator to allow it in the resource policy",
                                           status=403, error_type=info.variant if info else None)
            if reply.status == 404 or (reply.status == 500 and info is not None
                                       and info.variant == "PluginInternalError"):
                raise KbsResourceNotFoundError(
                    f"resource {path} was not found at KBS {self.base_url} (or its storage backend failed)",
                    hint="check the resource exists in the Trustee repository", status=reply.status,
                    error_type=info.variant if info else None)
            raise _status_error(reply, self.base_url, f"/resource/{path}", info)
        raise AssertionError("unreachable")


def _parse_resource(text: str) -> ResourcePath:
    if text.startswith("kbs://"):
        rest = text[len("kbs://"):]
        _host, _, path = rest.partition("/")
        text = path.split("?", 1)[0]
    try:
        return ResourcePath.parse(text)
    except ValueError as exc:
        raise KbsError(str(exc)) from None


def _route(path: str) -> str:
    return path.split("/", 1)[0]


def _is_transient(reply: _Reply) -> bool:
    """5xx that may go away: not Trustee's own error bodies, which are final answers."""
    info = messages.parse_error(reply.body)
    if info is None or info.variant == "Gateway":
        return True
    return reply.status in (502, 503, 504) and info.variant not in ("AttestationError", "PluginInternalError")


def _status_error(reply: _Reply, base_url: str, route: str, info: messages.ErrorInfo | None) -> KbsError:
    detail = f": {info.variant}: {info.detail}" if info else ""
    return KbsError(f"KBS at {base_url} answered HTTP {reply.status} to {route}{detail}", status=reply.status,
                    error_type=info.variant if info else None)
