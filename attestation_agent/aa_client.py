"""Client of the attestation agent's API: the data hub and gateway get evidence through it.

It is an ``EvidenceSource``, so a ``KbsClient`` in another daemon attests with the AA's hardware
access without touching the TEE interfaces itself (CoCo's CDH does the same over ttrpc).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import aiohttp

from agents import jsonutil
from agents.http import BodyTooLarge, connection_failure, read_body_limited, unix_session
from attestation_agent.errors import AttestationError, EvidenceError, ProtocolError
from attestation_agent.kbs.encoding import b64url_encode

MAX_EVIDENCE = 8 * 1024 * 1024


class AaClient:
    """EvidenceSource over the AA Unix socket."""

    def __init__(self, socket_path: str, *, timeout: float = 60.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._tee: str | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = unix_session(self.socket_path, timeout=aiohttp.ClientTimeout(total=self.timeout))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> AaClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _get(self, path: str, params: dict[str, str] | None = None) -> bytes:
        url = "http://localhost" + path + ("?" + urlencode(params) if params else "")
        try:
            async with self._http().get(url) as resp:
                body = await read_body_limited(resp, MAX_EVIDENCE, what=f"attestation agent response to {path}")
                if resp.status != 200:
                    try:
                        message = jsonutil.loads(body).get("error", "")
                    except (ValueError, AttributeError):
                        message = ""
                    raise EvidenceError(f"attestation agent answered {resp.status} to {path}: {message}"[:500])
                return body
        except BodyTooLarge as exc:
            raise ProtocolError(str(exc)) from None
        except TimeoutError:
            raise EvidenceError(f"the attestation agent at {self.socket_path} did not answer {path} within "
                                f"{self.timeout:g} s", hint="check `cai aa` is not hung (its log, /readyz)") from None
        except (aiohttp.ClientError, OSError) as exc:
            # "connection refused": a stale socket of a crashed AA; "no such file": never started
            raise EvidenceError(f"cannot reach the attestation agent at {self.socket_path}: "
                                f"{connection_failure(exc)}",
                                hint="is `cai aa` running? check its socket path") from None

    async def tee_type(self) -> str:
        if self._tee is None:
            try:
                info = jsonutil.loads(await self._get("/aa/tee"))
                self._tee = str(info["tee"])
            except (ValueError, KeyError, TypeError):
                raise ProtocolError("attestation agent /aa/tee answer is malformed") from None
        return self._tee

    async def primary_evidence(self, report_data: bytes, *, embed_devices: bool) -> dict[str, Any]:
        params = {"runtime_data": b64url_encode(report_data), "encoding": "base64"}
        if embed_devices:
            params["embed_devices"] = "true"
        return _json_object(await self._get("/aa/evidence", params), "evidence")

    async def additional_evidence(self, report_data: bytes) -> dict[str, Any]:
        body = await self._get("/aa/additional-evidence",
                               {"runtime_data": b64url_encode(report_data), "encoding": "base64"})
        return _json_object(body, "additional evidence") if body else {}

    async def token(self, token_type: str = "kbs") -> dict[str, Any]:  # noqa: S107 - a type name
        return _json_object(await self._get("/aa/token", {"token_type": token_type}), "token")


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        obj = jsonutil.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError(f"attestation agent {what} is not JSON") from None
    if not isinstance(obj, dict):
        raise AttestationError(f"attestation agent {what} is not a JSON object")
    return obj
