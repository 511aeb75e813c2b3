"""Where the egress gets its evidence: our attestation agent (Unix socket) or a CoCo ASR REST URL.

Both answer "evidence for these 48 report-data bytes" with the AA's evidence JSON; the egress puts
those bytes unchanged into the certificate (``aa_evidence``), so the verifier's AS sees exactly
what the TEE produced.
"""

from __future__ import annotations

import json
from typing import Protocol
from urllib.parse import urlencode

import aiohttp

from agents import jsonutil
from agents.http import BodyTooLarge, read_body_limited
from attestation_agent.aa_client import AaClient
from attestation_agent.errors import AttestationError
from attestation_agent.kbs.encoding import b64url_encode
from gateway.config import Attest
from gateway.errors import EvidenceUnavailable

MAX_EVIDENCE = 8 * 1024 * 1024


class EvidenceProvider(Protocol):
    async def tee_type(self) -> str: ...

    async def evidence(self, report_data: bytes) -> bytes: ...

    async def close(self) -> None: ...


class AaEvidenceProvider:
    """Evidence from our AA over its Unix socket (``attest.aa_addr = unix:///...``)."""

    def __init__(self, socket_path: str) -> None:
        self._client = AaClient(socket_path)
        self.where = socket_path

    async def tee_type(self) -> str:
        try:
            return await self._client.tee_type()
        except AttestationError as exc:
            raise _unavailable(exc, self.where) from None

    async def evidence(self, report_data: bytes) -> bytes:
        try:
            obj = await self._client.primary_evidence(report_data, embed_devices=False)
        except AttestationError as exc:
            raise _unavailable(exc, self.where) from None
        return json.dumps(obj, separators=(",", ":")).encode("utf-8")

    async def close(self) -> None:
        await self._client.close()


def _unavailable(exc: AttestationError, where: str) -> EvidenceUnavailable:
    """The AA client's error as the gateway's; its text already names the socket when it could not connect."""
    message = exc.message if where in exc.message else f"attestation agent at {where}: {exc.message}"
    return EvidenceUnavailable(message, hint=exc.hint)


class AsrEvidenceProvider:
    """Evidence from a CoCo api-server-rest endpoint (``aa_provider: coco_asr``, ``asr_addr``)."""

    def __init__(self, base_url: str, *, timeout: float = 60.0) -> None:
        self.base = base_url.rstrip("/")
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout))

    async def _get(self, path: str) -> bytes:
        try:
            async with self._session.get(self.base + path) as resp:
                body = await read_body_limited(resp, MAX_EVIDENCE, what=f"ASR answer to {path}")
                if resp.status != 200:
                    raise EvidenceUnavailable(f"ASR {self.base} answered {resp.status} to {path.split('?')[0]}")
                return body
        except BodyTooLarge as exc:
            raise EvidenceUnavailable(str(exc)) from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise EvidenceUnavailable(f"cannot reach the ASR endpoint {self.base}: {type(exc).__name__}",
                                      hint="is the attestation agent's REST listener running?") from None

    async def tee_type(self) -> str:
        try:
            tee = jsonutil.loads(await self._get("/info"))["tee"]
        except (ValueError, KeyError, TypeError):
            raise EvidenceUnavailable(f"ASR {self.base}/info did not answer {{\"tee\": ...}}") from None
        return str(tee)

    async def evidence(self, report_data: bytes) -> bytes:
        query = urlencode({"runtime_data": b64url_encode(report_data), "encoding": "base64"})
        return await self._get("/aa/evidence?" + query)

    async def close(self) -> None:
        await self._session.close()


def provider_for(attest: Attest) -> EvidenceProvider:
    if attest.aa_provider == "coco_asr" and attest.asr_addr:
        return AsrEvidenceProvider(attest.asr_addr)
    assert attest.aa_addr is not None
    return AaEvidenceProvider(attest.aa_addr.removeprefix("unix://"))
