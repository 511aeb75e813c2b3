"""Verifies a rats-tls peer through the Trustee attestation service, with a verdict cache.

The ingress calls this after the TLS handshake and before it forwards any byte (TNG's "lazy"
verifier order). Steps: parse the certificate and check its self-signature and local key binding;
send the evidence to ``POST {as_addr}/attestation`` (1.6 shape, flat fallback); verify the token
(signature, chain to the trust anchors, exp/nbf, policy ids, runtime data ⊇ the key-binding
claims). A successful verdict is cached per certificate until the token expires, so the AS is
asked once per egress certificate (the egress reuses it for ``refresh_interval``), not per
connection. Failures are never cached: a fixed egress is accepted on the next try.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509

from agents.http import BodyTooLarge, read_body_limited
from agents.logsetup import get_logger
from gateway import ratls_format_a
from gateway.as_protocol import FLAT_SHAPE, NEW_SHAPE, attestation_request, error_text, wants_flat_shape
from gateway.config import Verify
from gateway.errors import AttestationServiceError, GatewayConfigError, VerificationFailed
from gateway.ratls_cert import EvidenceRecord, check_binding, parse_certificate
from gateway.token_verify import TokenVerdict, load_anchors, verify_token

log = get_logger("gateway.verifier")

MAX_TOKEN_BODY = 512 * 1024
MAX_CACHE = 1024


class AsClient:
    """The REST calls to a Trustee attestation service."""

    def __init__(self, verify: Verify, *, timeout: float = 30.0) -> None:
        self.base = verify.as_addr
        self.headers = dict(verify.as_headers)
        self._session: aiohttp.ClientSession | None = None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._shape = NEW_SHAPE

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self.headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        try:
            async with self._http().request(method, self.base + path, json=body) as resp:
                return resp.status, await read_body_limited(resp, MAX_TOKEN_BODY, what=f"AS answer to {path}")
        except BodyTooLarge as exc:
            raise AttestationServiceError(str(exc)) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise AttestationServiceError(f"cannot reach the attestation service at {self.base}: "
                                          f"{type(exc).__name__}", hint="check verify.as_addr") from None

    async def attest(self, record: EvidenceRecord, policy_ids: tuple[str, ...]) -> str:
        """Send the evidence; return the token text. Falls back to the <= 1.5.2 flat shape once."""
        for _ in range(2):
            status, body = await self._request("POST", "/attestation",
                                               attestation_request(record, policy_ids, self._shape))
            if status == 200:
                return body.decode("utf-8", "replace").strip().strip('"')
            text = error_text(body)
            if self._shape == NEW_SHAPE and wants_flat_shape(status, text):
                self._shape = FLAT_SHAPE
                continue
            raise VerificationFailed(f"attestation service refused the peer's evidence ({status}): {text}")
        raise VerificationFailed("attestation service accepted neither request shape")

    async def certificate_pem(self) -> bytes:
        status, body = await self._request("GET", "/certificate")
        if status != 200:
            raise AttestationServiceError(f"attestation service {self.base}/certificate answered {status}")
        return body


class PeerVerifier:
    """Background-check verification of rats-tls peers against one ``verify`` block."""

    def __init__(self, verify: Verify, *, clock: Callable[[], float] = time.time, leeway: float = 0.0,
                 binding: str = "B") -> None:
        if binding not in ("A", "B"):
            raise ValueError(f"unknown rats-tls binding format {binding!r}")
        self.binding = binding  # "A": TNG <= 2.2.4 peers ("compat": "2.2.4"), "B": TNG >= 2.2.5
        self.verify = verify
        self.clock = clock
        self.leeway = leeway
        self.as_client = AsClient(verify)
        self._anchors: list[x509.Certificate] | None = None
        self._cache: dict[bytes, TokenVerdict] = {}
        self._locks: dict[bytes, asyncio.Lock] = {}
        self.as_calls = 0
        if verify.trusted_certs_paths is not None:
            anchors: list[x509.Certificate] = []
            for path in verify.trusted_certs_paths:
                try:
                    anchors.extend(load_anchors(Path(path).read_bytes()))
                except OSError as exc:
                    raise GatewayConfigError(f"verify.trusted_certs_paths: cannot read {path}: {exc.strerror}"
                                             ) from None
                except VerificationFailed:
                    raise GatewayConfigError(f"verify.trusted_certs_paths: {path} holds no PEM certificate"
                                             ) from None
            self._anchors = anchors

    async def close(self) -> None:
        await self.as_client.close()

    async def anchors(self) -> list[x509.Certificate]:
        if self._anchors is None:
            # TNG >= 2.7: no trusted_certs_paths => trust what the AS serves at /certificate.
            self._anchors = load_anchors(await self.as_client.certificate_pem())
        return self._anchors

    async def verify_certificate(self, der: bytes) -> TokenVerdict:
        """Verify the peer certificate ``der``; raise VerificationFailed/CertFormatError with the reason."""
        fingerprint = hashlib.sha256(der).digest()
        cached = self._cache.get(fingerprint)
        if cached is not None and self.clock() < cached.exp:
            return cached
        lock = self._locks.setdefault(fingerprint, asyncio.Lock())
        async with lock:
            cached = self._cache.get(fingerprint)
            if cached is not None and self.clock() < cached.exp:
                return cached
            cert = parse_certificate(der)
            expected = ratls_format_a.check_binding(cert) if self.binding == "A" else check_binding(cert)
            self.as_calls += 1
            token = await self.as_client.attest(cert.record, self.verify.policy_ids)
            verdict = verify_token(token, anchors=await self.anchors(), policy_ids=self.verify.policy_ids,
                                   expected_runtime_data=_binding_only(expected), now=self.clock(),
                                   leeway=self.leeway)
            if self.binding == "A" and dict(verdict.runtime_data) != expected:
                # TNG 2.2.4 compares the serialised runtime data: extra claims are a mismatch too
                raise VerificationFailed("attestation token runtime data is not exactly the format-A binding "
                                         "{\"rats-rs.raw_runtime_data\": ...} of the peer's claims buffer")
            if len(self._cache) >= MAX_CACHE:
                self._cache.clear()
            self._cache[fingerprint] = verdict
            self._locks.pop(fingerprint, None)
            log.info("gateway.peer.verified", tee=verdict.tee, policy_ids=list(verdict.policy_ids),
                     expires_in=int(verdict.exp - self.clock()))
            return verdict


def _binding_only(claims: dict[str, Any]) -> dict[str, Any]:
    """The claims that must reappear in the token: the key binding (all of the runtime data)."""
    return json.loads(json.dumps(claims))
